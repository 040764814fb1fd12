# SPDX-License-Identifier: Apache-2.0
"""A loaded relay program in a private network namespace, for PROG_TEST_RUN.

``ProgTestRelay`` builds a uniquely named namespace holding the relay's two
interfaces (veth pairs), their addresses, routes and permanent neighbours,
enters it with the calling thread (BPF_PROG_TEST_RUN looks up the ingress
interface and runs bpf_fib_lookup in the caller's namespace), compiles and
loads bpf/relay.c once, and removes everything on ``close()``. The packet
table (tests/bpf/packet_table.py, on the packets of lab/packets.py), the property
test and the bench (bench/progcost.py) reuse it.

Topology (all inside the namespace)::

    client 203.0.113.0/24 --(gateway 198.51.100.1)-- vpub 198.51.100.10 = VIP
    client 203.0.113.128/25 --(gateway 198.51.100.2: no neighbour entry)-- vpub
    client 198.51.100.40: on-link, no neighbour entry
    client 203.0.113.64/27 --(10.77.0.98: no neighbour entry)-- vpriv: routed out of the
                        other interface than its packets come in by
    vpriv 10.77.0.1/24 --- transceivers 10.77.0.21 (id 7), .22 (id 8), .23 (id 11, draining)
                        10.77.0.99 (id 9): no neighbour entry  -> PASS_NO_NEIGH
                        192.0.2.50 (id 10): blackhole route     -> DROP_FIB_FAIL
    vpub --- transceiver 198.51.100.60 (id 12): on the public side -> XDP_TX

    IPv6 (dual stack) beside it:
    client 2001:db8:7::/48 --(gateway 2001:db8:100::1)-- vpub 2001:db8:100::10 = VIP6
    client 2001:db8:100::40: on-link, no neighbour entry
    vpriv fd00:77::1/64 --- transceiver fd00:77::21 (id 13)

The program takes public-side packets only from vpub and private-side ones
only from vpriv (config ifindexes), and blocks client sources in 10.77.0.0/24,
the relay's two addresses and RelayConfig's default blocked_source_prefixes.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Self

from pyroute2 import netns as pyroute2_netns

from lab import bpftest
from lab.netns import (
    create_netns,
    delete_netns,
    ensure_address,
    ensure_neighbour,
    ensure_route,
    ensure_veth,
)
from orchestrator import bpfprog, hostnet
from orchestrator.bccmaps import IPAddress, RelayMaps, TransceiverStatus, desired_blocked_sources
from orchestrator.verdicts import RelayStat, verdict_names
from voxrelay.config import RelayConfig

VIP = IPv4Address("198.51.100.10")
GATEWAY = IPv4Address("198.51.100.1")
PRIVATE = IPv4Address("10.77.0.1")
PRIVATE_NET = IPv4Network("10.77.0.0/24")
EXTRA_PRIVATE = (IPv4Address("10.77.0.2"), IPv4Address("10.77.0.3"))
"""More private addresses of the relay, for rows with ``extra_private_addresses``."""
PUBLIC_PORT = 3478
PORT_MIN, PORT_MAX = 40000, 40999

VPUB_MAC = "02:00:00:00:00:0a"
VPRIV_MAC = "02:00:00:00:00:0b"
GATEWAY_MAC = "02:00:00:00:01:01"
UNRESOLVED_GATEWAY = IPv4Address("198.51.100.2")
"""Next hop of ROUTED_NO_NEIGH; it has no neighbour entry."""
ROUTED_NO_NEIGH = "203.0.113.128/25"
"""Clients behind a router the relay has no neighbour entry for."""
ONLINK_NO_NEIGH = IPv4Address("198.51.100.40")
"""A client on the public subnet the relay has no neighbour entry for."""
ROUTED_ELSEWHERE = "203.0.113.64/27"
"""Clients whose route leaves by vpriv, via a next hop with no neighbour entry."""
ELSEWHERE_GATEWAY = IPv4Address("10.77.0.98")

VIP6 = IPv6Address("2001:db8:100::10")
GATEWAY6 = IPv6Address("2001:db8:100::1")
PRIVATE6 = IPv6Address("fd00:77::1")
PRIVATE6_NET = IPv6Network("fd00:77::/64")
ONLINK6_NO_NEIGH = IPv6Address("2001:db8:100::40")
"""An IPv6 client on the public subnet the relay has no neighbour entry for."""

# transceiver id -> (address, MAC of its neighbour entry or None, status)
TRANSCEIVERS: dict[int, tuple[IPAddress, str | None, TransceiverStatus]] = {
    7: (IPv4Address("10.77.0.21"), "02:00:00:00:02:21", TransceiverStatus.ACTIVE),
    8: (IPv4Address("10.77.0.22"), "02:00:00:00:02:22", TransceiverStatus.ACTIVE),
    9: (IPv4Address("10.77.0.99"), None, TransceiverStatus.ACTIVE),
    10: (IPv4Address("192.0.2.50"), None, TransceiverStatus.ACTIVE),
    11: (IPv4Address("10.77.0.23"), "02:00:00:00:02:23", TransceiverStatus.DRAINING),
    12: (IPv4Address("198.51.100.60"), "02:00:00:00:02:60", TransceiverStatus.ACTIVE),
    13: (IPv6Address("fd00:77::21"), "02:00:00:00:02:13", TransceiverStatus.ACTIVE),
}
BLACKHOLE = "192.0.2.0/24"

KEY1 = bytes(range(16))
KEY2 = bytes(range(100, 116))

# Small maps: the lab needs few entries and the host's memory is shared.
LAB_LIMITS = {"MAX_FLOWS": 8192, "MAX_RATE_SOURCES": 4096, "MAX_TOKENS_TRACKED": 4096,
              "MAX_RELAY_PORTS": 8192}


def lab_relay_config(**changes: Any) -> RelayConfig:
    base: dict[str, Any] = {
        "public_port": PUBLIC_PORT, "port_min": PORT_MIN, "port_max": PORT_MAX,
        "new_flows_per_sec": 0, "max_flows_per_token": 0, "flow_idle_seconds": 120,
    }
    base.update(changes)
    return RelayConfig(**base)


@dataclass
class Result:
    """One packet's run: the XDP action, the one counter it moved, the bytes out."""

    action: int
    stat: str
    data_out: bytes
    moved: dict[str, int] = field(default_factory=dict)


