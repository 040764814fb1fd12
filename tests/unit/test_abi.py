"""orchestrator/abi.py is what genabi makes of bpf/ now; VOXRELAY_BPF_DIR picks other C."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator import bpfprog, genabi


@pytest.mark.root
def test_committed_abi_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    # A C change without `python -m orchestrator.genabi` fails here, with the diff.
    # Needs bcc and root: genabi compiles relay.c once and asks the kernel.
    status = genabi.main(["--check"])
    out, err = capsys.readouterr()
    assert status == 0, out + err


def test_bpf_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "bpf"
    shutil.copytree(bpfprog.bpf_dir(), copy)
    monkeypatch.setenv("VOXRELAY_BPF_DIR", str(copy))
    assert bpfprog.bpf_dir() == copy
    # A directory without relay.c is an error, never a silent fallback to bpf/.
    monkeypatch.setenv("VOXRELAY_BPF_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="holds no relay.c"):
        bpfprog.bpf_dir()
