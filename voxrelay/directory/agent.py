# SPDX-License-Identifier: Apache-2.0
"""What a transceiver runs to stay in the directory: announce, heartbeat,
re-announce when forgotten, keep trying when the directory is down.

    stop = asyncio.Event()
    task = asyncio.create_task(keep_announced(
        connect(config.directory), TransceiverRecord(id=7, address="10.77.0.2", probe_port=3479),
        stop, interval=2.0, load=lambda: len(calls), draining=lambda: draining))

This is the one registration loop: the transceiver (transceiver/signaling.py)
runs it, and nothing else heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .base import Directory, DirectoryUnavailable, UnknownTransceiver
from .records import Keyring, TransceiverRecord

log = logging.getLogger(__name__)


async def announce(
    directory: Directory, record: TransceiverRecord, *, load: int = 0, draining: bool = False
) -> TransceiverRecord:
    """Announce ``record`` with its current load, as draining if it is, so that
    a directory that forgot a draining transceiver does not route new calls to
    it when it comes back."""
    status = "draining" if draining else "active"
    return await directory.announce(record.with_(status=status, load=load))


async def keep_announced(
    directory: Directory,
    record: TransceiverRecord,
    stop: asyncio.Event,
    *,
    interval: float = 2.0,
    load: Callable[[], int] = lambda: 0,
    on_keyring: Callable[[Keyring], None] | None = None,
    draining: Callable[[], bool] = lambda: False,
    after_beat: Callable[[], Awaitable[None]] | None = None,
    announced: bool = False,
    on_record: Callable[[TransceiverRecord], None] | None = None,
) -> None:
    """Heartbeat every ``interval`` seconds (keep it well under the
    directory's grace) until ``stop``, with ``load()`` as the load; announce
    (again, as draining if ``draining()``) whenever the directory does not
    know this transceiver. ``on_keyring`` gets the keyring after every beat,
    so that minting follows rotations; ``after_beat`` runs after every beat
    (the transceiver refreshes its session records there). ``announced``:
    the caller has announced already (to fail fast at start-up), so the loop
    begins with a wait and a heartbeat. ``on_record`` gets the record the
    directory answered each announce and heartbeat with: its status carries
    the operator's intent ("draining", "removed"), which is how a transceiver
    learns that it should turn new calls away.

    Nothing but ``stop`` ends the loop: a directory that is down is retried
    (``DirectoryUnavailable`` also means it may have lost us, so the next
    beat announces), and any other failure is logged and retried, because a
    transceiver keeps serving its calls whatever its directory does.
    """
    if announced:
        await _wait(stop, interval)
    while not stop.is_set():
        try:
            if not announced:
                answer = await announce(directory, record, load=load(), draining=draining())
                announced = True
            else:
                try:
                    answer = await directory.heartbeat(record.id, load())
                except UnknownTransceiver:
                    announced = False
                    continue  # announce at once, not after another interval
            if on_record is not None:
                on_record(answer)
            if on_keyring is not None:
                on_keyring(await directory.keyring())
            if after_beat is not None:
                await after_beat()
        except DirectoryUnavailable as exc:
            log.warning("directory unavailable, will retry: %s", exc)
            announced = False  # it may have lost us (embedded restart)
        except Exception as exc:  # noqa: BLE001 - keep serving; the next beat retries
            log.warning("heartbeat failed, will retry: %s", exc)
        await _wait(stop, interval)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
