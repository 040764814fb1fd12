# SPDX-License-Identifier: Apache-2.0
"""The directory interface: one contract, an embedded and a Redis backend.

``Directory`` is what both sides use:

- transceivers call ``announce``/``heartbeat``/``drain``/``keyring`` and the
  session methods (pick a backend with ``voxrelay.directory.connect(url)``;
  ``voxrelay.directory.agent.keep_announced`` is the loop that does it);
- the orchestrator's sync calls ``snapshot`` and follows ``changes``.

Two kinds of state live side by side. A transceiver's *record* is its own
word (address, load, its own "draining" at shutdown) and goes with it: it
expires without heartbeats and is replaced by every announce. The operator's
*intent* ("draining" or "removed", set by ``voxrelay transceivers``) is kept
apart and outlives both the record and a restart of the directory (the
embedded store writes it to a file, Redis keeps it in a hash): whatever a
transceiver announces, ``effective`` applies the intent on top, so a drained
transceiver that comes back stays draining and a removed one stays out of
``snapshot`` until ``undrain`` clears the intent.

Liveness is decided in one place: ``snapshot`` and ``get_transceiver`` leave
out every record whose last heartbeat is older than ``grace`` seconds, so the
embedded store and Redis expire transceivers the same way (Redis TTLs only
collect the garbage).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

from .records import Keyring, TransceiverRecord, validate_transceiver_id


class DirectoryError(Exception):
    """Base of the directory's own errors."""


class DirectoryUnavailable(DirectoryError):
    """The directory cannot be reached; the caller keeps what it has and retries."""


class DirectoryAuthError(DirectoryError):
    """The directory refused our credential (or we sent none): a configuration
    error, so it is reported as such instead of being retried silently."""


class UnknownTransceiver(DirectoryError, KeyError):
    """A heartbeat or drain for a transceiver the directory does not hold
    (never announced, removed, or expired): announce again."""

    def __init__(self, txr_id: int) -> None:
        super().__init__(txr_id)
        self.txr_id = txr_id

    def __str__(self) -> str:
        return f"transceiver {self.txr_id} is not in the directory (announce it first)"


@dataclass(frozen=True)
class Snapshot:
    transceivers: dict[int, TransceiverRecord] = field(default_factory=dict)
    keyring: Keyring = field(default_factory=Keyring)


@dataclass(frozen=True)
class Change:
    """A hint that something changed: re-read it. ``kind`` is "transceiver"
    (with ``txr_id``) or "keys". A hint may repeat or arrive for a change that
    was already read; applying it is idempotent."""

    kind: str
    txr_id: int = 0


class ChangeFeed(Protocol):
    def __aiter__(self) -> AsyncIterator[Change | None]: ...

    async def __anext__(self) -> Change | None: ...

    async def aclose(self) -> None: ...


INTENTS = ("draining", "removed")
"""The operator's decisions about a transceiver (``Directory.set_intent``)."""


def validate_intent(value: Any) -> str | None:
    if value is not None and value not in INTENTS:
        raise ValueError(f"intent {value!r} is not one of: {', '.join(INTENTS)} (or none)")
    return None if value is None else str(value)


def effective(record: TransceiverRecord, intent: str | None) -> TransceiverRecord:
    """``record`` as the relay must see it: the operator's intent wins over
    what the transceiver said of itself."""
    if intent == "removed":
        return record.with_(status="removed")
    if intent == "draining" and record.status == "active":
        return record.with_(status="draining")
    return record


class Directory(abc.ABC):
    grace: float

    # --- transceivers' side -------------------------------------------------
    @abc.abstractmethod
    async def announce(self, record: TransceiverRecord) -> TransceiverRecord:
        """Create or replace a transceiver; stamps last_heartbeat and announced_at."""

    @abc.abstractmethod
    async def heartbeat(self, txr_id: int, load: int = 0) -> TransceiverRecord:
        """Refresh a live transceiver; raises ``UnknownTransceiver`` if it is gone."""

    @abc.abstractmethod
    async def set_status(self, txr_id: int, status: str) -> TransceiverRecord:
        """The transceiver's own word, "active" or "draining" (it drains
        itself at shutdown); raises ``UnknownTransceiver``. Not sticky: the
        next announce replaces it. Operators use ``drain``/``undrain``/``evict``."""

    @abc.abstractmethod
    async def remove(self, txr_id: int) -> bool:
        """Forget a transceiver's record (it withdraws at shutdown); False if
        it was not there. Leaves any intent in place."""

    @abc.abstractmethod
    async def get_transceiver(self, txr_id: int) -> TransceiverRecord | None:
        """The live record with the intent applied, or None if absent, past
        its grace, or removed by the operator."""

    # --- the operator's intent --------------------------------------------------
    @abc.abstractmethod
    async def set_intent(self, txr_id: int, intent: str | None) -> None:
        """Record the operator's decision ("draining", "removed"; None clears
        it) durably, for a transceiver that may or may not be announced now."""

    @abc.abstractmethod
    async def intents(self) -> dict[int, str]:
        """Every transceiver with an operator intent."""

    async def drain(self, txr_id: int) -> TransceiverRecord | None:
        """No new flows to ``txr_id`` until ``undrain``, across its re-announces
        and directory restarts; its calls continue. The record, if announced."""
        await self.set_intent(validate_transceiver_id(txr_id), "draining")
        return await self.get_transceiver(txr_id)

    async def undrain(self, txr_id: int) -> TransceiverRecord | None:
        """Clear the operator's intent (drain or remove): re-admit ``txr_id``.
        Its record counts again as soon as it is announced (or at once)."""
        await self.set_intent(validate_transceiver_id(txr_id), None)
        record = await self.get_transceiver(txr_id)
        if record is not None and record.status != "active":
            # Drained by its own word before: the operator re-admits it.
            record = await self.set_status(txr_id, "active")
        return record

    async def evict(self, txr_id: int) -> bool:
        """Take ``txr_id`` out of the maps until ``undrain``, even while it
        keeps announcing itself; True if it had a record."""
        await self.set_intent(validate_transceiver_id(txr_id), "removed")
        return await self.remove(txr_id)

    @abc.abstractmethod
    async def keyring(self) -> Keyring: ...

    @abc.abstractmethod
    async def rotate_keys(self) -> Keyring:
        """A fresh current key; the previous current stays active, older ones retire."""

    @abc.abstractmethod
    async def ensure_keyring(self) -> Keyring:
        """The keyring, creating a first key if there is none (idempotent)."""

    @abc.abstractmethod
    async def put_session(self, session_id: str, data: dict[str, Any], ttl: float) -> None:
        """Store a transceiver's session record for ``ttl`` seconds (for reconnects)."""

    @abc.abstractmethod
    async def get_session(self, session_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def delete_session(self, session_id: str) -> bool: ...

    # --- orchestrator's side ------------------------------------------------
    @abc.abstractmethod
    async def snapshot(self) -> Snapshot:
        """Every live transceiver and the keyring."""

    async def follow(self, poll: float) -> ChangeFeed:
        """Follow changes made after this call returns; call it *before*
        ``snapshot`` so that nothing falls between the two. The feed yields
        ``None`` when nothing arrived for ``poll`` seconds, so that the
        follower can do its periodic full reconcile (which is also how
        expiries are noticed), and raises ``DirectoryUnavailable`` when it
        breaks."""
        raise NotImplementedError(f"{type(self).__name__} has no change feed")

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the backend's connections (``async with`` calls it)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def is_live(record: TransceiverRecord, now: float, grace: float) -> bool:
    return now - record.last_heartbeat <= grace
