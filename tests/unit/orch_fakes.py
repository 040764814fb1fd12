# SPDX-License-Identifier: Apache-2.0
"""In-memory stand-ins for the relay's maps (pure tests of sync, CLI, metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterable

from orchestrator.service import Running, run_orchestrator
from orchestrator.sync import MapTransceiver
from voxrelay.config import Config


class FakeRelayMaps:
    """Implements orchestrator.sync.SyncMaps; records every write."""

    def __init__(self) -> None:
        self.txrs: dict[int, MapTransceiver] = {}
        self.key_slots: dict[int, bytes] = {}
        self.writes: list[tuple[str, object]] = []
        self.fail_writes = False

    def transceivers(self) -> dict[int, MapTransceiver]:
        return dict(self.txrs)

    def upsert_transceivers(self, entries: dict[int, MapTransceiver]) -> None:
        if self.fail_writes:
            raise OSError("map write refused")
        self.writes.append(("upsert", dict(entries)))
        self.txrs.update(entries)

    def delete_transceivers(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        self.writes.append(("delete", ids))
        for i in ids:
            self.txrs.pop(i, None)

    def keys(self) -> dict[int, bytes]:
        return dict(self.key_slots)

    def set_keys(self, keys: dict[int, bytes]) -> None:
        self.writes.append(("set_keys", dict(keys)))
        self.key_slots.update(keys)

    def retire_keys(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        self.writes.append(("retire_keys", ids))
        for i in ids:
            self.key_slots.pop(i, None)


class FakeRelayView(FakeRelayMaps):
    """Implements orchestrator.relay.RelayView in memory."""

    def __init__(self, name: str = "test") -> None:
        super().__init__()
        self.name = name
        self.counters: dict[str, int] = {"rx_total": 0}
        self.flow_rows: list = []
        self.capacity = 1024
        self.flow_count_calls = 0

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    def flows(self) -> list:
        return list(self.flow_rows)

    def flow_count(self) -> int:
        self.flow_count_calls += 1
        return len(self.flow_rows)

    def flow_capacity(self) -> int:
        return self.capacity


@contextlib.asynccontextmanager
async def embedded_orchestrator(view: FakeRelayView, **orchestrator: object) -> AsyncIterator[Running]:
    """``voxrelay orchestrator run`` over ``view`` with its embedded directory and
    /metrics on free loopback ports (``orchestrator`` sets [orchestrator]
    fields); stopped, and awaited, on the way out."""
    config = Config()
    config.orchestrator.listen = "127.0.0.1:0"
    config.orchestrator.metrics_listen = "127.0.0.1:0"
    state = tempfile.TemporaryDirectory(prefix="voxrelay-orch-")
    config.orchestrator.state_dir = state.name
    for name, value in orchestrator.items():
        setattr(config.orchestrator, name, value)
    stop = asyncio.Event()
    ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_orchestrator(config, view, stop, poll=0.05,
                                                on_ready=ready.set_result))
    try:
        yield await asyncio.wait_for(ready, 5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        state.cleanup()
