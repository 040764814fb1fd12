# SPDX-License-Identifier: Apache-2.0
"""The XDP relay between namespaces: client <-> relay (public/private) <-> transceiver.

Every packet of the relayed path is forwarded by XDP; these tests check that
from both ends (what the sockets see) and from the relay (its counters, and
the kernel stack's own counters, which must not move).
"""

from __future__ import annotations

import base64
import errno
import time
from typing import Any

import pytest

from lab.netns import ensure_route
from orchestrator import hostnet, netlink
from voxrelay import token

DATAGRAMS = 1000


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def _echo_count(loaded_relay: Any) -> int:
    return len(loaded_relay.echo.received)


def _settle(loaded_relay: Any, seconds: float = 0.3) -> None:
    """Give stray packets time to arrive before asserting that none did (bounded)."""
    time.sleep(seconds)


def test_call_is_relayed_by_xdp_only(loaded_relay: Any) -> None:
    lab = loaded_relay.lab
    vip = lab.relay.vip
    stats_before = loaded_relay.stats()
    snmp_before = lab.snmp(lab.relay.netns)
    echoed_before = _echo_count(loaded_relay)

    client = loaded_relay.client_socket()
    client.bind((lab.relay.client_side.address, 0))
    client_port = client.getsockname()[1]
    try:
        request = loaded_relay.stun(loaded_relay.mint())
        client.sendto(request, vip)
        reply, source = client.recvfrom(4096)
        assert reply == request
        assert source == vip
        # The transceiver saw the relay's private address, never the client's.
        data, seen_from = loaded_relay.echo.received[echoed_before]
        assert data == request
        assert seen_from[0] == lab.relay.private.address
        relay_port = seen_from[1]

        for i in range(DATAGRAMS):
            payload = i.to_bytes(4, "big") + b"voice" * 20
            client.sendto(payload, vip)
            reply, source = client.recvfrom(4096)
            assert (reply, source) == (payload, vip), f"datagram {i}"
    finally:
        client.close()

    received = loaded_relay.echo.received[echoed_before:]
    assert len(received) == DATAGRAMS + 1
    assert {peer for _, peer in received} == {(lab.relay.private.address, relay_port)}

    stats = _delta(loaded_relay.stats(), stats_before)
    assert stats.get("STAT_FWD_NEW_FLOW") == 1
    assert stats.get("STAT_FWD_TO_TRANSCEIVER") == DATAGRAMS
    assert stats.get("STAT_FWD_TO_CLIENT") == DATAGRAMS + 1
    assert not {k for k in stats if k.startswith("STAT_DROP")}, stats
    assert "STAT_PASS_NO_NEIGH" not in stats

    # The relay's own stack saw none of it: no UDP delivered, nothing routed,
    # and (IPv4) nothing received beyond what XDP passed up for other reasons.
    snmp = lab.snmp(lab.relay.netns)
    assert snmp["Udp"]["InDatagrams"] == snmp_before["Udp"]["InDatagrams"]
    assert snmp["Ip"]["ForwDatagrams"] == snmp_before["Ip"]["ForwDatagrams"]
    passed = sum(v for k, v in stats.items() if k.startswith("STAT_PASS"))
    assert snmp["Ip"]["InReceives"] - snmp_before["Ip"]["InReceives"] <= passed

    flow = loaded_relay.maps.flow(lab.relay.client_side.address,  # type: ignore[attr-defined]
                               client_port)
    assert flow is not None
    assert flow.relay_port == relay_port
    assert flow.transceiver_id == loaded_relay.TRANSCEIVER_ID
    assert flow.transceiver_port == loaded_relay.ECHO_PORT
    assert str(flow.transceiver_addr) == lab.transceiver_lan.address


def test_transceiver_is_unreachable_from_the_client(loaded_relay: Any) -> None:
    lab = loaded_relay.lab
    client = lab.socket(lab.client)
    try:
        with pytest.raises(OSError) as excinfo:
            client.sendto(b"direct", (lab.transceiver_lan.address, loaded_relay.ECHO_PORT))
        assert excinfo.value.errno == errno.ENETUNREACH
    finally:
        client.close()

    # Even a client that routes the private range through the relay gets
    # nowhere: XDP passes the packet up (not for the VIP), and the relay's
    # forward drop keeps the kernel from routing it.
    ensure_route("10.77.0.0/24", gateway=lab.relay.public.address, netns=lab.client)
    stats_before = loaded_relay.stats()
    snmp_before = lab.snmp(lab.relay.netns)
    dropped_before = hostnet.forward_drop_count(lab.relay.name, lab.relay.netns)
    echoed_before = _echo_count(loaded_relay)
    client = lab.socket(lab.client)
    try:
        for _ in range(5):
            client.sendto(b"around the relay", (lab.transceiver_lan.address, loaded_relay.ECHO_PORT))
        _settle(loaded_relay)
    finally:
        client.close()
        with netlink.iproute(lab.client) as ipr:
            ipr.route("del", dst="10.77.0.0/24")
    assert _echo_count(loaded_relay) == echoed_before
    stats = _delta(loaded_relay.stats(), stats_before)
    assert stats.get("STAT_PASS_NOT_RELAY", 0) >= 5
    assert hostnet.forward_drop_count(lab.relay.name, lab.relay.netns) - dropped_before == 5
    snmp = lab.snmp(lab.relay.netns)
    assert snmp["Ip"]["OutRequests"] == snmp_before["Ip"]["OutRequests"]


