"""What the transceiver needs from the directory, and an in-memory one.

The orchestrator owns the directory (embedded HTTP or Redis) and the routing
token keys. The transceiver only needs the small surface below; any object
with these coroutines plugs in (``voxrelay.directory`` provides the real
clients). ``MemoryDirectory`` is the one-process implementation used by tests
and by ``transceiver run --directory memory``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from voxrelay import token as tokens


@dataclass(frozen=True)
class TransceiverRecord:
    """How the directory (and so the relays) know a transceiver."""

    id: int
    private_address: str
    signaling_url: str
    max_calls: int
    region: str = ""


@dataclass(frozen=True)
class TokenKeys:
    """The routing-token keys: mint with ``active``, verify with any of ``keys``."""

    active: int
    keys: dict[int, bytes]

    def active_key(self) -> bytes:
        return self.keys[self.active]


@dataclass(frozen=True)
class SessionRecord:
    """A call that lives on a transceiver, for calls that outlive its memory."""

    call_id: str
    transceiver_id: int
    port: int
    created: float
    expires: float


@runtime_checkable
class Directory(Protocol):
    async def announce(self, record: TransceiverRecord) -> None: ...

    async def heartbeat(self, transceiver_id: int, calls: int, draining: bool) -> None: ...

    async def drain(self, transceiver_id: int) -> None: ...

    async def withdraw(self, transceiver_id: int) -> None: ...

    async def token_keys(self) -> TokenKeys: ...

    async def put_session(self, record: SessionRecord) -> None: ...

    async def get_session(self, call_id: str) -> SessionRecord | None: ...

    async def delete_session(self, call_id: str) -> None: ...


@dataclass
class _Entry:
    record: TransceiverRecord
    last_heartbeat: float
    calls: int = 0
    draining: bool = False


@dataclass
class MemoryDirectory:
    """A directory in this process: everything the Protocol asks, nothing more."""

    keys: TokenKeys = field(default_factory=lambda: TokenKeys(0, {0: tokens.new_key()}))
    transceivers: dict[int, _Entry] = field(default_factory=dict)
    sessions: dict[str, SessionRecord] = field(default_factory=dict)

    async def announce(self, record: TransceiverRecord) -> None:
        self.transceivers[record.id] = _Entry(record, time.monotonic())

    async def heartbeat(self, transceiver_id: int, calls: int, draining: bool) -> None:
        entry = self.transceivers.get(transceiver_id)
        if entry is None:
            raise KeyError(f"transceiver {transceiver_id} is not announced")
        entry.last_heartbeat = time.monotonic()
        entry.calls = calls
        entry.draining = draining

    async def drain(self, transceiver_id: int) -> None:
        entry = self.transceivers.get(transceiver_id)
        if entry is not None:
            entry.draining = True

    async def withdraw(self, transceiver_id: int) -> None:
        self.transceivers.pop(transceiver_id, None)

    async def token_keys(self) -> TokenKeys:
        return self.keys

    async def put_session(self, record: SessionRecord) -> None:
        self.sessions[record.call_id] = record

    async def get_session(self, call_id: str) -> SessionRecord | None:
        record = self.sessions.get(call_id)
        if record is not None and record.expires < time.time():
            del self.sessions[call_id]
            return None
        return record

    async def delete_session(self, call_id: str) -> None:
        self.sessions.pop(call_id, None)
