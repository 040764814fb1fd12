# SPDX-License-Identifier: Apache-2.0
"""hostnet.set_sysctl: no write when the value is already there; a read-only
/proc/sys (a container's) is one clear error naming the command to run on the host."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from orchestrator import hostnet
from orchestrator.errors import LoaderError


@pytest.fixture
def sysctl_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "forwarding"
    monkeypatch.setattr(hostnet, "_sysctl_file", lambda key: path)
    return path


def _read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Path, *args: object, **kwargs: object) -> int:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_text", refuse)


def test_a_sysctl_is_written_when_it_differs(sysctl_file: Path) -> None:
    sysctl_file.write_text("0\n")
    hostnet.set_sysctl("net/ipv4/conf/pub/forwarding", 1)
    assert sysctl_file.read_text() == "1\n"


def test_a_sysctl_with_its_value_is_not_written(sysctl_file: Path, monkeypatch) -> None:
    sysctl_file.write_text("20000-59999\n")
    _read_only(monkeypatch)  # a write would fail: none happens
    hostnet.set_sysctl("net/ipv4/ip_local_reserved_ports", "20000-59999")


def test_a_read_only_proc_sys_is_one_clear_error(sysctl_file: Path, monkeypatch) -> None:
    sysctl_file.write_text("0\n")
    _read_only(monkeypatch)
    with pytest.raises(LoaderError) as caught:
        hostnet.set_sysctl("net/ipv4/conf/pub/forwarding", 1)
    assert str(caught.value) == (
        "cannot set net/ipv4/conf/pub/forwarding = 1: /proc/sys is read-only here (a container?); "
        "set it on the host first: sysctl -w 'net/ipv4/conf/pub/forwarding=1'")


def test_other_write_errors_are_not_hidden(sysctl_file: Path, monkeypatch) -> None:
    sysctl_file.write_text("0\n")

    def refuse(self: Path, *args: object, **kwargs: object) -> int:
        raise OSError(errno.EINVAL, "Invalid argument", str(self))

    monkeypatch.setattr(Path, "write_text", refuse)
    with pytest.raises(OSError, match="Invalid argument"):
        hostnet.set_sysctl("net/ipv4/conf/pub/forwarding", 7)
