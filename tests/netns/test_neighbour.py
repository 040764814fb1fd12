# SPDX-License-Identifier: Apache-2.0
"""Where packets come from, on the wire (issue #10 items 3-5).

- With the relay's neighbour entry for the client deleted, the first reply
  (and every one after it) still reaches the client: the relay sends it to
  the MAC the client's Binding Request came from (bpf/relay.c
  learn_client_hop), since nothing on the relay would ever resolve it.
- A transceiver-shaped reply sent from the client's side, and a Binding
  Request with a forged private source, are dropped and counted, and
  allocate nothing.
- ``relay load`` writes the blocked prefixes, and ``--replace`` changes them.
- The orchestrator's upkeep primes the public side's gateways.

The lab's neighbours along the relayed path are permanent; each test puts
back what it deletes.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from ipaddress import IPv4Network, ip_network
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from lab.netns import ensure_neighbour, ensure_route, neighbour
from orchestrator import bccview, loader, neighbours, netlink, upkeep
from orchestrator.bccmaps import BlockedBy
from tests.support import until
from voxrelay.config import DEFAULT_BLOCKED_SOURCE_PREFIXES

DATAGRAMS = 20


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


@pytest.fixture
def no_client_neighbour(loaded_relay: Any) -> Iterator[None]:
    """The relay's entry for the client deleted for the test, then put back."""
    lab = loaded_relay.lab
    relay, client = lab.relay, lab.relay.client_side
    assert neighbour(relay.public.ifname, client.address, relay.netns) is not None
    with netlink.iproute(relay.netns) as ipr:
        ipr.neigh("del", dst=client.address,
                  ifindex=netlink.link_info(relay.public.ifname, relay.netns).ifindex)
    try:
        assert neighbour(relay.public.ifname, client.address, relay.netns) is None
        yield
    finally:
        ensure_neighbour(relay.public.ifname, client.address, client.mac, netns=relay.netns)


def _exchange(loaded_relay: Any, client: socket.socket, payload: bytes) -> None:
    client.sendto(payload, loaded_relay.lab.relay.vip)
    assert client.recvfrom(4096) == (payload, loaded_relay.lab.relay.vip)


def test_first_reply_reaches_a_client_with_no_neighbour_entry(
        loaded_relay: Any, no_client_neighbour: None) -> None:
    lab = loaded_relay.lab
    before = loaded_relay.stats()
    client = loaded_relay.client_socket()
    try:
        client.bind((lab.relay.client_side.address, 0))
        _exchange(loaded_relay, client, loaded_relay.stun(loaded_relay.mint()))
        for i in range(DATAGRAMS):
            _exchange(loaded_relay, client, i.to_bytes(4, "big") + b"voice" * 20)
    finally:
        client.close()
    stats = _delta(loaded_relay.stats(), before)
    assert stats.get("STAT_FWD_NEW_FLOW") == 1, stats
    assert stats.get("STAT_FWD_TO_CLIENT_LEARNT_NH") == DATAGRAMS + 1, stats
    assert "STAT_FWD_TO_CLIENT" not in stats and "STAT_PASS_NO_NEIGH" not in stats, stats
    assert not {k for k in stats if k.startswith("STAT_DROP")}, stats
    # Still no entry: every reply took the learnt next hop, none needed the kernel.
    assert neighbour(lab.relay.public.ifname, lab.relay.client_side.address,
                     lab.relay.netns) is None


