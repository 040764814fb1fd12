# SPDX-License-Identifier: Apache-2.0
"""Next hops for the XDP relay: resolving them, and noticing when they change.

``bpf_fib_lookup`` never starts ARP; a packet whose next hop is unresolved
is passed up and counted (STAT_PASS_NO_NEIGH), and the forward drop
(``hostnet``) stops it there. So the control plane resolves next hops:
``prime_neighbour`` when a transceiver is added, and ``NeighbourWatcher``
calls back when a neighbour changes, which the upkeep turns into a
``config.nh_generation`` bump that invalidates the next hops cached in flows.
"""

from __future__ import annotations

import errno
import select
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from pyroute2 import NetlinkError
from pyroute2.netlink.rtnl import ndmsg as nd
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from orchestrator import netlink


def route_oif(dst: str, netns: str | None = None) -> tuple[int, str | None]:
    """``(ifindex, gateway or None)`` the kernel would use to reach ``dst``."""
    with netlink.iproute(netns) as ipr:
        (route,) = ipr.route("get", dst=dst)
        return route.get_attr("RTA_OIF"), route.get_attr("RTA_GATEWAY")


def prime_neighbour(ip: str, *, netns: str | None = None) -> tuple[int, str]:
    """Ask the kernel to resolve the next hop towards ``ip`` now (NTF_USE).

    ``bpf_fib_lookup`` never triggers ARP itself (it answers NO_NEIGH), so
    the control plane starts resolution when a transceiver appears. An
    existing entry, permanent or not, is left as it is. Returns the
    (ifindex, neighbour address) whose resolution was started.
    """
    ifindex, gateway = route_oif(ip, netns)
    hop = gateway or ip
    with netlink.iproute(netns) as ipr:
        try:
            ipr.neigh("add", dst=hop, ifindex=ifindex, state=nd.states["none"],
                      flags=nd.NTF_USE)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
    return ifindex, hop


_RTMGRP_NEIGH = 0x4
_RTM_NEWNEIGH = 28
_RTM_DELNEIGH = 29


class NeighbourWatcher:
    """Calls ``on_change()`` when a neighbour on the relay's interfaces changes its MAC or goes.

    Listens to rtnetlink neighbour events inside ``netns``. Only what
    invalidates a cached next hop counts: a new MAC for a known neighbour, a
    deletion, or a FAILED entry. ``on_change`` is typically
    ``bump_nh_generation`` bound to the relay's maps. Use ``poll(timeout)``
    from your own loop, or ``start()``/``stop()`` for a background thread.
    """

    def __init__(self, on_change: Callable[[], None], *, netns: str | None = None,
                 ifnames: Sequence[str] | None = None) -> None:
        self.on_change = on_change
        self.netns = netns
        self.ifindexes = (
            {netlink.link_info(n, netns).ifindex for n in ifnames} if ifnames else None
        )
        self.changes = 0
        self._known: dict[tuple[int, str], str | None] = {}
        self._sock = netlink.run_in_netns(
            netns, socket.socket, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE
        )
        self._sock.bind((0, _RTMGRP_NEIGH))
        self._sock.setblocking(False)
        self._marshal = MarshalRtnl()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seed()

    def _seed(self) -> None:
        with netlink.iproute(self.netns) as ipr:
            for entry in ipr.get_neighbours(family=socket.AF_INET):
                self._known[(entry["ifindex"], entry.get_attr("NDA_DST"))] = entry.get_attr(
                    "NDA_LLADDR")

    def _relevant(self, msg_type: int, entry: Any) -> bool:
        ifindex = entry["ifindex"]
        if self.ifindexes is not None and ifindex not in self.ifindexes:
            return False
        key = (ifindex, entry.get_attr("NDA_DST"))
        mac = entry.get_attr("NDA_LLADDR")
        before = self._known.get(key)
        if msg_type == _RTM_DELNEIGH or entry["state"] & 0x20:  # NUD_FAILED
            self._known.pop(key, None)
            return before is not None
        self._known[key] = mac
        return before is not None and mac is not None and mac != before

    def poll(self, timeout: float = 0.0) -> int:
        """Handle pending events (waiting up to ``timeout`` s); returns changes signalled."""
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if not ready:
            return 0
        changed = 0
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                break
            # pyroute2's rtnetlink marshal splits and decodes the datagram.
            for entry in self._marshal.parse(data):
                msg_type = entry["header"]["type"]
                if msg_type not in (_RTM_NEWNEIGH, _RTM_DELNEIGH):
                    continue
                if entry["family"] == socket.AF_INET and self._relevant(msg_type, entry):
                    changed += 1
        if changed:
            self.changes += changed
            self.on_change()
        return changed

    def start(self) -> None:
        def run() -> None:
            while not self._stop.is_set():
                self.poll(0.5)

        self._thread = threading.Thread(target=run, name="neighbour-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> NeighbourWatcher:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
