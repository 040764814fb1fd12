# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the whole-chain tier: labs of namespaces, a loaded relay, leak checks.

These tests need root and BPF; CI runs them as root. Nothing here skips.

Leak check: every test module snapshots the network namespaces and the
/sys/fs/bpf tree before it starts and fails if either has grown when it
ends. On a shared development machine where other work creates namespaces
or pins at the same time, set VOXRELAY_LEAK_SCOPE=lab to look only at the
names labs use (vx[crstm]-*, /sys/fs/bpf/voxrelay/lab-*); CI leaves it unset.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab import stun
from lab.netns import list_netns
from lab.topology import Lab
from orchestrator import loader
from tests.netns.udp import UdpResponder
from voxrelay import token

BPF_FS = Path("/sys/fs/bpf")
LAB_NETNS = re.compile(r"^vx[crstm]-[0-9a-f]{6}$")
LAB_PIN = re.compile(r"^voxrelay(/lab-[0-9a-f]{6}-\d.*)?$")
TRANSCEIVER_ID = 7
KEY_ID = 1
ECHO_PORT = 40000


def _bpf_tree() -> set[str]:
    found = set()
    for root, dirs, files in os.walk(BPF_FS):
        for name in dirs + files:
            found.add(str(Path(root, name).relative_to(BPF_FS)))
    return found


def _snapshot() -> tuple[set[str], set[str]]:
    netns, pins = set(list_netns()), _bpf_tree()
    if os.environ.get("VOXRELAY_LEAK_SCOPE") == "lab":
        netns = {n for n in netns if LAB_NETNS.match(n)}
        pins = {p for p in pins if LAB_PIN.match(p)}
    return netns, pins


@pytest.fixture(autouse=True, scope="module")
def no_leaks() -> Iterator[None]:
    """Fail the module if it leaves a namespace or a bpffs entry behind."""
    if os.geteuid() != 0:
        pytest.fail("tests/netns needs root (CI runs it as root)")
    netns_before, pins_before = _snapshot()
    yield
    netns_after, pins_after = _snapshot()
    leaked = sorted(netns_after - netns_before) + sorted(
        f"/sys/fs/bpf/{p}" for p in pins_after - pins_before
    )
    assert not leaked, f"left behind: {leaked}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """A failing test that used a running lab gets the tails of the lab's service
    logs in its report: CI keeps only the report, and a lab's workdir is gone by then."""
    report = yield
    if report.failed and call.when == "call":
        for name, value in getattr(item, "funcargs", {}).items():
            logs = getattr(value, "logs", None)
            if callable(logs):
                try:
                    report.sections.append((f"service logs of fixture {name!r}", logs(80)))
                except Exception as exc:  # noqa: BLE001 - the report must not fail too
                    report.sections.append((f"service logs of fixture {name!r}", repr(exc)))
    return report


@dataclass
class LoadedRelay:
    """A ``lab.topology.Lab`` with the relay loaded, a key and a transceiver in its maps,
    and an echo server on the transceiver (the ``loaded_relay`` fixture)."""

    lab: Lab
    maps: Any
    key: bytes
    echo: UdpResponder

    TRANSCEIVER_ID = TRANSCEIVER_ID
    KEY_ID = KEY_ID
    ECHO_PORT = ECHO_PORT

    @staticmethod
    def stun(ufrag: str, remote: str = "cli1") -> bytes:
        return stun.binding_request(ufrag, remote)

    def mint(self, **kwargs: object) -> str:
        args: dict[str, object] = {"key_id": KEY_ID, "transceiver_id": TRANSCEIVER_ID,
                                   "port": ECHO_PORT}
        args.update(kwargs)
        return token.mint(self.key, **args)  # type: ignore[arg-type]

    def client_socket(self) -> socket.socket:
        sock = self.lab.socket(self.lab.client)
        sock.settimeout(2.0)
        return sock

    def stats(self) -> dict[str, int]:
        return dict(self.maps.stats())


@pytest.fixture(scope="module")
def loaded_relay() -> Iterator[LoadedRelay]:
    with Lab() as lab:
        lab.load_relay()
        maps = loader.open_maps(lab.relay.name)
        key = token.new_key()
        maps.set_key(KEY_ID, key)
        maps.set_transceiver(TRANSCEIVER_ID, lab.transceiver_lan.address)
        sock = lab.socket(lab.transceiver)
        sock.bind((lab.transceiver_lan.address, ECHO_PORT))
        echo = UdpResponder(sock)
        try:
            yield LoadedRelay(lab, maps, key, echo)
        finally:
            echo.close()
            del maps  # closes bcc's fds before the lab unpins the maps


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab
