# SPDX-License-Identifier: Apache-2.0
"""Map sync against both directory backends (Redis real), with in-memory maps."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.sync import (
    DesiredState,
    MapTransceiver,
    Syncer,
    compute_delta,
)
from tests.support import until_async
from tests.unit.orch_fakes import FakeRelayMaps
from voxrelay.directory import DirectoryUnavailable, TransceiverRecord, UnknownTransceiver
from voxrelay.directory.memory import MemoryDirectory
from voxrelay.directory.redis import RedisDirectory


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_delta_writes_only_the_difference():
    desired = DesiredState(
        transceivers={1: MapTransceiver("10.0.0.1", "active"), 2: MapTransceiver("10.0.0.2", "draining")},
        keys={5: b"k" * 16},
    )
    actual = {1: MapTransceiver("10.0.0.1", "active"), 2: MapTransceiver("10.0.0.2", "active"),
              3: MapTransceiver("10.0.0.3", "active")}
    delta = compute_delta(desired, actual, {4: b"o" * 16, 5: b"k" * 16})
    assert delta.upsert_transceivers == {2: MapTransceiver("10.0.0.2", "draining")}
    assert delta.delete_transceivers == (3,)
    assert delta.set_keys == {}
    assert delta.retire_keys == (4,)
    assert not compute_delta(desired, {**actual, 2: desired.transceivers[2]} | {}, {5: b"k" * 16},
                             allow_deletes=False)


def test_empty_keyring_never_retires_map_keys():
    delta = compute_delta(DesiredState(), {}, {1: b"k" * 16})
    assert delta.retire_keys == () and not delta


@pytest.fixture(params=["memory", "redis"])
def directory_factory(request, tmp_path):
    """Returns make(clock) -> Directory, and the redis server (or None);
    each test closes the directories it made."""
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None

    def make(clock, grace=10.0):
        if server is None:
            d = MemoryDirectory(grace=grace, clock=clock)
        else:
            d = RedisDirectory(server.url, grace=grace, clock=clock, prefix="t:")
        return d

    return make, server


async def test_add_drain_remove_expire(directory_factory):
    make, _ = directory_factory
    clock = Clock()
    directory = make(clock, grace=10.0)
    maps = FakeRelayMaps()
    lags = []
    sync = Syncer(directory, maps, hold=0.0, on_lag=lags.append, clock=clock)
    await directory.ensure_keyring()
    await directory.announce(TransceiverRecord(1, "10.0.1.1", 3479))
    await directory.announce(TransceiverRecord(2, "10.0.1.2", 3479))
    clock.now += 0.25
    await sync.reconcile()
    assert maps.txrs == {1: MapTransceiver("10.0.1.1", "active"), 2: MapTransceiver("10.0.1.2", "active")}
    assert lags == [0.25, 0.25]
    assert len(maps.key_slots) == 1

    # Nothing changed: nothing written.
    writes = len(maps.writes)
    await sync.reconcile()
    assert len(maps.writes) == writes

    await directory.drain(2)
    await sync.reconcile()
    assert maps.txrs[2] == MapTransceiver("10.0.1.2", "draining")
    await directory.undrain(2)
    await sync.reconcile()
    assert maps.txrs[2].status == "active"

    assert await directory.remove(1) is True
    await sync.reconcile()
    assert set(maps.txrs) == {2}

    # 2 stops heartbeating; 3 keeps going.
    await directory.announce(TransceiverRecord(3, "10.0.1.3", 3479))
    clock.now += 6
    await directory.heartbeat(3, load=4)
    clock.now += 6
    await sync.reconcile()
    assert set(maps.txrs) == {3}
    with pytest.raises(UnknownTransceiver):
        await directory.heartbeat(2)
    await directory.close()


async def test_keys_rotate_into_the_map(directory_factory):
    make, _ = directory_factory
    directory = make(Clock())
    maps = FakeRelayMaps()
    sync = Syncer(directory, maps, hold=0.0)
    first = await directory.ensure_keyring()
    assert await directory.ensure_keyring() == first  # idempotent
    await sync.reconcile()
    assert maps.key_slots == first.active_keys()
    second = await directory.rotate_keys()
    await sync.reconcile()
    assert maps.key_slots == second.active_keys() and len(maps.key_slots) == 2
    third = await directory.rotate_keys()
    await sync.reconcile()
    assert maps.key_slots == third.active_keys()
    assert first.current not in maps.key_slots
    await directory.close()


async def test_follower_applies_changes_as_they_arrive(directory_factory):
    make, _ = directory_factory
    directory = make(Clock())
    maps = FakeRelayMaps()
    sync = Syncer(directory, maps, poll=0.05, hold=0.0)
    stop = asyncio.Event()
    task = asyncio.create_task(sync.run(stop))
    try:
        await until_async(lambda: sync.in_sync)
        await directory.announce(TransceiverRecord(9, "10.0.1.9", 3479))
        await until_async(lambda: 9 in maps.txrs)
        await directory.drain(9)
        await until_async(lambda: maps.txrs[9].status == "draining")
        ring = await directory.rotate_keys()
        await until_async(lambda: maps.key_slots == ring.active_keys())
        await directory.remove(9)
        await until_async(lambda: 9 not in maps.txrs)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await directory.close()


async def test_hold_keeps_missing_transceivers_after_connect():
    """An embedded directory that restarted empty must not wipe the map."""
    directory = MemoryDirectory()
    maps = FakeRelayMaps()
    maps.txrs[5] = MapTransceiver("10.0.1.5", "active")
    sync = Syncer(directory, maps, poll=0.05, hold=0.3)
    stop = asyncio.Event()
    task = asyncio.create_task(sync.run(stop))
    try:
        await until_async(lambda: sync.in_sync)
        assert 5 in maps.txrs
        await until_async(lambda: 5 not in maps.txrs)  # after the hold
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_redis_restart_keeps_maps_then_resyncs(redis_server):
    directory = RedisDirectory(redis_server.url, prefix="t:", timeout=0.5)
    maps = FakeRelayMaps()
    sync = Syncer(directory, maps, poll=0.05, hold=0.0, backoff_min=0.05, backoff_max=0.2)
    stop = asyncio.Event()
    await directory.ensure_keyring()
    await directory.announce(TransceiverRecord(1, "10.0.1.1", 3479))
    task = asyncio.create_task(sync.run(stop))
    try:
        await until_async(lambda: 1 in maps.txrs and sync.in_sync)
        before = (maps.transceivers(), maps.keys())
        redis_server.stop()
        await until_async(lambda: not sync.connected)
        assert not sync.in_sync
        assert (maps.transceivers(), maps.keys()) == before  # outage changes nothing
        with pytest.raises(DirectoryUnavailable):
            await directory.announce(TransceiverRecord(2, "10.0.1.2", 3479))
        redis_server.start()  # append-only file: the data is back
        await until_async(lambda: sync.connected and sync.in_sync)
        assert (maps.transceivers(), maps.keys()) == before
        await directory.announce(TransceiverRecord(2, "10.0.1.2", 3479))
        await until_async(lambda: 2 in maps.txrs)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await directory.close()


async def test_late_relay_resyncs_then_follows(redis_server):
    writer = RedisDirectory(redis_server.url, prefix="t:")
    for i in range(1, 6):
        await writer.announce(TransceiverRecord(i, f"10.0.1.{i}", 3479))
    late = RedisDirectory(redis_server.url, prefix="t:")
    maps = FakeRelayMaps()
    sync = Syncer(late, maps, poll=0.05, hold=0.0)
    stop = asyncio.Event()
    task = asyncio.create_task(sync.run(stop))
    try:
        await until_async(lambda: set(maps.txrs) == {1, 2, 3, 4, 5})
        await writer.drain(3)
        await until_async(lambda: maps.txrs[3].status == "draining")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await writer.close()
        await late.close()


async def test_bad_record_in_redis_never_reaches_a_map(redis_server):
    directory = RedisDirectory(redis_server.url, prefix="t:")
    await directory.announce(TransceiverRecord(1, "10.0.1.1", 3479))
    await directory._redis.set("t:txr:2", '{"id": 2, "address": "10.0.1", "probe_port": 1}')
    maps = FakeRelayMaps()
    await Syncer(directory, maps, hold=0.0).reconcile()
    assert set(maps.txrs) == {1}
    await directory.close()
