# SPDX-License-Identifier: Apache-2.0
"""The userspace baseline relay keeps the XDP relay's NAT behaviour: admission
by routing token, per-client flows, replies only from the flow's transceiver.
The last test runs it for real on loopback."""

from __future__ import annotations

import asyncio
import socket

from bench.userspace_relay import NatTable, Relay
from lab.stun import binding_request
from voxrelay.token import mint, new_key

KEY = new_key()
CLIENT = ("192.0.2.10", 50000)


def table() -> NatTable:
    return NatTable(keys={1: KEY}, transceivers={7: "10.0.0.7"})


def token(port: int = 5004, key: bytes = KEY, txr: int = 7) -> str:
    return mint(key, key_id=1, transceiver_id=txr, port=port)


def test_valid_token_creates_flow_to_token_port() -> None:
    t = table()
    flow, new = t.from_client(binding_request(token(6000)), CLIENT)
    assert new and flow is not None
    assert flow.transceiver == ("10.0.0.7", 6000)
    assert t.flows[CLIENT] is flow
    # then media from the same client follows the flow, STUN or not
    again, new2 = t.from_client(b"\x80\x6f" + b"\x00" * 198, CLIENT)
    assert again is flow and not new2
    assert t.stats["fwd_new_flow"] == 1 and t.stats["fwd_to_transceiver"] == 1


def test_drops_are_counted_by_reason() -> None:
    t = table()
    assert t.from_client(b"\x80" * 40, CLIENT) == (None, False)
    assert t.from_client(binding_request(token(key=new_key())), CLIENT) == (None, False)
    assert t.from_client(binding_request(token(txr=99)), CLIENT) == (None, False)
    assert t.stats["drop_not_stun"] == 1
    assert t.stats["drop_token_bad_mac"] == 1
    assert t.stats["drop_transceiver_unknown"] == 1
    assert t.stats["rx_total"] == 3
    assert not t.flows


def test_reply_only_from_the_flows_transceiver() -> None:
    t = table()
    flow, _ = t.from_client(binding_request(token(6000)), CLIENT)
    assert flow is not None
    assert t.from_transceiver(flow, ("10.0.0.7", 6000)) is True
    assert t.from_transceiver(flow, ("10.0.0.8", 6000)) is False
    assert t.stats["drop_spoofed_source"] == 1


async def test_relays_both_ways_on_loopback() -> None:
    loop = asyncio.get_running_loop()
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.setblocking(False)
    t = NatTable(keys={1: KEY}, transceivers={7: "127.0.0.1"})
    relay = Relay(t, ("127.0.0.1", 0), "127.0.0.1")
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    try:
        public = relay.pub.getsockname()
        primer = binding_request(token(echo.getsockname()[1]))
        client.sendto(primer, public)
        data, src = await asyncio.wait_for(loop.sock_recvfrom(echo, 2048), 5)
        assert data == primer
        assert src[1] != public[1]  # comes from the flow's relay-side port
        echo.sendto(b"answer", src)
        back, frm = await asyncio.wait_for(loop.sock_recvfrom(client, 2048), 5)
        assert (back, frm) == (b"answer", public)  # from the public address only
        client.sendto(b"\x80media", public)
        data2, src2 = await asyncio.wait_for(loop.sock_recvfrom(echo, 2048), 5)
        assert (data2, src2) == (b"\x80media", src)
        assert t.stats["fwd_new_flow"] == 1 and t.stats["fwd_to_client"] == 1
    finally:
        relay.close()
        echo.close()
        client.close()
