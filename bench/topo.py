"""The bench's veth lab: client | relay (public, private) | transceiver.

Three namespaces and two veth pairs::

    ns client  c0 10.77.1.2  <->  r_pub 10.77.1.1 (VIP)   ns relay
                                   r_priv 10.77.2.1       ns relay
    ns txr     t0 10.77.2.2  <->  r_priv

Addresses are fixed (the namespaces are private); names carry a random
suffix so that parallel runs never collide. Neighbours are permanent, so ARP
never shows up in a measurement, and the relay namespace forwards (for the
nftables and ip_forward paths). lab/topology.py (helper "host") builds
the product's lab; this one stays in bench/ so the bench does not depend on
its shape, and every candidate runs on exactly this topology.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

from pyroute2 import IPRoute, NetNS, netns

CLIENT_IP = "10.77.1.2"
VIP = "10.77.1.1"
RELAY_PRIV_IP = "10.77.2.1"
TXR_IP = "10.77.2.2"


@dataclass
class Lab:
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
        """argv run inside namespace ``ns`` (optionally pinned to one CPU)."""
        pre = ["nsenter", f"--net=/run/netns/{ns}"]
        if cpu is not None:
            pre += ["taskset", "-c", str(cpu)]
        return pre + argv

    def run(self, ns: str, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(ns, argv), check=True, text=True, capture_output=True,
                              timeout=60, **kw)  # type: ignore[call-overload]

    def sysctl(self, ns: str, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        self.run(ns, ["sh", "-c", f"echo {value} > {path}"])

    def set_threaded_napi(self, ifname: str, on: bool) -> None:
        """/sys/class/net/<if>/threaded; sysfs shows a namespace's links only
        to a process that mounted it there, which `ip netns exec` does."""
        subprocess.run(
            ["ip", "netns", "exec", self.ns_of(ifname), "sh", "-c",
             f"echo {1 if on else 0} > /sys/class/net/{ifname}/threaded"],
            check=True, capture_output=True, timeout=10,
        )


def _mac(ns: str, ifname: str) -> tuple[int, str]:
    with NetNS(ns) as n:
        link = n.link("get", ifname=ifname)[0]
        return link["index"], link.get_attr("IFLA_ADDRESS")


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    """Build the lab, yield it, and remove every namespace (and with them the
    veths) on the way out, also on error."""
    s = secrets.token_hex(3)
    lb = Lab(
        suffix=s, ns_client=f"vxb-c-{s}", ns_relay=f"vxb-r-{s}", ns_txr=f"vxb-t-{s}",
        c0=f"vbc{s}", r_pub=f"vbp{s}", r_priv=f"vbq{s}", t0=f"vbt{s}",
    )
    created: list[str] = []
    try:
        for ns in (lb.ns_client, lb.ns_relay, lb.ns_txr):
            netns.create(ns)
            created.append(ns)
        with IPRoute() as ipr:
            for a, b, na, nb in (
                (lb.c0, lb.r_pub, lb.ns_client, lb.ns_relay),
                (lb.t0, lb.r_priv, lb.ns_txr, lb.ns_relay),
            ):
                ipr.link("add", ifname=a, kind="veth", peer=b)
                ipr.link("set", index=ipr.link_lookup(ifname=a)[0], net_ns_fd=na)
                ipr.link("set", index=ipr.link_lookup(ifname=b)[0], net_ns_fd=nb)
        for ns, ifs in (
            (lb.ns_client, [(lb.c0, CLIENT_IP)]),
            (lb.ns_relay, [(lb.r_pub, VIP), (lb.r_priv, RELAY_PRIV_IP)]),
            (lb.ns_txr, [(lb.t0, TXR_IP)]),
        ):
            with NetNS(ns) as n:
                n.link("set", index=n.link_lookup(ifname="lo")[0], state="up")
                for ifname, ip in ifs:
                    idx = n.link_lookup(ifname=ifname)[0]
                    n.addr("add", index=idx, address=ip, prefixlen=24)
                    n.link("set", index=idx, state="up")
        for ifname in (lb.c0, lb.r_pub, lb.r_priv, lb.t0):
            lb.ifindex[ifname], lb.mac[ifname] = _mac(lb.ns_of(ifname), ifname)
        with NetNS(lb.ns_client) as n:
            n.route("add", dst="10.77.2.0", dst_len=24, gateway=VIP)
            n.neigh("add", dst=VIP, lladdr=lb.mac[lb.r_pub], ifindex=lb.ifindex[lb.c0],
                    state="permanent")
        with NetNS(lb.ns_txr) as n:
            n.route("add", dst="10.77.1.0", dst_len=24, gateway=RELAY_PRIV_IP)
            n.neigh("add", dst=RELAY_PRIV_IP, lladdr=lb.mac[lb.r_priv],
                    ifindex=lb.ifindex[lb.t0], state="permanent")
        with NetNS(lb.ns_relay) as n:
            n.neigh("add", dst=CLIENT_IP, lladdr=lb.mac[lb.c0], ifindex=lb.ifindex[lb.r_pub],
                    state="permanent")
            n.neigh("add", dst=TXR_IP, lladdr=lb.mac[lb.t0], ifindex=lb.ifindex[lb.r_priv],
                    state="permanent")
        lb.sysctl(lb.ns_relay, "net.ipv4.ip_forward", "1")
        # Endpoints send complete UDP checksums: an XDP relay rewrites them
        # incrementally, which is wrong for a CHECKSUM_PARTIAL veth skb.
        for ifname in (lb.c0, lb.t0):
            lb.run(lb.ns_of(ifname), ["ethtool", "-K", ifname, "tx", "off"])
        yield lb
    finally:
        for ns in created:
            with contextlib.suppress(Exception):
                netns.remove(ns)


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Switch this (single-threaded) process into ``ns`` for netns-relative
    calls such as attaching XDP by interface name."""
    netns.pushns(ns)
    try:
        yield
    finally:
        netns.popns()


def cpu_count() -> int:
    return os.cpu_count() or 1