def test_replies_go_on_when_the_neighbour_goes_mid_call(loaded_relay: Any) -> None:
    """A flow that resolved its client through the kernel keeps its replies
    when the entry goes and the orchestrator bumps the generation (what its
    NeighbourWatcher does on a deletion)."""
    lab = loaded_relay.lab
    relay, peer = lab.relay, lab.relay.client_side
    client = loaded_relay.client_socket()
    try:
        client.bind((peer.address, 0))
        before = loaded_relay.stats()
        _exchange(loaded_relay, client, loaded_relay.stun(loaded_relay.mint()))
        assert _delta(loaded_relay.stats(), before).get("STAT_FWD_TO_CLIENT") == 1
        with netlink.iproute(relay.netns) as ipr:
            ipr.neigh("del", dst=peer.address,
                      ifindex=netlink.link_info(relay.public.ifname, relay.netns).ifindex)
        try:
            loaded_relay.maps.bump_nh_generation()
            before = loaded_relay.stats()
            for i in range(DATAGRAMS):
                _exchange(loaded_relay, client, i.to_bytes(4, "big") + b"later")
            stats = _delta(loaded_relay.stats(), before)
            assert stats.get("STAT_FWD_TO_CLIENT_LEARNT_NH") == DATAGRAMS, stats
        finally:
            ensure_neighbour(relay.public.ifname, peer.address, peer.mac, netns=relay.netns)
        # With the entry back (and the generation bumped), the fib's answer wins again.
        loaded_relay.maps.bump_nh_generation()
        before = loaded_relay.stats()
        _exchange(loaded_relay, client, b"back to normal")
        assert _delta(loaded_relay.stats(), before).get("STAT_FWD_TO_CLIENT") == 1
    finally:
        client.close()


def _send_frames(loaded_relay: Any, frames: list[bytes]) -> None:
    """Put raw frames on the client's wire to the relay (a forged source needs that)."""
    lab = loaded_relay.lab
    sock = lab.socket(lab.client, socket.AF_PACKET, socket.SOCK_RAW)
    try:
        sock.bind((lab.relay.client_side.ifname, 0))
        for frame in frames:
            sock.send(frame)
    finally:
        sock.close()


def _settled_stats(loaded_relay: Any, before: dict[str, int], want: int) -> dict[str, int]:
    """The counters once ``want`` packets have been counted, and a moment later (what
    a drop let through would have arrived by then)."""
    until(lambda: _delta(loaded_relay.stats(), before).get("STAT_RX_TOTAL", 0) >= want,
          what=f"the relay to count {want} packets")
    time.sleep(0.3)  # bounded settle before asserting that nothing else came
    return _delta(loaded_relay.stats(), before)


def _state(loaded_relay: Any) -> tuple[Any, ...]:
    m = loaded_relay.maps
    return tuple(m.flows()), tuple(m.reverse_entries()), m.flow_counts()


def test_spoofed_packets_from_the_public_side_are_counted_drops(loaded_relay: Any) -> None:
    lab = loaded_relay.lab
    relay, peer = lab.relay, lab.relay.client_side
    client = loaded_relay.client_socket()
    try:
        client.bind((peer.address, 0))
        _exchange(loaded_relay, client, loaded_relay.stun(loaded_relay.mint()))
        flow = loaded_relay.maps.flow(peer.address, client.getsockname()[1])
        assert flow is not None
        echoed = len(loaded_relay.echo.received)
        state = _state(loaded_relay)
        wire = Ether(src=peer.mac, dst=relay.public.mac)
        frames = [
            # The transceiver's reply, forged on the public side into the live flow.
            bytes(wire / IP(src=lab.transceiver_lan.address, dst=relay.private.address)
                  / UDP(sport=loaded_relay.ECHO_PORT, dport=flow.relay_port) / b"forged reply"),
            # A valid Binding Request claiming a source inside the private network.
            bytes(wire / IP(src="10.77.0.50", dst=relay.public.address)
                  / UDP(sport=5000, dport=relay.vip[1])
                  / loaded_relay.stun(loaded_relay.mint())),
        ]
        before = loaded_relay.stats()
        _send_frames(loaded_relay, frames)
        stats = _settled_stats(loaded_relay, before, len(frames))
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recvfrom(4096)
    finally:
        client.close()
    # (The link's own chatter, IPv6 neighbour discovery, may pass meanwhile: not relay traffic.)
    relayed = {k: v for k, v in stats.items() if k not in ("STAT_RX_TOTAL", "STAT_PASS_NOT_RELAY")}
    assert relayed == {"STAT_DROP_INGRESS_NOT_PRIVATE": 1, "STAT_DROP_BLOCKED_SOURCE": 1}, stats
    assert len(loaded_relay.echo.received) == echoed, "a forged packet reached the transceiver"
    assert _state(loaded_relay) == state, "a forged packet allocated or refreshed state"


