"""``RelayView`` over the real pinned maps of a loaded relay, through bcc.

``open_relay(name)`` reopens ``/sys/fs/bpf/voxrelay/<name>/*`` without
loading or attaching anything: it compiles relay.c with the pin directory
through ``loader.open_maps`` (bcc's BPF_TABLE_PINNED opens each existing pin
instead of creating a map; every pin is checked), with the limits
(-D MAX_FLOWS=...) taken from the pinned maps' own sizes, so that a relay
loaded with other limits reopens too.
Before compiling it checks that every pin exists, so that opening can never
create an empty map beside a relay.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from orchestrator import bpfprog, bpfsys, loader, netlink
from orchestrator.bccmaps import TransceiverStatus
from orchestrator.relay import FlowEntry, RelayUnavailable, require_bpf
from orchestrator.sync import MapTransceiver
from orchestrator.verdicts import metric_label

# Map name -> the consts.h limit that sizes it, so that the reopening compile
# declares each map with the size it was pinned with.
_LIMIT_OF_MAP = {
    "flows": "MAX_FLOWS",
    "transceivers": "MAX_TRANSCEIVERS",
    "keys": "MAX_KEYS",
    "rate": "MAX_RATE_SOURCES",
    "reverse": "MAX_RELAY_PORTS",
    "token_flows": "MAX_TOKENS_TRACKED",
}

log = logging.getLogger(__name__)


class BpfRelayView:
    """Implements ``RelayView`` (and so the sync's ``SyncMaps``) over ``bccmaps.RelayMaps``."""

    def __init__(self, name: str, relay_maps: Any) -> None:
        self.name = name
        self.maps = relay_maps
        self._status = TransceiverStatus

    # --- SyncMaps ---------------------------------------------------------------
    def transceivers(self) -> dict[int, MapTransceiver]:
        return {
            i: MapTransceiver(str(e.addr), e.status.name.lower())
            for i, e in self.maps.transceivers().items()
        }

    def upsert_transceivers(self, entries: dict[int, MapTransceiver]) -> None:
        for txr_id, entry in entries.items():
            self.maps.set_transceiver(txr_id, entry.address, self._status[entry.status.upper()])

    def delete_transceivers(self, ids: Iterable[int]) -> None:
        for txr_id in ids:
            self.maps.delete_transceiver(txr_id)

    def keys(self) -> dict[int, bytes]:
        # maps.active_keys() gives ids only (by design, for display); the sync
        # compares key material, so it reads the slots itself.
        table = self.maps.table("keys")
        return {
            int(k.value): int(v.k0).to_bytes(8, "little") + int(v.k1).to_bytes(8, "little")
            for k, v in table.items()
            if v.active
        }

    def set_keys(self, keys: dict[int, bytes]) -> None:
        for key_id, key in keys.items():
            self.maps.set_key(key_id, key)

    def retire_keys(self, ids: Iterable[int]) -> None:
        for key_id in ids:
            self.maps.retire_key(key_id)

    # --- RelayView --------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        return {metric_label(name): value for name, value in self.maps.stats().items()}

    def flows(self) -> list[FlowEntry]:
        now_ns = time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC
        return [
            FlowEntry(
                client=f"{f.client_addr}:{f.client_port}",
                transceiver_id=f.transceiver_id,
                transceiver=f"{f.transceiver_addr}:{f.transceiver_port}",
                relay_port=f.relay_port,
                age_s=max(0, now_ns - f.created_ns) / 1e9,
                idle_s=max(0, now_ns - f.last_seen_ns) / 1e9,
            )
            for f in self.maps.flows()
        ]

    def flow_count(self) -> int:
        return sum(1 for _ in self.maps.table("flows"))  # iterating a bcc table walks its keys

    def flow_capacity(self) -> int:
        return int(self.maps.table("flows").max_entries)

    def close(self) -> None:
        """Close the map fds (the pins, and so the maps, stay)."""
        bpf = getattr(self.maps.table("config"), "bpf", None)
        if bpf is not None:
            bpf.cleanup()


class BpfRelayUpkeep:
    """What keeps a loaded relay right besides its routing maps (``service.Upkeep``).

    - next hops: ``bpf_fib_lookup`` never starts ARP, so every transceiver
      address written to the maps gets ``loader.prime_neighbour``; and a
      ``loader.NeighbourWatcher`` on the relay's interfaces bumps
      ``config.nh_generation`` when a neighbour changes or goes, which
      invalidates the next hops cached in flows;
    - the clock: ``config.clock_offset_ns`` (token expiry) is rewritten on
      ``refresh_clock``, so that expiry follows NTP's corrections.

    The netns and interfaces come from the relay's load state, so that an
    orchestrator outside the relay's namespace (the tests, or a host that
    loads the relay into one) watches the right neighbour table.
    The watcher thread and the service both write ``config[0]``
    (read-modify-write), so one lock orders them.
    """

    def __init__(self, view: BpfRelayView) -> None:
        # pyroute2's synchronous IPRoute refuses to run on a thread with a
        # running event loop, and the service calls in from its loop: every
        # netlink operation runs on this one worker thread instead. And the
        # namespace is entered with netlink.run_in_netns (setns on a thread),
        # not pyroute2's netns= (which forks a child per socket: a fork of an
        # asyncio process shares its signal wakeup fd, and stopped the service).
        self._netlink = ThreadPoolExecutor(1, thread_name_prefix="relay-upkeep")

        self.view = view
        where = loader.placement(view.name)
        self.netns, self.ifnames = where if where is not None else (None, ())
        self._lock = threading.Lock()
        self._bump = loader.bump_nh_generation(view.name, relay_maps=view.maps)
        self._watcher: Any = None
        self.bumps = 0

    def start(self) -> None:
        try:
            self._watcher = self._netlink.submit(
                netlink.run_in_netns, self.netns, loader.NeighbourWatcher,
                self._on_neighbour_change, ifnames=self.ifnames or None,
            ).result()
        except (OSError, ValueError, RuntimeError) as exc:
            raise RelayUnavailable(
                f"cannot watch the neighbours of relay {self.view.name!r} "
                f"(netns {self.netns or 'this one'}): {exc}"
            ) from None
        self._watcher.start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self._netlink.shutdown(wait=True, cancel_futures=True)

    def _on_neighbour_change(self) -> None:
        with self._lock:
            self._bump()
            self.bumps += 1
        log.info("neighbour changed: cached next hops invalidated")

    def prime(self, addresses: Iterable[str]) -> None:
        """Queue resolution of each address (returns at once; failures are logged)."""
        for address in list(addresses):
            self._netlink.submit(self._prime_one, address)

    def _prime_one(self, address: str) -> None:
        try:
            netlink.run_in_netns(self.netns, loader.prime_neighbour, address)
        except Exception as exc:  # noqa: BLE001 - a missing route must not stop the sync
            log.warning("cannot resolve the next hop to transceiver %s: %s", address, exc)

    def refresh_clock(self) -> int | None:
        with self._lock:
            return self.view.maps.set_clock_offset()  # type: ignore[no-any-return]


def open_relay(name: str) -> BpfRelayView:
    """The pinned maps of relay ``name`` (needs root, bcc, and a loaded relay)."""
    require_bpf("reading the relay's BPF maps")
    try:
        pin_dir = bpfprog.pin_dir_for(name)
    except ValueError as exc:
        raise RelayUnavailable(str(exc)) from None
    missing = [m for m in bpfprog.MAP_NAMES if not (pin_dir / m).exists()]
    if missing:
        what = "nothing" if len(missing) == len(bpfprog.MAP_NAMES) else f"no {', '.join(missing)}"
        raise RelayUnavailable(
            f"no relay {name!r} is loaded ({what} pinned under {pin_dir}): "
            f"run `voxrelay relay load` first"
        )
    limits: dict[str, int] = {}
    known = bpfprog.tunable_limits()
    for map_name, limit in _LIMIT_OF_MAP.items():
        if limit not in known:
            continue
        fd = bpfsys.obj_get(str(pin_dir / map_name))
        try:
            limits[limit] = bpfsys.map_info(fd).max_entries
        finally:
            bpfsys.close(fd)
    try:
        relay_maps = loader.open_maps(name, limits=limits)
    except loader.LoaderError as exc:
        raise RelayUnavailable(f"relay {name!r}: {exc}") from None
    return BpfRelayView(name, relay_maps)
