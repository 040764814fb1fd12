# SPDX-License-Identifier: Apache-2.0
"""100,000 live flows on one relay with several private addresses (issue #16).

The relay is loaded with ``extra_private_addresses`` (assigned to its private
interface, as the loader demands). Every flow is opened by the XDP program
itself: a Binding Request with a valid token from its own client port, sent
as raw frames from the client namespace (100,000 sockets would be the same
packets at far more cost). Then every flow carries one media packet, which
must be forwarded as a known flow, and a few flows opened from real sockets
carry a round trip to an echo server on the transceiver, whose sources show
the relay's addresses in use.

Bounded: frames are sent paced, in at most SEND_ROUNDS rounds (a round
resends only the flows still missing: a veth backlog may drop a burst), and
every wait has a deadline.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lab import stun
from lab.netns import ensure_address, ensure_neighbour
from lab.topology import LAN_BRIDGE, LAN_PREFIX, Lab
from orchestrator.bccmaps import RelayMaps
from orchestrator.pintables import open_pinned_tables
from orchestrator.pinview import open_pinview
from tests.netns.udp import UdpResponder
from voxrelay import token

FLOWS = 100_000
EXTRA = [f"10.77.0.{100 + i}" for i in range(15)]
"""15 more private addresses: 16 x 40,000 ports, so that 100k flows fill 16%
of the (address, port) space and the 8 hashed probes practically never run
out (0.16^8 per flow at the end)."""
CLIENT2 = "192.0.2.3"
"""A second client address (one address has fewer than 100k ports)."""
PORTS = range(10_000, 60_000)
KEY_ID, TXR_ID, ECHO_PORT, SINK_PORT = 1, 7, 40000, 40009
SEND_ROUNDS = 3
BATCH, BATCH_PAUSE_S = 500, 0.004
"""Frames per burst and the pause after it: ~100k frames/s, below what the
veth backlog (netdev_max_backlog) and the program take."""
REAL_SOCKETS = 64
REAL_PORTS = 60_000
"""The real sockets' first port: above PORTS, so that no raw frame shares their flow."""


def _frame(template: bytearray, src: str, sport: int) -> bytes:
    """``template`` (Ether/IP/UDP, UDP checksum 0) from ``src``:``sport``, IP checksum redone."""
    frame = template
    frame[26:30] = socket.inet_aton(src)
    frame[34:36] = struct.pack(">H", sport)
    frame[24:26] = b"\0\0"
    words = struct.unpack(">10H", frame[14:34])
    total = sum(words)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    frame[24:26] = struct.pack(">H", ~total & 0xFFFF)
    return bytes(frame)


def _template(lab: Lab, payload: bytes) -> bytearray:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    relay = lab.relay
    pkt = (Ether(src=relay.client_side.mac, dst=relay.public.mac)
           / IP(src=relay.client_side.address, dst=relay.public.address, ttl=64)
           / UDP(sport=1, dport=relay.vip[1], chksum=0) / payload)
    return bytearray(bytes(pkt))


def _clients() -> list[tuple[str, int]]:
    out = []
    for addr in ("192.0.2.2", CLIENT2):
        out += [(addr, p) for p in PORTS]
    return out[:FLOWS]


@pytest.fixture(scope="module")
def relay_at_scale() -> Iterator[dict[str, Any]]:
    with Lab() as lab:
        relay = lab.relay
        for addr in EXTRA:
            ensure_address("priv", f"{addr}/{LAN_PREFIX}", relay.netns)
            ensure_neighbour(LAN_BRIDGE, addr, relay.private.mac, netns=lab.transceiver)
        ensure_address(relay.client_side.ifname, f"{CLIENT2}/24", lab.client)
        ensure_neighbour("pub", CLIENT2, relay.client_side.mac, netns=relay.netns)
        lab.load_relay(extra_private_addresses=EXTRA, new_flows_per_sec=0,
                       max_flows_per_token=0)
        tables = open_pinned_tables(relay.name)  # no compile: raw bpf(2) on the pins
        maps = RelayMaps(tables)
        key = token.new_key()
        maps.set_key(KEY_ID, key)
        maps.set_transceiver(TXR_ID, lab.transceiver_lan.address)
        sock = lab.socket(lab.transceiver)
        sock.bind((lab.transceiver_lan.address, ECHO_PORT))
        echo = UdpResponder(sock)
        try:
            yield {"lab": lab, "maps": maps, "key": key, "echo": echo}
        finally:
            echo.close()
            tables.close()


