# SPDX-License-Identifier: Apache-2.0
"""The directory interface: one contract, an embedded and a Redis backend.

``Directory`` is what both sides use:

- transceivers call ``announce``/``heartbeat``/``drain``/``keyring`` and the
  session methods (pick a backend with ``voxrelay.directory.connect(url)``;
  ``voxrelay.directory.agent.keep_announced`` is the loop that does it);
- the orchestrator's sync calls ``snapshot`` and follows ``changes``.

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

from .records import Keyring, TransceiverRecord


class DirectoryError(Exception):
    """Base of the directory's own errors."""


class DirectoryUnavailable(DirectoryError):
    """The directory cannot be reached; the caller keeps what it has and retries."""


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
        """"active" or "draining"; raises ``UnknownTransceiver``."""

    async def drain(self, txr_id: int) -> TransceiverRecord:
        return await self.set_status(txr_id, "draining")

    async def undrain(self, txr_id: int) -> TransceiverRecord:
        return await self.set_status(txr_id, "active")

    @abc.abstractmethod
    async def remove(self, txr_id: int) -> bool:
        """Forget a transceiver; False if it was not there."""

    @abc.abstractmethod
    async def get_transceiver(self, txr_id: int) -> TransceiverRecord | None:
        """The live record, or None if absent or past its grace."""

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
