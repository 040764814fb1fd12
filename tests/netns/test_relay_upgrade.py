# SPDX-License-Identifier: Apache-2.0
"""Adding a drop reason is an upgrade a live call survives (issue #15 item 5).

A relay carries a sequenced stream of datagrams on one flow while
``loader.replace`` (what ``relay load --replace`` runs) swaps in a program
built from a copy of bpf/ whose verdicts.h has one more drop reason. Before
the fixed ``STATS_MAP_SIZE``, the new reason changed the pinned ``stats``
map's size and the replace was refused (the only way on was unload, which
drops every call); before explicit numbers, a reason inserted mid-enum
relabelled every counter after it.
"""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, Self

import pytest

from orchestrator import abi, bpfprog, genabi, loader
from orchestrator.pinview import open_pinview
from voxrelay import token

RATE_PPS = 2000
"""Datagrams per second of the stream: a few calls' worth of 50 pps voice."""
BEFORE_S = 0.5
"""Stream time before the replace starts, and again after it is done."""
MAX_STREAM_S = 60.0
"""Hard bound on the stream: the replace compiles relay.c (3-20 s here)."""
NEW_REASON = "STAT_DROP_UPGRADE_TEST"
SO_RCVBUFFORCE = 33  # socket(7); not in Python's socket module
RCVBUF = 8 << 20
"""Room for the whole stream while the compile starves the receiving threads."""


def _copy_with_one_more_reason(tmp_path: Path) -> Path:
    """bpf/ copied, with NEW_REASON appended under the next number, as the header says to."""
    copy = tmp_path / "bpf"
    shutil.copytree(bpfprog.bpf_dir(), copy)
    header = copy / "verdicts.h"
    text = header.read_text()
    line = f"\t{NEW_REASON} = {abi.STAT_MAX},\n"
    text, count = re.subn(r"^(?=\s*STAT_MAX\b)", lambda _: line, text, count=1,
                          flags=re.MULTILINE)
    assert count == 1
    # The edit keeps the header's ABI rules (genabi would refuse it otherwise).
    values = genabi.parse_verdicts(text)
    assert values[NEW_REASON] == abi.STAT_MAX and values["STAT_MAX"] == abi.STAT_MAX + 1
    header.write_text(text)
    return copy


def _raw_stat(relay_name: str, index: int) -> int | None:
    """``stats[index]`` summed over CPUs, read from the pin (any index of the map)."""
    with open_pinview(relay_name) as view:
        return view.counter(index)


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