@pytest.mark.parametrize(
    ("case", "drop"),
    [
        ("forged", "STAT_DROP_TOKEN_BAD_MAC"),
        ("altered", "STAT_DROP_TOKEN_BAD_MAC"),
        ("expired", "STAT_DROP_TOKEN_EXPIRED"),
        ("unknown_key", "STAT_DROP_TOKEN_UNKNOWN_KEY"),
        ("unknown_transceiver", "STAT_DROP_TRANSCEIVER_UNKNOWN"),
    ],
)
def test_bad_tokens_never_reach_the_transceiver(loaded_relay: Any, case: str, drop: str) -> None:
    if case == "forged":
        ufrag = token.mint(token.new_key(), key_id=1, transceiver_id=loaded_relay.TRANSCEIVER_ID,
                           port=loaded_relay.ECHO_PORT)
    elif case == "altered":
        raw = bytearray(base64.b64decode(loaded_relay.mint()))
        raw[7] ^= 0x01  # the port's low byte; the MAC no longer covers the body
        ufrag = base64.b64encode(bytes(raw)).decode()
    elif case == "expired":
        ufrag = loaded_relay.mint(now=time.time() - 7200, ttl=60)
    elif case == "unknown_key":
        ufrag = loaded_relay.mint(key_id=9)
    else:
        ufrag = loaded_relay.mint(transceiver_id=loaded_relay.TRANSCEIVER_ID + 1000)

    lab = loaded_relay.lab
    stats_before = loaded_relay.stats()
    echoed_before = _echo_count(loaded_relay)
    attempts = 3
    client = loaded_relay.client_socket()
    try:
        for _ in range(attempts):
            client.sendto(loaded_relay.stun(ufrag), lab.relay.vip)
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recvfrom(4096)
        _settle(loaded_relay)
    finally:
        client.close()
    assert _echo_count(loaded_relay) == echoed_before, "a bad token reached the transceiver"
    stats = _delta(loaded_relay.stats(), stats_before)
    assert stats.get(drop) == attempts, stats
    assert "STAT_FWD_NEW_FLOW" not in stats

    # The path itself is alive: a good token from the same place goes through.
    client = loaded_relay.client_socket()
    try:
        request = loaded_relay.stun(loaded_relay.mint())
        client.sendto(request, lab.relay.vip)
        assert client.recvfrom(4096) == (request, lab.relay.vip)
    finally:
        client.close()


def test_unknown_client_on_private_side_is_dropped(loaded_relay: Any) -> None:
    """A transceiver packet to an unallocated relay port goes nowhere (counted)."""
    lab = loaded_relay.lab
    stats_before = loaded_relay.stats()
    sock = lab.socket(lab.transceiver)
    try:
        sock.bind((lab.transceiver_lan.address, 0))
        sock.sendto(b"to nobody", (lab.relay.private.address, lab.relay.relay_config().port_max))
        _settle(loaded_relay)
    finally:
        sock.close()
    stats = _delta(loaded_relay.stats(), stats_before)
    assert stats.get("STAT_DROP_NO_REVERSE") == 1, stats


def test_non_stun_first_packet_is_dropped(loaded_relay: Any) -> None:
    """An unknown client's first packet must be a STUN Binding Request; anything else is dropped."""
    lab = loaded_relay.lab
    stats_before = loaded_relay.stats()
    echoed_before = _echo_count(loaded_relay)
    client = lab.socket(lab.client)
    try:
        client.sendto(b"\x80\x00" + b"rtp-looking payload" * 3, lab.relay.vip)
        _settle(loaded_relay)
    finally:
        client.close()
    assert _echo_count(loaded_relay) == echoed_before
    stats = _delta(loaded_relay.stats(), stats_before)
    assert stats.get("STAT_DROP_NOT_STUN") == 1, stats
