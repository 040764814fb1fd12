# SPDX-License-Identifier: Apache-2.0
"""keep_announced: a transceiver stays in the directory across its restarts."""

import asyncio

from voxrelay.directory import TransceiverRecord
from voxrelay.directory.agent import keep_announced
from voxrelay.directory.memory import MemoryDirectory


async def test_keep_announced_reannounces_after_the_directory_forgets():
    directory = MemoryDirectory()
    await directory.ensure_keyring()
    rings = []
    stop = asyncio.Event()
    record = TransceiverRecord(7, "10.77.0.2", 3479)
    task = asyncio.create_task(keep_announced(directory, record, stop, interval=0.02,
                                              load=lambda: 5, on_keyring=rings.append))
    try:
        for _ in range(250):
            if await directory.get_transceiver(7) is not None and rings:
                break
            await asyncio.sleep(0.02)
        assert (await directory.get_transceiver(7)).load == 5
        await directory.remove(7)  # e.g. an embedded directory that restarted
        for _ in range(250):
            if await directory.get_transceiver(7) is not None:
                break
            await asyncio.sleep(0.02)
        assert await directory.get_transceiver(7) is not None
        assert rings[-1] == await directory.keyring()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_keep_announced_reannounces_a_draining_transceiver_as_draining():
    """The transceiver's loop: announced already at start-up, load is its call
    count, sessions are refreshed after each beat, and a directory that forgot
    it while it drains learns that it drains."""
    directory = MemoryDirectory()
    record = TransceiverRecord(7, "10.77.0.2", 3479)
    await directory.announce(record)
    calls, draining, beats = [1, 2], [False], []

    async def after_beat():
        beats.append((await directory.get_transceiver(7)).load)

    stop = asyncio.Event()
    task = asyncio.create_task(keep_announced(
        directory, record, stop, interval=0.02, load=lambda: len(calls),
        draining=lambda: draining[0], after_beat=after_beat, announced=True))
    try:
        for _ in range(250):
            if beats:
                break
            await asyncio.sleep(0.02)
        assert beats[0] == 2
        draining[0] = True
        await directory.drain(7)
        await directory.remove(7)
        for _ in range(250):
            if await directory.get_transceiver(7) is not None:
                break
            await asyncio.sleep(0.02)
        again = await directory.get_transceiver(7)
        assert again is not None and again.status == "draining" and again.load == 2
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_keep_announced_survives_a_failing_beat():
    directory = MemoryDirectory()
    record = TransceiverRecord(7, "10.77.0.2", 3479)
    failures = []

    async def after_beat():
        failures.append(1)
        raise RuntimeError("the session refresh failed")

    stop = asyncio.Event()
    task = asyncio.create_task(keep_announced(directory, record, stop, interval=0.02,
                                              after_beat=after_beat))
    try:
        for _ in range(250):
            if len(failures) >= 3:
                break
            await asyncio.sleep(0.02)
        assert len(failures) >= 3 and not task.done()
        assert await directory.get_transceiver(7) is not None
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
