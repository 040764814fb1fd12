# SPDX-License-Identifier: Apache-2.0
"""The transceiver's own session store: call records with a TTL.

The store is the fast local truth; the directory holds the same records for
whatever outlives this process (another transceiver or the orchestrator can
see which calls were here). Records are refreshed while the call lives.
"""

from __future__ import annotations

import time

from voxrelay.directory import SessionRecord


class SessionStore:
    def __init__(self, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError(f"session ttl must be positive, got {ttl}")
        self.ttl = ttl
        self._records: dict[str, tuple[float, SessionRecord]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def put(self, record: SessionRecord, expires: float) -> None:
        """Keep ``record`` until ``expires`` (Unix seconds)."""
        self._records[record.call_id] = (expires, record)

    def get(self, call_id: str, now: float | None = None) -> SessionRecord | None:
        entry = self._records.get(call_id)
        if entry is None:
            return None
        if entry[0] < (time.time() if now is None else now):
            del self._records[call_id]
            return None
        return entry[1]

    def delete(self, call_id: str) -> None:
        self._records.pop(call_id, None)

    def expire(self, now: float | None = None) -> list[str]:
        """Drop expired records; return their call ids."""
        current = time.time() if now is None else now
        gone = [cid for cid, (expires, _) in self._records.items() if expires < current]
        for cid in gone:
            del self._records[cid]
        return gone
