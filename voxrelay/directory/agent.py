"""What a transceiver runs to stay in the directory: announce, heartbeat,
re-announce when forgotten, keep trying when the directory is down.

    stop = asyncio.Event()
    task = asyncio.create_task(keep_announced(
        connect(config.directory), TransceiverRecord(id=7, address="10.77.0.2", probe_port=3479),
        stop, interval=2.0, load=lambda: len(calls)))
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .base import Directory, DirectoryUnavailable, UnknownTransceiver
from .records import Keyring, TransceiverRecord

log = logging.getLogger(__name__)


async def keep_announced(
    directory: Directory,
    record: TransceiverRecord,
    stop: asyncio.Event,
    *,
    interval: float = 2.0,
    load: Callable[[], int] = lambda: 0,
    on_keyring: Callable[[Keyring], None] | None = None,
    draining: Callable[[], bool] = lambda: False,
) -> None:
    """Heartbeat every ``interval`` seconds (keep it well under the
    directory's grace) until ``stop``; announce (again) whenever the
    directory does not know this transceiver. ``on_keyring`` gets the keyring
    after every beat, so that minting follows rotations."""
    announced = False
    while not stop.is_set():
        try:
            if not announced:
                status = "draining" if draining() else "active"
                await directory.announce(record.with_(status=status, load=load()))
                announced = True
            else:
                try:
                    await directory.heartbeat(record.id, load())
                except UnknownTransceiver:
                    announced = False
                    continue  # announce at once, not after another interval
            if on_keyring is not None:
                on_keyring(await directory.keyring())
        except DirectoryUnavailable as exc:
            log.warning("directory unavailable, will retry: %s", exc)
            announced = False  # it may have lost us (embedded restart)
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
