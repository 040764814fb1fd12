# SPDX-License-Identifier: Apache-2.0
"""Next hops for the XDP relay: resolving them, and noticing when they change.

``bpf_fib_lookup`` never starts ARP. A reply to a client whose next hop is
unresolved goes to the MAC the client's flow was opened from (bpf/relay.c
``learn_client_hop``, counted STAT_FWD_TO_CLIENT_LEARNT_NH); any other
packet whose next hop is unresolved is passed up and counted
(STAT_PASS_NO_NEIGH), and the forward drop (``hostnet``) stops it there. So
the control plane resolves the transceivers' next hops:
``prime_neighbour`` when a transceiver is added, ``prime_gateways`` for the
public side's gateways, and ``NeighbourWatcher``
(a coroutine on pyroute2's ``AsyncIPRoute``) calls back when a neighbour
changes, which the upkeep turns into a
``config.nh_generation`` bump that invalidates the next hops cached in flows.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

from pyroute2 import AsyncIPRoute, NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_NEIGH
from pyroute2.netlink.rtnl import ndmsg as nd

from orchestrator import netlink

log = logging.getLogger(__name__)


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


def interface_gateways(ifname: str, netns: str | None = None) -> list[str]:
    """The IPv4 gateways that the main table's routes out of ``ifname`` name, in order.

    On the public interface these are the next hops towards clients that do
    not share its subnet (typically the default route's gateway). Multipath
    routes contribute each hop that leaves by ``ifname``.
    """
    found: list[str] = []
    with netlink.iproute(netns) as ipr:
        index = netlink.link_index(ipr, ifname)
        if index is None:
            raise netlink.NetlinkSetupError(
                f"no interface {ifname!r} in netns {netns or '(current)'}")
        for route in ipr.get_routes(family=socket.AF_INET, table=_RT_TABLE_MAIN):
            hops = [(route.get_attr("RTA_OIF"), route.get_attr("RTA_GATEWAY"))]
            hops += [(hop["oif"], hop.get_attr("RTA_GATEWAY"))
                     for hop in route.get_attr("RTA_MULTIPATH") or ()]
            for oif, gateway in hops:
                if oif == index and gateway and gateway not in found:
                    found.append(gateway)
    return found


def prime_gateways(ifname: str, *, netns: str | None = None) -> list[str]:
    """``prime_neighbour`` for each of ``interface_gateways(ifname)``; returns them.

    Nothing else makes the kernel resolve the public side's gateway: the
    relay's traffic to clients never passes through the stack, so an entry
    that is deleted or garbage-collected stays missing, and every reply then
    takes bpf/relay.c's learnt fallback (a fib lookup per packet) instead of
    the kernel's answer.
    """
    gateways = interface_gateways(ifname, netns)
    for gateway in gateways:
        prime_neighbour(gateway, netns=netns)
    return gateways


_RT_TABLE_MAIN = 254
_RTM_NEWNEIGH = 28
_RTM_DELNEIGH = 29
_NUD_FAILED = 0x20


class NeighbourWatcher:
    """Calls ``on_change()`` when a neighbour on the relay's interfaces changes its MAC or goes.

    Follows rtnetlink neighbour events (RTNLGRP_NEIGH) inside ``netns`` on
    pyroute2's ``AsyncIPRoute``, as a coroutine on the caller's event loop.
    Only what invalidates a cached next hop counts: a new MAC for a known
    neighbour, a deletion, or a FAILED entry. ``on_change`` is typically
    ``bump_nh_generation`` bound to the relay's maps; it runs on the loop.

    ``await start()`` subscribes and reads the current table (so that a
    change right after it returns is seen), then follows events on a task
    until ``await stop()``; or ``async with`` it. ``wait_changes`` lets a
    caller await the changes it provoked.
    """

    def __init__(self, on_change: Callable[[], None], *, netns: str | None = None,
                 ifnames: Sequence[str] | None = None, rcvbuf: int | None = None) -> None:
        self.on_change = on_change
        self.netns = netns
        self.ifnames = tuple(ifnames or ())
        # The event socket's receive buffer (None: pyroute2's 1 MiB). A burst
        # larger than it loses events, which ``run`` counts as a change.
        self.rcvbuf = rcvbuf
        self.ifindexes: set[int] | None = None
        self.changes = 0
        self._known: dict[tuple[int, str], str | None] = {}
        self._ipr: AsyncIPRoute | None = None
        self._task: asyncio.Task[None] | None = None
        self._signalled = asyncio.Event()

    async def open(self) -> AsyncIPRoute:
        """Subscribe to neighbour events in ``netns``, then read its neighbour table.

        Subscribing first means a change between the two is not missed (it
        is compared against the table read). Raises NetlinkSetupError for a
        missing namespace or interface.
        """
        # The socket is made on a thread that setns()es into the namespace
        # (netlink.run_in_netns) and handed to pyroute2 by fd: AsyncIPRoute's
        # own netns= forks a child per socket, and a fork of the asyncio
        # service shares its signal wakeup fd (the child's SIGTERM stopped
        # the service). A netlink socket stays in the namespace it was made in.
        sock = await asyncio.to_thread(
            netlink.run_in_netns, self.netns, socket.socket,
            socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE,
        )
        ipr = AsyncIPRoute(fileno=sock.detach())
        try:
            await ipr.bind(groups=RTMGRP_NEIGH)
            if self.ifnames:
                self.ifindexes = {await _ifindex(ipr, n, self.netns) for n in self.ifnames}
            self._known.clear()
            async for entry in await ipr.get_neighbours(family=socket.AF_INET):
                self._known[(entry["ifindex"], entry.get_attr("NDA_DST"))] = entry.get_attr(
                    "NDA_LLADDR")
            if self.rcvbuf is not None:
                # Set after the dump, whose replies need the room.
                ipr.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        except BaseException:
            ipr.close()
            raise
        self._ipr = ipr
        return ipr

    async def run(self) -> None:
        """Follow events until cancelled (opening first if ``open`` was not awaited).

        A receive-buffer overrun (ENOBUFS) loses events and leaves pyroute2's
        socket unusable: the watcher subscribes and reads the table again, and
        then counts one change, since a lost event may have been one. (The
        thread this replaces died there, and next hops went stale unnoticed.)
        """
        ipr = self._ipr or await self.open()
        try:
            while True:
                try:
                    await self._follow(ipr)
                except OSError as exc:
                    # pyroute2 0.9 re-raises the recv error as OSError(ENOBUFS).
                    if exc.errno != errno.ENOBUFS:
                        raise
                    log.warning("neighbour events lost (%s): resubscribing, and "
                                "invalidating the cached next hops", exc)
                    self.close()
                    ipr = await self.open()
                    self._signal(1)
        finally:
            self.close()

    async def _follow(self, ipr: AsyncIPRoute) -> None:
        while True:
            # get() with no sequence number yields the events of one datagram.
            changed = 0
            async for msg in ipr.get():
                if self._relevant(msg):
                    changed += 1
            if changed:
                self._signal(changed)

    def _relevant(self, msg: Any) -> bool:
        msg_type = msg["header"]["type"]
        if msg_type not in (_RTM_NEWNEIGH, _RTM_DELNEIGH) or msg["family"] != socket.AF_INET:
            return False
        ifindex = msg["ifindex"]
        if self.ifindexes is not None and ifindex not in self.ifindexes:
            return False
        key = (ifindex, msg.get_attr("NDA_DST"))
        mac = msg.get_attr("NDA_LLADDR")
        before = self._known.get(key)
        if msg_type == _RTM_DELNEIGH or msg["state"] & _NUD_FAILED:
            self._known.pop(key, None)
            return before is not None
        self._known[key] = mac
        return before is not None and mac is not None and mac != before

    def _signal(self, changed: int) -> None:
        self.changes += changed
        try:
            self.on_change()
        finally:
            # Wake every wait_changes; later waiters wait on a fresh event.
            self._signalled.set()
            self._signalled = asyncio.Event()

    async def wait_changes(self, since: int, timeout: float) -> int:
        """Wait up to ``timeout`` s for ``changes`` to pass ``since``; returns by how much.

        0 when none came in time. Take ``since = watcher.changes`` before
        provoking a change, so that a change handled before this is awaited
        still counts.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.changes <= since:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._signalled.wait(), remaining)
            except TimeoutError:
                break
        return self.changes - since

    async def start(self) -> None:
        """``open`` (errors raise here), then follow events on a task until ``stop``."""
        await self.open()
        self._task = asyncio.create_task(self.run(), name="neighbour-watcher")
        self._task.add_done_callback(_log_end)

    async def stop(self) -> None:
        """Cancel the following task and close the socket."""
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        finally:
            self.close()

    def close(self) -> None:
        ipr, self._ipr = self._ipr, None
        if ipr is not None:
            ipr.close()

    async def __aenter__(self) -> NeighbourWatcher:  # noqa: PYI034
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _ifindex(ipr: AsyncIPRoute, ifname: str, netns: str | None) -> int:
    found = await ipr.link_lookup(ifname=ifname)
    if not found:
        raise netlink.NetlinkSetupError(f"no interface {ifname!r} in netns {netns or '(current)'}")
    return int(found[0])


def _log_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("neighbour watcher stopped; cached next hops are no longer invalidated",
                  exc_info=task.exception())
