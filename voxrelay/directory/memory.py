# SPDX-License-Identifier: Apache-2.0
"""The embedded directory: an in-process store for a one-host deployment.

The orchestrator owns it and serves it to transceivers over HTTP
(voxrelay/directory/http.py); a standalone lab transceiver
(``transceiver run --directory memory``) and the tests hold one in their
own process (``connect("memory")``). Records do not survive a restart, which
is fine: transceivers re-announce on their next heartbeat (they get "unknown
transceiver" and announce again), and the pinned BPF maps keep forwarding in
the meantime because the sync never deletes on a directory it has not read.
The operator's intents do survive it when the store has an ``intents_path``
(the orchestrator gives it ``[orchestrator] state_dir``/intents.json): they
are written there, atomically, before the change is acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from voxrelay.token import new_key

from .base import (
    Change,
    Directory,
    Snapshot,
    UnknownTransceiver,
    effective,
    is_live,
    validate_intent,
)
from .records import (
    Keyring,
    TransceiverRecord,
    validate_self_status,
    validate_session_id,
    validate_session_ttl,
    validate_transceiver_id,
)


def read_intents(path: Path) -> dict[int, str]:
    """The intents file, or {} if there is none yet; a file that does not
    parse is an error (starting with no intents would undo every drain)."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"intents file {path} cannot be read: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("intents"), dict):
        raise ValueError(f'intents file {path} must hold {{"intents": {{"<id>": "draining"}}}}')
    intents: dict[int, str] = {}
    for key, value in raw["intents"].items():
        try:
            txr_id = validate_transceiver_id(int(key))
            intent = validate_intent(value)
        except ValueError as exc:
            raise ValueError(f"intents file {path}: {exc}") from None
        if intent is not None:
            intents[txr_id] = intent
    return intents


