# SPDX-License-Identifier: Apache-2.0
"""The bench's veth topology: client | relay (public, private) | transceiver.

Three namespaces and two veth pairs::

    ns client  c0 10.77.1.2  <->  r_pub 10.77.1.1 (VIP)   ns relay
                                   r_priv 10.77.2.1       ns relay
    ns txr     t0 10.77.2.2  <->  r_priv

Addresses are fixed (the namespaces are private); names carry a random
suffix so that parallel runs never collide. Neighbours are permanent, so ARP
never shows up in a measurement, and the relay namespace forwards (for the
nftables and ip_forward paths). lab/topology.py's ``Lab`` is the product's
lab; this one stays in bench/ so the bench does not depend on its shape, and
every candidate runs on exactly this topology. Both are built with the same
pyroute2 tooling (``lab.netns``, ``orchestrator.hostnet``).
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

from pyroute2 import netns

from lab.netns import (
    create_netns,
    delete_netns,
    ensure_address,
    ensure_neighbour,
    ensure_route,
    ensure_veth,
    set_threaded_napi,
    set_tx_checksum,
)
from orchestrator.hostnet import set_sysctl

CLIENT_IP = "10.77.1.2"
VIP = "10.77.1.1"
RELAY_PRIV_IP = "10.77.2.1"
TXR_IP = "10.77.2.2"
PREFIXLEN = 24


@dataclass
class BenchTopology:
    """The three namespaces and two veth pairs above, built by ``topology()``."""

    suffix: str
    ns_client: str
    ns_relay: str
    ns_txr: str
    c0: str
    r_pub: str
    r_priv: str
    t0: str
    ifindex: dict[str, int] = field(default_factory=dict)
    mac: dict[str, str] = field(default_factory=dict)

    def ns_of(self, ifname: str) -> str:
        return {
            self.c0: self.ns_client,
            self.r_pub: self.ns_relay,
            self.r_priv: self.ns_relay,
            self.t0: self.ns_txr,
        }[ifname]

    def cmd(self, ns: str, argv: list[str], cpu: int | None = None) -> list[str]:
        """argv run inside namespace ``ns`` (optionally pinned to one CPU), for the
        load generators and tools the bench starts as processes."""
        pre = ["nsenter", f"--net=/run/netns/{ns}"]
        if cpu is not None:
            pre += ["taskset", "-c", str(cpu)]
        return pre + argv

    def run(self, ns: str, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(ns, argv), check=True, text=True, capture_output=True,
                              timeout=60, **kw)  # type: ignore[call-overload]

    def set_threaded_napi(self, ifname: str, on: bool) -> bool:
        """Threaded NAPI on ``ifname``; False where the device has no NAPI (a veth
        has it only while XDP is attached)."""
        return set_threaded_napi(ifname, self.ns_of(ifname), on)


@contextlib.contextmanager
def topology() -> Iterator[BenchTopology]:
    """Build the topology, yield it, and remove every namespace (and with them
    the veths) on the way out, also on error."""
    s = secrets.token_hex(3)
    t = BenchTopology(
        suffix=s, ns_client=f"vxb-c-{s}", ns_relay=f"vxb-r-{s}", ns_txr=f"vxb-t-{s}",
        c0=f"vbc{s}", r_pub=f"vbp{s}", r_priv=f"vbq{s}", t0=f"vbt{s}",
    )
    created: list[str] = []
    try:
        for ns in (t.ns_client, t.ns_relay, t.ns_txr):
            create_netns(ns)
            created.append(ns)
        for end, peer in ((t.c0, t.r_pub), (t.t0, t.r_priv)):
            links = ensure_veth(end, peer, netns=t.ns_of(end), peer_netns=t.ns_of(peer))
            for link in links:
                t.ifindex[link.ifname], t.mac[link.ifname] = link.ifindex, link.mac
        for ifname, ip in ((t.c0, CLIENT_IP), (t.r_pub, VIP), (t.r_priv, RELAY_PRIV_IP),
                           (t.t0, TXR_IP)):
            ensure_address(ifname, f"{ip}/{PREFIXLEN}", t.ns_of(ifname))
        ensure_route(f"10.77.2.0/{PREFIXLEN}", gateway=VIP, netns=t.ns_client)
        ensure_route(f"10.77.1.0/{PREFIXLEN}", gateway=RELAY_PRIV_IP, netns=t.ns_txr)
        for ifname, ip, via in ((t.c0, VIP, t.r_pub), (t.t0, RELAY_PRIV_IP, t.r_priv),
                                (t.r_pub, CLIENT_IP, t.c0), (t.r_priv, TXR_IP, t.t0)):
            ensure_neighbour(ifname, ip, t.mac[via], netns=t.ns_of(ifname))
        set_sysctl("net.ipv4.ip_forward", 1, t.ns_relay)
        # Endpoints send complete UDP checksums: an XDP relay rewrites them
        # incrementally, which is wrong for a CHECKSUM_PARTIAL veth skb.
        for ifname in (t.c0, t.t0):
            set_tx_checksum(ifname, False, t.ns_of(ifname))
        yield t
    finally:
        for ns in created:
            with contextlib.suppress(Exception):
                delete_netns(ns)


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Switch this (single-threaded) process into ``ns`` for netns-relative
    calls such as attaching XDP by interface name."""
    netns.pushns(ns)
    try:
        yield
    finally:
        netns.popns()