def _send_frames(lab: Lab, frames: list[bytes]) -> None:
    def send() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
            raw.bind((lab.relay.client_side.ifname, 0))
            for i in range(0, len(frames), BATCH):
                for frame in frames[i:i + BATCH]:
                    raw.send(frame)
                time.sleep(BATCH_PAUSE_S)

    lab.run(lab.client, send)


def test_100k_live_flows_on_several_private_addresses(relay_at_scale: dict[str, Any]) -> None:
    lab, maps, key = relay_at_scale["lab"], relay_at_scale["maps"], relay_at_scale["key"]
    relay = lab.relay
    assert [str(a) for a in maps.private_addrs()] == [relay.private.address, *EXTRA]
    before = maps_stats(relay.name)

    # Real sockets first: their flows answer through the echo server.
    real = []
    for n in range(REAL_SOCKETS):
        s = lab.socket(lab.client)
        s.settimeout(2.0)
        s.bind((relay.client_side.address, REAL_PORTS + n))  # not among the raw frames' ports
        real.append(s)
    try:
        hello_token = token.mint(key, key_id=KEY_ID, transceiver_id=TXR_ID, port=ECHO_PORT)
        for s in real:
            s.sendto(stun.binding_request(hello_token), relay.vip)
            assert s.recvfrom(4096)[1] == relay.vip

        # The rest from raw frames: a token for a port nobody listens on (the
        # transceiver's kernel answers ICMP, which the relay passes).
        sink_token = token.mint(key, key_id=KEY_ID, transceiver_id=TXR_ID, port=SINK_PORT)
        hello = _template(lab, stun.binding_request(sink_token))
        clients = _clients()
        missing = clients
        for _ in range(SEND_ROUNDS):
            _send_frames(lab, [_frame(hello, a, p) for a, p in missing])
            with open_pinview(relay.name) as view:
                have = {f.client for f in view.flows()}
            missing = [(a, p) for a, p in missing if f"{a}:{p}" not in have]
            if not missing:
                break
        assert not missing, f"{len(missing)} of {FLOWS} flows never opened"

        with open_pinview(relay.name) as view:
            flows = view.flows()
        assert len(flows) == FLOWS + REAL_SOCKETS
        # Spread over every address by the program's allocator, each pair once.
        by_addr: dict[str, int] = {}
        for f in flows:
            by_addr[f.relay_addr] = by_addr.get(f.relay_addr, 0) + 1
        assert set(by_addr) == {relay.private.address, *EXTRA}
        assert min(by_addr.values()) > FLOWS / 16 / 2, by_addr
        assert len({(f.relay_addr, f.relay_port) for f in flows}) == len(flows)
        opened = delta(maps_stats(relay.name), before)
        assert opened.get("fwd_new_flow", 0) >= FLOWS + REAL_SOCKETS
        assert "drop_port_exhausted" not in opened, opened

        # Every one of them is live: one media packet each is a known flow.
        media = _template(lab, bytes.fromhex("8078") + bytes(158))
        mid = maps_stats(relay.name)
        _send_frames(lab, [_frame(media, a, p) for a, p in clients])
        deadline = time.monotonic() + 10
        while delta(maps_stats(relay.name), mid).get("fwd_to_transceiver", 0) < FLOWS:
            assert time.monotonic() < deadline, delta(maps_stats(relay.name), mid)
            time.sleep(0.1)
        moved = delta(maps_stats(relay.name), mid)
        assert "fwd_new_flow" not in moved, moved

        # Round trips on the real sockets' flows, back from the right address:port.
        seen_sources = set()
        for n, s in enumerate(real):
            payload = n.to_bytes(4, "big") + b"voice" * 20
            s.sendto(payload, relay.vip)
            assert s.recvfrom(4096) == (payload, relay.vip)
        for data, source in relay_at_scale["echo"].received:
            seen_sources.add(source[0])
        assert seen_sources <= {relay.private.address, *EXTRA}
        assert len(seen_sources) >= 4, seen_sources  # 64 flows over 16 addresses
    finally:
        for s in real:
            s.close()


def maps_stats(name: str) -> dict[str, int]:
    with open_pinview(name) as view:
        return view.stats()


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def test_extra_addresses_must_be_on_the_private_interface() -> None:
    from orchestrator.errors import LoaderError

    with Lab() as lab:
        with pytest.raises(LoaderError) as err:
            lab.load_relay(extra_private_addresses=["10.77.0.250"])
        assert "extra_private_addresses 10.77.0.250 not on priv" in str(err.value)
        # Refused before anything was attached: nothing is left pinned.
        from orchestrator.pintables import pinned_map_ids

        assert pinned_map_ids(lab.relay.name) is None