def test_loader_writes_the_blocked_prefixes_and_replace_changes_them(loaded_relay: Any) -> None:
    """``relay load`` blocks the private subnet and the relay's own addresses beside the
    defaults; ``--replace`` with an operator prefix blocks new flows from it (and only
    new ones), and a replace without it unblocks again."""
    lab = loaded_relay.lab
    relay = lab.relay
    blocked = loaded_relay.maps.blocked_sources()
    assert blocked[IPv4Network(f"{relay.private.address}/{relay.private.prefixlen}",
                               strict=False)] == BlockedBy.PRIVATE_SUBNET
    assert blocked[IPv4Network(f"{relay.public.address}/32")] == BlockedBy.RELAY_ADDRESS
    assert {ip_network(p) for p in DEFAULT_BLOCKED_SOURCE_PREFIXES} <= set(blocked)

    client = loaded_relay.client_socket()
    try:
        client.bind((relay.client_side.address, 0))
        _exchange(loaded_relay, client, loaded_relay.stun(loaded_relay.mint()))  # a live flow
        operator = f"{relay.client_side.address}/32"
        loader.replace(relay.relay_config(blocked_source_prefixes=[operator]), netns=relay.netns)
        try:
            now = loaded_relay.maps.blocked_sources()
            assert now[IPv4Network(operator)] == BlockedBy.OPERATOR
            assert not {ip_network(p) for p in DEFAULT_BLOCKED_SOURCE_PREFIXES} & set(now)
            # The open flow goes on; a new one from the same address is refused.
            _exchange(loaded_relay, client, b"still relayed")
            other = loaded_relay.client_socket()
            try:
                other.bind((relay.client_side.address, 0))
                before = loaded_relay.stats()
                other.sendto(loaded_relay.stun(loaded_relay.mint()), relay.vip)
                stats = _settled_stats(loaded_relay, before, 1)
                assert stats.get("STAT_DROP_BLOCKED_SOURCE") == 1, stats
                assert loaded_relay.maps.flow(relay.client_side.address,
                                              other.getsockname()[1]) is None
            finally:
                other.close()
        finally:
            loader.replace(relay.relay_config(), netns=relay.netns)
        assert loaded_relay.maps.blocked_sources() == blocked
    finally:
        client.close()


def test_upkeep_primes_the_public_gateway(loaded_relay: Any) -> None:
    """Nothing on the relay would ARP for the public side's gateway (client traffic
    never reaches its stack): the orchestrator's upkeep primes it on every pass."""
    lab = loaded_relay.lab
    relay, gateway = lab.relay, lab.relay.client_side
    routed = "203.0.113.0/24"
    ensure_route(routed, gateway=gateway.address, netns=relay.netns)
    with netlink.iproute(relay.netns) as ipr:
        ipr.neigh("del", dst=gateway.address,
                  ifindex=netlink.link_info(relay.public.ifname, relay.netns).ifindex)
    try:
        assert neighbours.interface_gateways(relay.public.ifname, relay.netns) == [gateway.address]
        assert neighbours.interface_gateways(relay.private.ifname, relay.netns) == []
        assert neighbour(relay.public.ifname, gateway.address, relay.netns) is None
        view = bccview.open_relay(relay.name)
        keeper = upkeep.BpfRelayUpkeep(view)
        try:
            keeper.prime([])
            until(lambda: (neighbour(relay.public.ifname, gateway.address, relay.netns)
                           or ("", ""))[0] == gateway.mac,
                  what="the public gateway's neighbour entry to resolve")
        finally:
            asyncio.run(keeper.stop())
            view.close()
    finally:
        with netlink.iproute(relay.netns) as ipr:
            ipr.route("del", dst=routed)
        ensure_neighbour(relay.public.ifname, gateway.address, gateway.mac, netns=relay.netns)
