# SPDX-License-Identifier: Apache-2.0
"""In-memory stand-ins for the relay's maps (pure tests of sync, CLI, metrics)."""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator.sync import MapTransceiver


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
