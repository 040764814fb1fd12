# SPDX-License-Identifier: Apache-2.0
"""The probe's STUN exchange, on loopback (no relay: the responder answers directly)."""

from __future__ import annotations

import socket

import pytest
from aioice import stun

from orchestrator import probe as pr
from voxrelay import addr
from voxrelay import probe as wire
from voxrelay import token as tk

KEY = bytes(range(16))


def test_answer_echoes_transaction_and_sender():
    request = wire.build_request("T" * 32)
    answer = stun.parse_message(wire.build_answer(bytes(request), ("10.0.2.1", 20001)))
    assert answer.transaction_id == request.transaction_id
    assert answer.message_class == stun.Class.RESPONSE
    assert answer.attributes["XOR-MAPPED-ADDRESS"] == ("10.0.2.1", 20001)


@pytest.mark.parametrize("data", [b"", b"\x00" * 19, b"hello world, not stun at all"])
def test_responder_ignores_non_stun(data):
    assert wire.build_answer(data, ("10.0.0.1", 1)) is None


def test_responder_ignores_responses():
    msg = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE)
    assert wire.build_answer(bytes(msg), ("10.0.0.1", 1)) is None


async def test_probe_round_trip_and_timeout():
    transport, responder = await wire.ProbeResponder.serve("127.0.0.1", 0)
    port = transport.get_extra_info("sockname")[1]
    ufrag = wire.mint_probe_token({3: KEY}, 3, 42, port)
    assert tk.verify(ufrag, {3: KEY}).port == port
    try:
        result = await pr.probe_async(("127.0.0.1", port), ufrag, timeout=1.0)
        assert result.ok and result.transceiver_id == 42 and responder.answered == 1
        assert result.mapped_address.startswith("127.0.0.1:")
    finally:
        transport.close()
    # A bound but silent socket: the probe times out with the reason.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        result = await pr.probe_async(silent.getsockname(), ufrag, timeout=0.1, attempts=2)
    assert not result.ok
    assert result.reason.startswith("no answer from transceiver 42 through 127.0.0.1:")
    assert "2 x 0.1 s" in result.reason


async def test_probe_refused_port_says_so():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await pr.probe_async(("127.0.0.1", port), "A" * 32, timeout=0.5, transceiver_id=1)
    assert not result.ok and "refused the probe" in result.reason


def test_malformed_token_is_reported():
    result = pr.probe(("127.0.0.1", 9), "short", timeout=0.1)
    assert not result.ok
    assert result.reason == "the probe token is malformed: token must be 32 characters, got 5"


@pytest.mark.parametrize("value, expected", [("1.2.3.4:99", ("1.2.3.4", 99)), ("1.2.3.4", ("1.2.3.4", 3478)),
                                             ("[fd00::1]:5", ("fd00::1", 5))])
def test_parse_hostport(value, expected):
    assert addr.parse_hostport(value, 3478, what="relay") == expected


def test_parse_hostport_rejects():
    with pytest.raises(ValueError, match=r"^relay port '0' is not in 1\.\.65535$"):
        addr.parse_hostport("x:0", 1, what="relay")


def test_an_expired_token_is_named_before_anything_is_sent(monkeypatch):
    sent = []
    monkeypatch.setattr(socket.socket, "send", lambda self, data: sent.append(data))
    ufrag = tk.mint(tk.new_key(), key_id=1, transceiver_id=7, port=7000, ttl=5, now=1000)
    result = pr.probe(("127.0.0.1", 9), ufrag, timeout=0.1, attempts=1)
    assert not result.ok and result.transceiver_id == 7
    assert result.reason.startswith("the probe token expired ")
    assert "voxrelay token mint --probe --transceiver 7" in result.reason
    assert sent == []

