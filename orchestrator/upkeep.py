# SPDX-License-Identifier: Apache-2.0
"""What keeps a loaded relay right besides its routing maps: next hops and the clock.

``BpfRelayUpkeep`` is the ``service.Upkeep`` of a real relay (the tests give
the service a fake).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from pyroute2 import NetlinkError

from orchestrator import loader, neighbours, netlink
from orchestrator.bccview import BpfRelayView
from orchestrator.relay import RelayUnavailable

log = logging.getLogger(__name__)


class BpfRelayUpkeep:
    """What keeps a loaded relay right besides its routing maps (``service.Upkeep``).

    - next hops: ``bpf_fib_lookup`` never starts ARP, so every transceiver
      address written to the maps gets ``neighbours.prime_neighbour``, and
      every ``prime`` also primes the public interface's gateways (the first
      of the load state's interfaces), which nothing else would; and a
      ``neighbours.NeighbourWatcher`` on the relay's interfaces bumps
      ``config.nh_generation`` when a neighbour changes or goes, which
      invalidates the next hops cached in flows;
    - the clock: ``config.clock_offset_ns`` (token expiry) is rewritten on
      ``refresh_clock``, so that expiry follows NTP's corrections.

    The netns and interfaces come from the relay's load state, so that an
    orchestrator outside the relay's namespace (the tests, or a host that
    loads the relay into one) watches the right neighbour table.
    The watcher is a task on the service's event loop (``start``/``stop``);
    it and ``refresh_clock`` (on whatever thread its caller is) both
    read-modify-write ``config[0]``, so one lock orders them.
    """

    def __init__(self, view: BpfRelayView) -> None:
        # pyroute2's synchronous IPRoute refuses to run on a thread with a
        # running event loop, and the service calls in from its loop: priming
        # runs on this one worker thread instead. And the namespace is entered
        # with netlink.run_in_netns (setns on a thread), not pyroute2's netns=
        # (which forks a child per socket: a fork of an asyncio process shares
        # its signal wakeup fd, and stopped the service).
        self._netlink = ThreadPoolExecutor(1, thread_name_prefix="relay-upkeep")

        self.view = view
        where = loader.placement(view.name)
        self.netns, self.ifnames = where if where is not None else (None, ())
        self._lock = threading.Lock()
        self._watcher: neighbours.NeighbourWatcher | None = None
        self.bumps = 0

    async def start(self) -> None:
        """Start the neighbour watcher's task; RelayUnavailable if it cannot subscribe."""
        watcher = neighbours.NeighbourWatcher(
            self._on_neighbour_change, netns=self.netns, ifnames=self.ifnames or None)
        try:
            await watcher.start()
        except (OSError, ValueError, RuntimeError, NetlinkError) as exc:
            raise RelayUnavailable(
                f"cannot watch the neighbours of relay {self.view.name!r} "
                f"(netns {self.netns or 'this one'}): {exc}"
            ) from None
        self._watcher = watcher

    async def stop(self) -> None:
        """Cancel the watcher's task (the service calls this in its ``finally``)."""
        watcher, self._watcher = self._watcher, None
        try:
            if watcher is not None:
                await watcher.stop()
        finally:
            self._netlink.shutdown(wait=True, cancel_futures=True)

    def _on_neighbour_change(self) -> None:
        with self._lock:
            self.view.maps.bump_nh_generation()
            self.bumps += 1
        log.info("neighbour changed: cached next hops invalidated")

    def prime(self, addresses: Iterable[str]) -> None:
        """Queue resolution of each address and of the public side's gateways
        (returns at once; failures are logged)."""
        for address in list(addresses):
            self._netlink.submit(self._prime_one, address)
        if self.ifnames:
            self._netlink.submit(self._prime_gateways, self.ifnames[0])

    def _prime_gateways(self, ifname: str) -> None:
        try:
            netlink.run_in_netns(self.netns, neighbours.prime_gateways, ifname)
        except Exception as exc:  # noqa: BLE001 - a missing route must not stop the sync
            log.warning("cannot resolve the gateways of %s: %s", ifname, exc)

    def _prime_one(self, address: str) -> None:
        try:
            netlink.run_in_netns(self.netns, neighbours.prime_neighbour, address)
        except Exception as exc:  # noqa: BLE001 - a missing route must not stop the sync
            log.warning("cannot resolve the next hop to transceiver %s: %s", address, exc)

    def refresh_clock(self) -> int | None:
        with self._lock:
            return self.view.maps.set_clock_offset()