def write_intents(path: Path, intents: dict[int, str]) -> None:
    """Replace the intents file atomically (write, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = json.dumps({"intents": {str(k): v for k, v in sorted(intents.items())}}, indent=1)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(body + "\n")
            out.flush()
            os.fsync(out.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Feed:
    """One follower's queue of change hints. Registered in the store's set of
    feeds at creation, so no change made after ``follow()`` returns can be
    missed; ``aclose`` takes it out again."""

    def __init__(self, feeds: set[_Feed], poll: float) -> None:
        self._feeds = feeds
        self._poll = poll
        self.queue: asyncio.Queue[Change] = asyncio.Queue(maxsize=10_000)
        feeds.add(self)

    def __aiter__(self) -> AsyncIterator[Change | None]:
        return self

    async def __anext__(self) -> Change | None:
        try:
            return await asyncio.wait_for(self.queue.get(), self._poll)
        except TimeoutError:
            return None

    async def aclose(self) -> None:
        self._feeds.discard(self)


class MemoryDirectory(Directory):
    def __init__(self, *, grace: float = 10.0, clock: Callable[[], float] = time.time,
                 intents_path: Path | None = None) -> None:
        self.grace = grace
        self._clock = clock
        self._intents_path = intents_path
        self._intents = read_intents(intents_path) if intents_path is not None else {}
        self._transceivers: dict[int, TransceiverRecord] = {}
        self._keyring = Keyring()
        self._sessions: dict[str, tuple[float, dict[str, Any]]] = {}
        self._feeds: set[_Feed] = set()

    def _notify(self, change: Change) -> None:
        for feed in list(self._feeds):
            # A follower this far behind resyncs on its next poll anyway.
            with contextlib.suppress(asyncio.QueueFull):
                feed.queue.put_nowait(change)

    def _live(self, txr_id: int) -> TransceiverRecord:
        record = self._transceivers.get(validate_transceiver_id(txr_id))
        if record is None or not is_live(record, self._clock(), self.grace):
            raise UnknownTransceiver(txr_id)
        return record

    def _effective(self, record: TransceiverRecord) -> TransceiverRecord:
        return effective(record, self._intents.get(record.id))

    async def announce(self, record: TransceiverRecord) -> TransceiverRecord:
        validate_self_status(record.status)
        now = self._clock()
        stored = record.with_(last_heartbeat=now, announced_at=now)
        self._transceivers[stored.id] = stored
        self._notify(Change("transceiver", stored.id))
        return self._effective(stored)

    async def heartbeat(self, txr_id: int, load: int = 0) -> TransceiverRecord:
        stored = self._live(txr_id).with_(load=load, last_heartbeat=self._clock())
        self._transceivers[stored.id] = stored
        return self._effective(stored)

    async def set_status(self, txr_id: int, status: str) -> TransceiverRecord:
        validate_self_status(status)
        stored = self._live(txr_id).with_(status=status)
        self._transceivers[stored.id] = stored
        self._notify(Change("transceiver", stored.id))
        return self._effective(stored)

    async def set_intent(self, txr_id: int, intent: str | None) -> None:
        validate_transceiver_id(txr_id)
        validate_intent(intent)
        intents = dict(self._intents)
        if intent is None:
            intents.pop(txr_id, None)
        else:
            intents[txr_id] = intent
        if self._intents_path is not None:
            # On disk before in memory: an intent that was acknowledged is never lost.
            await asyncio.to_thread(write_intents, self._intents_path, intents)
        self._intents = intents
        self._notify(Change("transceiver", txr_id))

    async def intents(self) -> dict[int, str]:
        return dict(self._intents)

    async def remove(self, txr_id: int) -> bool:
        existed = self._transceivers.pop(validate_transceiver_id(txr_id), None) is not None
        self._notify(Change("transceiver", txr_id))
        return existed

    async def get_transceiver(self, txr_id: int) -> TransceiverRecord | None:
        try:
            record = self._effective(self._live(txr_id))
        except UnknownTransceiver:
            return None
        return None if record.status == "removed" else record

    async def keyring(self) -> Keyring:
        return self._keyring

    async def rotate_keys(self) -> Keyring:
        self._keyring = self._keyring.rotated(new_key())
        self._notify(Change("keys"))
        return self._keyring

    async def ensure_keyring(self) -> Keyring:
        if self._keyring.current is None:
            return await self.rotate_keys()
        return self._keyring

    def restore_keyring(self, ring: Keyring) -> None:
        """Seed an empty store (after an orchestrator restart) with the keys
        the maps still hold, so that live tokens stay valid."""
        if self._keyring.current is None:
            self._keyring = ring

    async def put_session(self, session_id: str, data: dict[str, Any], ttl: float) -> None:
        validate_session_id(session_id)
        validate_session_ttl(ttl)
        self._sessions[session_id] = (time.monotonic() + ttl, copy.deepcopy(data))
        self._expire_sessions()

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        entry = self._sessions.get(validate_session_id(session_id))
        if entry is None or entry[0] < time.monotonic():
            return None
        return copy.deepcopy(entry[1])

    async def delete_session(self, session_id: str) -> bool:
        return self._sessions.pop(validate_session_id(session_id), None) is not None

    def session_ids(self) -> set[str]:
        """The ids of the sessions held now (what a test or an operator looks at)."""
        self._expire_sessions()
        return set(self._sessions)

    def _expire_sessions(self) -> None:
        now = time.monotonic()
        for sid in [s for s, (exp, _) in self._sessions.items() if exp < now]:
            del self._sessions[sid]

    async def snapshot(self) -> Snapshot:
        now = self._clock()
        for txr_id in [t for t, r in self._transceivers.items() if not is_live(r, now, self.grace)]:
            # Forget the expired, so that a later heartbeat must announce again.
            del self._transceivers[txr_id]
        self._expire_sessions()
        records = (self._effective(r) for r in self._transceivers.values())
        live = {r.id: r for r in records if r.status != "removed"}
        return Snapshot(transceivers=live, keyring=self._keyring)

    async def follow(self, poll: float) -> _Feed:
        return _Feed(self._feeds, poll)

    async def close(self) -> None:
        """Nothing to release: the store lives in this process, and a closed
        one keeps its records for whoever still holds it."""