class Stream:
    """Sequenced datagrams from ``sock`` to ``dest`` at RATE_PPS, and their echoes."""

    def __init__(self, sock: socket.socket, dest: tuple[str, int]) -> None:
        self.sock = sock
        self.dest = dest
        self.sent = 0
        self.echoes: list[int] = []
        self.stop = threading.Event()
        self.give_up = threading.Event()
        self.sender = threading.Thread(target=self._send, name="stream-send", daemon=True)
        self.receiver = threading.Thread(target=self._receive, name="stream-recv", daemon=True)

    def __enter__(self) -> Self:
        self.receiver.start()
        self.sender.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.give_up.set()
        self.sender.join(timeout=5)
        self.receiver.join(timeout=5)

    def _send(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set() and time.monotonic() - start < MAX_STREAM_S:
            # Paced against the start, so that a thread the compile starved
            # catches up in a burst rather than lowering the count.
            due = start + self.sent / RATE_PPS
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.sock.sendto(self.sent.to_bytes(4, "big") + b"voice" * 32, self.dest)
            self.sent += 1

    def _receive(self) -> None:
        self.sock.settimeout(0.2)
        while not self.give_up.is_set():
            if self.stop.is_set() and not self.sender.is_alive() and len(self.echoes) >= self.sent:
                return
            try:
                data, source = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            if source == self.dest:
                self.echoes.append(int.from_bytes(data[:4], "big"))

    def finish(self, timeout: float = 5.0) -> None:
        """Stop sending and wait (bounded) until every datagram sent came back."""
        self.stop.set()
        self.sender.join(timeout=5)
        self.receiver.join(timeout=timeout)
        self.give_up.set()  # what has not come back by now is lost
        self.receiver.join(timeout=5)


def test_one_more_drop_reason_replaces_under_a_live_call(
    loaded_relay: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = loaded_relay.lab
    relay = lab.relay
    vip = relay.vip
    status = loader.status(relay.name)
    assert status.loaded
    maps_before = {(m.name, m.id) for m in status.maps}
    assert {name for name, _ in maps_before} == set(abi.MAP_NAMES)
    loaded_relay.echo.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)

    # A forged token before and after the replace: the new program must count
    # this reason under the same number, i.e. the same label.
    forged = loaded_relay.stun(token.mint(token.new_key(), key_id=loaded_relay.KEY_ID,
                                       transceiver_id=loaded_relay.TRANSCEIVER_ID,
                                       port=loaded_relay.ECHO_PORT))
    stranger = loaded_relay.client_socket()
    stranger.bind((relay.client_side.address, 0))

    client = loaded_relay.client_socket()
    client.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    client.bind((relay.client_side.address, 0))
    try:
        request = loaded_relay.stun(loaded_relay.mint())
        client.sendto(request, vip)
        assert client.recvfrom(4096) == (request, vip)
        echoed_before = len(loaded_relay.echo.received)
        stats_before = loaded_relay.stats()

        copy = _copy_with_one_more_reason(tmp_path)
        compiled_from: list[Path] = []
        compile_relay = bpfprog.compile_relay

        def spy(*args: Any, **kwargs: Any) -> Any:
            compiled_from.append(bpfprog.bpf_dir())
            return compile_relay(*args, **kwargs)

        with Stream(client, vip) as stream:
            stranger.sendto(forged, vip)
            time.sleep(BEFORE_S)
            sent_at_replace = stream.sent
            monkeypatch.setenv("VOXRELAY_BPF_DIR", str(copy))
            monkeypatch.setattr(bpfprog, "compile_relay", spy)
            replaced = loader.replace(relay.relay_config(), netns=relay.netns)
            monkeypatch.undo()
            sent_after_replace = stream.sent
            stranger.sendto(forged, vip)
            time.sleep(BEFORE_S)
            stream.finish()
    finally:
        client.close()
        stranger.close()

    # The replace happened, from the copy, in the middle of the stream.
    assert compiled_from == [copy]
    assert replaced.loaded and replaced.prog_id != status.prog_id
    assert {i.link_id for i in replaced.interfaces} == {i.link_id for i in status.interfaces}
    assert 0 < sent_at_replace < sent_after_replace < stream.sent, (
        sent_at_replace, sent_after_replace, stream.sent)
    # A real stream, not a trickle: the pacing catches up after a starved spell.
    assert stream.sent >= RATE_PPS * 2 * BEFORE_S / 2, stream.sent
    # Same pinned maps (by kernel id): the flows and counters were never copied.
    assert {(m.name, m.id) for m in replaced.maps} == maps_before

    # Not one datagram lost or duplicated, either way.
    sent = list(range(stream.sent))
    at_transceiver = [int.from_bytes(d[:4], "big")
                      for d, _ in loaded_relay.echo.received[echoed_before:]]
    assert sorted(at_transceiver) == sent, "lost or duplicated on the way in"
    assert sorted(stream.echoes) == sent, "lost or duplicated on the way back"

    # The counters kept their numbers, labels and totals across programs: one
    # flow all along, every datagram counted once in each direction, and the
    # forged token counted twice under its reason.
    stats = _delta(loaded_relay.stats(), stats_before)
    assert stats.get("STAT_FWD_TO_TRANSCEIVER") == stream.sent
    assert stats.get("STAT_FWD_TO_CLIENT") == stream.sent
    assert stats.get("STAT_DROP_TOKEN_BAD_MAC") == 2
    assert "STAT_FWD_NEW_FLOW" not in stats
    assert {k for k in stats if k.startswith("STAT_DROP")} == {"STAT_DROP_TOKEN_BAD_MAC"}, stats
    assert stats["STAT_RX_TOTAL"] == sum(v for k, v in stats.items() if k != "STAT_RX_TOTAL")
    # The new reason has its slot in the same map, unused and zero.
    assert abi.STAT_MAX < abi.STATS_MAP_SIZE
    assert _raw_stat(relay.name, abi.STAT_MAX) == 0
