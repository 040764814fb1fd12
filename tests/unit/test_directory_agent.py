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
