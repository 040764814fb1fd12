# SPDX-License-Identifier: Apache-2.0
"""Keep the relay's BPF maps equal to what the directory says.

Desired state is a pair of typed dicts (transceivers, active keys) built from
a directory snapshot; actual state is read from the pinned maps. The delta
between them is all that is written (katran's ``batchRealsUpdate`` is the
model), and every write is confirmed by reading it back.

Rules that keep calls alive:

- The maps are never cleared. A directory outage leaves them as they are;
  the follower reconnects with capped exponential backoff and resyncs.
- After every (re)connect, transceivers missing from the directory are kept
  for ``hold`` seconds before they are deleted: an embedded directory that
  restarted empty, or a Redis that lost its data, gets time to hear the
  transceivers re-announce instead of cutting their new calls off.
- An explicit removal (a change hint for an id that is now absent) applies at
  once. Expiry (no heartbeat for the directory's grace) is noticed by the
  periodic full reconcile.
- A keyring with no active key never retires the map's keys.
- A draining transceiver stays in the map with status DRAINING: the XDP
  program refuses it new flows and keeps forwarding its existing ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from voxrelay.directory.base import Change, Directory, DirectoryUnavailable, Snapshot
from voxrelay.directory.records import Keyring, TransceiverRecord
from voxrelay.token import MAX_KEY_ID

log = logging.getLogger(__name__)


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds``, or less if ``stop`` is set meanwhile; True when it was."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


@dataclass(frozen=True)
class MapTransceiver:
    """A ``transceivers`` map value as the orchestrator writes it."""

    address: str
    status: str  # "active" | "draining"

    @classmethod
    def from_record(cls, record: TransceiverRecord) -> MapTransceiver:
        return cls(record.address, record.status)


@dataclass(frozen=True)
class DesiredState:
    transceivers: dict[int, MapTransceiver] = field(default_factory=dict)
    keys: dict[int, bytes] = field(default_factory=dict)
    """Active key slots; empty means "the directory has no keys: leave the map's alone"."""


@dataclass(frozen=True)
class Delta:
    upsert_transceivers: dict[int, MapTransceiver] = field(default_factory=dict)
    delete_transceivers: tuple[int, ...] = ()
    set_keys: dict[int, bytes] = field(default_factory=dict)
    retire_keys: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.upsert_transceivers or self.delete_transceivers
                    or self.set_keys or self.retire_keys)


class SyncMaps(Protocol):
    """The map operations the sync needs (orchestrator/bccview.py adapts
    the real pinned maps; tests use an in-memory fake)."""

    def transceivers(self) -> dict[int, MapTransceiver]: ...

    def upsert_transceivers(self, entries: dict[int, MapTransceiver]) -> None: ...

    def delete_transceivers(self, ids: Iterable[int]) -> None: ...

    def keys(self) -> dict[int, bytes]: ...

    def set_keys(self, keys: dict[int, bytes]) -> None: ...

    def retire_keys(self, ids: Iterable[int]) -> None: ...


def desired_from_snapshot(snapshot: Snapshot) -> DesiredState:
    return DesiredState(
        transceivers={i: MapTransceiver.from_record(r) for i, r in snapshot.transceivers.items()},
        keys=snapshot.keyring.active_keys(),
    )


def compute_delta(
    desired: DesiredState,
    actual_transceivers: dict[int, MapTransceiver],
    actual_keys: dict[int, bytes],
    *,
    allow_deletes: bool = True,
) -> Delta:
    """What to write so that the maps equal ``desired``. Pure."""
    upsert = {
        i: want for i, want in desired.transceivers.items() if actual_transceivers.get(i) != want
    }
    delete = (
        tuple(sorted(i for i in actual_transceivers if i not in desired.transceivers))
        if allow_deletes
        else ()
    )
    if desired.keys:
        set_keys = {i: k for i, k in desired.keys.items() if actual_keys.get(i) != k}
        retire = tuple(sorted(i for i in actual_keys if i not in desired.keys))
    else:
        set_keys, retire = {}, ()
    return Delta(upsert, delete, set_keys, retire)


def apply_delta(maps: SyncMaps, delta: Delta) -> None:
    """Write ``delta``: new keys before anything that needs them, retired keys
    last, so that no moment exists with no valid key."""
    if delta.set_keys:
        maps.set_keys(delta.set_keys)
    if delta.upsert_transceivers:
        maps.upsert_transceivers(delta.upsert_transceivers)
    if delta.delete_transceivers:
        maps.delete_transceivers(delta.delete_transceivers)
    if delta.retire_keys:
        maps.retire_keys(delta.retire_keys)


def keyring_from_map(active: dict[int, bytes]) -> Keyring:
    """Rebuild a keyring from the map's active slots (an embedded directory
    restarting must keep the keys that live tokens were minted with).

    Rotation allocates ``current + 1`` (mod 256), so of two active ids the
    current one is the one that follows the other."""
    ids = sorted(active)
    if not ids:
        return Keyring()
    if len(ids) == 1:
        current = ids[0]
    else:
        a, b = ids[0], ids[-1]
        current = a if (b + 1) % (MAX_KEY_ID + 1) == a else b
        ids = ids[-2:] if current == b else ids[:2]
    others = [i for i in ids if i != current]
    return Keyring(keys={i: active[i] for i in ids}, active=(*others, current), current=current)


class SyncError(Exception):
    """A write that did not become visible in the map."""


class Syncer:
    """Follows a directory and keeps ``maps`` equal to it."""

    def __init__(
        self,
        directory: Directory,
        maps: SyncMaps,
        *,
        poll: float = 1.0,
        resync_interval: float = 5.0,
        hold: float | None = None,
        backoff_min: float = 0.1,
        backoff_max: float = 5.0,
        on_lag: Callable[[float], None] | None = None,
        ensure_keys: bool = False,
        clock: Callable[[], float] = time.time,
        on_upsert: Callable[[dict[int, MapTransceiver]], None] | None = None,
        on_delete: Callable[[tuple[int, ...]], None] | None = None,
    ) -> None:
        self.directory = directory
        self.maps = maps
        self.poll = poll
        self.resync_interval = resync_interval
        self.hold = directory.grace if hold is None else hold
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._on_lag = on_lag
        self.ensure_keys = ensure_keys
        """Create the first token key on connect if the directory has none."""
        self._clock = clock
        self._on_upsert = on_upsert
        """Called with every transceiver entry written (after it is confirmed):
        the orchestrator starts resolving the next hop to its address."""
        self._on_delete = on_delete
        """Called with the ids of transceivers removed from the map (after it is
        confirmed): the orchestrator stops exporting their probe metrics."""
        self._hold_deletes_until = 0.0
        self._lag_measured: dict[int, float] = {}
        self.connected = False
        """The directory answered the last request."""
        self.in_sync = False
        """The maps reflect the directory as of the last full reconcile."""
        self.reconciles = 0
        self.writes = 0
        self._one_at_a_time = asyncio.Lock()
        """Reconciles and changes never interleave: the follower's and the
        reload watcher's (``service``) both read the maps and write a delta."""

    # --- one-shot operations (also what tests drive) --------------------------
    async def reconcile(self) -> Delta:
        """Full resync: snapshot, delta against the maps, write the delta."""
        async with self._one_at_a_time:
            return await self._reconcile()

    async def _reconcile(self) -> Delta:
        snapshot = await self.directory.snapshot()
        desired = desired_from_snapshot(snapshot)
        if not desired.keys and self.maps.keys():
            log.warning("directory has no active token key; keeping the map's keys")
        delta = compute_delta(
            desired,
            self.maps.transceivers(),
            self.maps.keys(),
            allow_deletes=time.monotonic() >= self._hold_deletes_until,
        )
        self._write(delta)
        self._measure_lag(snapshot.transceivers.values())
        self.reconciles += 1
        return delta

    async def apply_change(self, change: Change) -> Delta:
        async with self._one_at_a_time:
            return await self._apply_change(change)

    async def _apply_change(self, change: Change) -> Delta:
        if change.kind == "keys":
            ring = await self.directory.keyring()
            desired = DesiredState(keys=ring.active_keys())
            delta = compute_delta(desired, {}, self.maps.keys())
            delta = Delta(set_keys=delta.set_keys, retire_keys=delta.retire_keys)
        else:
            record = await self.directory.get_transceiver(change.txr_id)
            actual = {i: t for i, t in self.maps.transceivers().items() if i == change.txr_id}
            if record is None:
                # An explicit removal or drain-then-remove: no hold applies.
                delta = Delta(delete_transceivers=tuple(actual))
            else:
                want = MapTransceiver.from_record(record)
                delta = Delta(
                    upsert_transceivers={} if actual.get(record.id) == want else {record.id: want}
                )
            self._write(delta)
            if record is not None:
                self._measure_lag([record])
            return delta
        self._write(delta)
        return delta

    def _write(self, delta: Delta) -> None:
        if not delta:
            return
        apply_delta(self.maps, delta)
        self.writes += 1
        # Confirm, as pyroute2's ensure() does: the maps must now show it.
        txrs = self.maps.transceivers()
        for txr_id, want in delta.upsert_transceivers.items():
            if txrs.get(txr_id) != want:
                raise SyncError(f"transceiver {txr_id} did not become visible in the map")
        for txr_id in delta.delete_transceivers:
            if txr_id in txrs:
                raise SyncError(f"transceiver {txr_id} is still in the map after delete")
        keys = self.maps.keys()
        for key_id, key in delta.set_keys.items():
            if keys.get(key_id) != key:
                raise SyncError(f"token key {key_id} did not become visible in the map")
        if delta.upsert_transceivers and self._on_upsert is not None:
            self._on_upsert(delta.upsert_transceivers)
        if delta.delete_transceivers and self._on_delete is not None:
            self._on_delete(tuple(delta.delete_transceivers))
        log.info(
            "sync: +%d ~txr, -%d txr, +%d keys, -%d keys",
            len(delta.upsert_transceivers), len(delta.delete_transceivers),
            len(delta.set_keys), len(delta.retire_keys),
        )

    def _measure_lag(self, records: Iterable[TransceiverRecord]) -> None:
        """Announce -> visible in the map, once per announce."""
        now = self._clock()
        for record in records:
            if record.announced_at and self._lag_measured.get(record.id) != record.announced_at:
                self._lag_measured[record.id] = record.announced_at
                if self._on_lag is not None:
                    self._on_lag(max(0.0, now - record.announced_at))

    # --- the long-running follower -------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        backoff = self.backoff_min
        while not stop.is_set():
            feed = None
            try:
                feed = await self.directory.follow(self.poll)
                if self.ensure_keys:
                    await self.directory.ensure_keyring()
                if not self.connected:
                    self._hold_deletes_until = time.monotonic() + self.hold
                await self.reconcile()
                self.connected = self.in_sync = True
                backoff = self.backoff_min
                last_full = time.monotonic()
                async for change in feed:
                    if stop.is_set():
                        break
                    if change is not None:
                        await self.apply_change(change)
                    if change is None or time.monotonic() - last_full >= self.resync_interval:
                        await self.reconcile()
                        last_full = time.monotonic()
            except (DirectoryUnavailable, SyncError, OSError) as exc:
                if isinstance(exc, DirectoryUnavailable):
                    if self.connected:
                        log.warning("directory unavailable, keeping the maps as they are: %s", exc)
                    self.connected = False
                else:
                    # With the traceback: it names the write that failed. The
                    # backoff keeps a lasting failure from flooding the log.
                    log.exception("map write failed, will resync")
                self.in_sync = False
                await sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, self.backoff_max)
            finally:
                if feed is not None:
                    await feed.aclose()