class ProgTestRelay:
    """The relay loaded in a namespace of its own, for BPF_PROG_TEST_RUN: namespace,
    veths, the compiled program and its maps. Use as a context manager."""

    def __init__(self, limits: dict[str, int] | None = None) -> None:
        self.netns = f"vxk-{secrets.token_hex(4)}"
        self._entered = False
        self._created = False
        self.bpf: Any = None
        self.fd = -1
        self.maps: RelayMaps
        self.ifindex: dict[str, int] = {}
        self._limits = limits or LAB_LIMITS

    # --- lifecycle -------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self._build_netns()
            self.bpf = bpfprog.compile_relay(self._limits)
            fn: Any = bpfprog.load_relay_fn(self.bpf)
            self.fd = fn.fd
            self.maps = RelayMaps(self.bpf)
            self.reset()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
        if self._entered:
            pyroute2_netns.popns()
            self._entered = False
        if self._created:
            delete_netns(self.netns)
            self._created = False

    def _build_netns(self) -> None:
        ns = self.netns
        create_netns(ns)  # with its loopback up
        self._created = True
        # No duplicate address detection: an IPv6 address is usable at once
        # (for interfaces made after this).
        hostnet.set_sysctl("net/ipv6/conf/default/accept_dad", 0, ns)
        for name, peer, mac in (("vpub", "vpubp", VPUB_MAC), ("vpriv", "vprivp", VPRIV_MAC)):
            link, _ = ensure_veth(name, peer, netns=ns, peer_netns=ns, mac=mac)
            self.ifindex[name] = link.ifindex
        ensure_address("vpub", f"{VIP}/24", ns)
        ensure_address("vpriv", f"{PRIVATE}/{PRIVATE_NET.prefixlen}", ns)
        ensure_route("default", gateway=str(GATEWAY), netns=ns)
        ensure_route(BLACKHOLE, blackhole=True, netns=ns)
        ensure_route(ROUTED_NO_NEIGH, gateway=str(UNRESOLVED_GATEWAY), netns=ns)
        ensure_route(ROUTED_ELSEWHERE, gateway=str(ELSEWHERE_GATEWAY), netns=ns)
        ensure_address("vpub", f"{VIP6}/64", ns)
        ensure_address("vpriv", f"{PRIVATE6}/{PRIVATE6_NET.prefixlen}", ns)
        ensure_route("::/0", gateway=str(GATEWAY6), netns=ns)
        ensure_neighbour("vpub", str(GATEWAY), GATEWAY_MAC, netns=ns)
        ensure_neighbour("vpub", str(GATEWAY6), GATEWAY_MAC, netns=ns)
        for addr, neigh_mac, _ in TRANSCEIVERS.values():
            if neigh_mac is not None:
                side = "vpriv" if addr in PRIVATE_NET or addr in PRIVATE6_NET else "vpub"
                ensure_neighbour(side, str(addr), neigh_mac, netns=ns)
        # bpf_fib_lookup answers FWD_DISABLED unless forwarding is on.
        hostnet.set_sysctl("net/ipv4/conf/all/forwarding", 1, ns)
        hostnet.set_sysctl("net/ipv6/conf/all/forwarding", 1, ns)
        pyroute2_netns.pushns(ns)
        self._entered = True

    # --- state -------------------------------------------------------------------

    def reset(self, relay: RelayConfig | None = None) -> None:
        """Default config, keys 1 and 2, every lab transceiver; no flows; zero stats."""
        m = self.maps
        m.clear_flow_state()
        m.reset_stats()
        for key_id in m.active_keys():
            m.retire_key(key_id)
        for tid in list(m.transceivers()):
            m.delete_transceiver(tid)
        self.configure(relay or lab_relay_config())
        m.set_key(1, KEY1)
        m.set_key(2, KEY2)
        for tid, (addr, _, status) in TRANSCEIVERS.items():
            m.set_transceiver(tid, addr, status)

    def configure(self, relay: RelayConfig, *, public_if: str = "vpub",
                  private_if: str = "vpriv", ipv6: bool = True,
                  private6: bool = True) -> None:
        """Write ``config`` and ``blocked_sources`` as the loader would for this namespace.

        ``public_if``/``private_if`` name the interfaces the program accepts
        each side from (a bench cycle that feeds the program its own output
        on one interface sets both to it). ``ipv6`` writes the IPv6 VIP
        (dual stack), ``private6`` the private IPv6 address (IPv6
        transceivers).
        """
        vip6 = VIP6 if ipv6 else None
        private_addr6 = PRIVATE6 if private6 else None
        self.maps.write_blocked_sources(desired_blocked_sources(
            relay, public_addr=VIP, private_addr=PRIVATE,
            private_networks=[PRIVATE_NET, PRIVATE6_NET],
            relay_addresses=[a for a in (vip6, private_addr6) if a is not None]))
        self.maps.write_config(relay, public_addr=VIP, private_addr=PRIVATE,
                               public_ifindex=self.ifindex[public_if],
                               private_ifindex=self.ifindex[private_if],
                               public_addr6=vip6, private_addr6=private_addr6)
        self.maps.write_private_addrs([PRIVATE, *relay.extra_private_addresses])

    # --- running packets -----------------------------------------------------------

    def run(self, packet: bytes, ingress: str = "vpub") -> Result:
        """Run one packet arriving on ``ingress``; report the counter it moved.

        Raises AssertionError unless STAT_RX_TOTAL moved by one and exactly
        one other counter moved by one: the program's accounting contract.
        """
        before = self.maps.stats()
        out = bpftest.prog_test_run(self.fd, packet, ingress_ifindex=self.ifindex[ingress])
        after = self.maps.stats()
        moved = {n: after[n] - before[n] for n in verdict_names() if after[n] != before[n]}
        total = moved.pop("STAT_RX_TOTAL", 0)
        assert total == 1 and len(moved) == 1 and list(moved.values()) == [1], (
            f"accounting broken: rx_total +{total}, others {moved}"
        )
        return Result(out.retval, next(iter(moved)), out.data_out, moved)

    def run_raw(self, packet: bytes, ingress: str = "vpub", repeat: int = 1) -> bpftest.TestRun:
        """Run one packet without reading counters (for bulk runs). With
        ``repeat`` > 1 the kernel runs the program again on its own output."""
        return bpftest.prog_test_run(self.fd, packet, repeat,
                                     ingress_ifindex=self.ifindex[ingress])

    def age_all_flows(self, seconds: float) -> None:
        """Move every flow's and reverse entry's last_seen ``seconds`` into the past."""
        delta = int(seconds * 1e9)
        for name in ("flows", "reverse"):
            table = self.maps.table(name)
            for k, v in list(table.items()):
                v.last_seen_ns = max(0, v.last_seen_ns - delta)
                table[k] = v


def stat_names() -> list[str]:
    return [RelayStat(i).name for i in range(len(verdict_names()))]


def root_and_bpf_available() -> str | None:
    """None when the lab can run here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "needs root (BPF, network namespaces)"
    try:
        import bcc  # noqa: F401
        import pyroute2  # noqa: F401
        import scapy  # noqa: F401
    except ImportError as exc:
        return f"missing module: {exc.name}"
    return None
