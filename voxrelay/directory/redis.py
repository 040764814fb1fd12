# SPDX-License-Identifier: Apache-2.0
"""The Redis directory: many relay hosts, one source of truth.

Layout (every key under a prefix, default ``voxrelay:``):

    {p}txr:{id}        JSON TransceiverRecord, TTL 2 x grace (garbage collection;
                       liveness is last_heartbeat + grace, as everywhere)
    {p}keys            JSON Keyring (no TTL)
    {p}intents         hash id -> "draining" | "removed": the operator's intents
                       (no TTL; base.py explains why they are kept apart)
    {p}session:{sid}   JSON session record, TTL as the transceiver asked
    {p}changes         stream of change hints {kind, id}, trimmed to ~10k

A relay that joins late (or comes back after an outage) reads the stream's
last id, takes a full snapshot, then follows the stream from that id: the
hints between the two are replayed, which is harmless because applying one is
idempotent. Read-modify-write (heartbeat, drain, rotate) runs under
WATCH/MULTI so that a heartbeat never overwrites a concurrent drain.

Authentication and TLS are Redis's own (docs/deployment.md, "Security";
tests/unit/test_directory_intents.py tries both): a
``rediss://`` URL for TLS (``?ssl_ca_certs=/path/ca.pem`` and friends as
query parameters), and a password or ACL user in the URL
(``redis://user:pass@host``). When the URL has no password the directory
secret (``[orchestrator] directory_secret_file``) is sent as the password, so
the secret stays out of the config file. A refused credential raises
``DirectoryAuthError``, not "unreachable".
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, WatchError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from voxrelay.token import new_key

from .base import (
    Change,
    Directory,
    DirectoryAuthError,
    DirectoryUnavailable,
    Snapshot,
    UnknownTransceiver,
    effective,
    is_live,
    validate_intent,
)
from .records import (
    Keyring,
    TransceiverRecord,
    parse_keyring,
    parse_transceiver,
    validate_self_status,
    validate_session_id,
    validate_session_ttl,
    validate_transceiver_id,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
STREAM_MAXLEN = 10_000


class _StreamFeed:
    def __init__(self, redis: Any, stream: str, cursor: str, poll: float) -> None:
        self._redis = redis
        self._stream = stream
        self._cursor = cursor
        self._poll_ms = max(1, int(poll * 1000))
        self._pending: list[Change] = []

    def __aiter__(self) -> AsyncIterator[Change | None]:
        return self

    async def __anext__(self) -> Change | None:
        if not self._pending:
            try:
                reply: Any = await self._redis.xread(
                    {self._stream: self._cursor}, count=512, block=self._poll_ms
                )
            except (RedisError, OSError) as exc:
                raise DirectoryUnavailable(f"redis change feed broke: {exc}") from None
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    self._cursor = entry_id
                    change = _parse_change(fields)
                    if change is not None:
                        self._pending.append(change)
            if not self._pending:
                return None
        return self._pending.pop(0)

    async def aclose(self) -> None:
        pass


def _parse_change(fields: dict[str, str]) -> Change | None:
    kind = fields.get("kind")
    if kind == "keys":
        return Change("keys")
    if kind == "transceiver":
        try:
            return Change("transceiver", validate_transceiver_id(int(fields.get("id", ""))))
        except ValueError:
            pass
    log.warning("ignoring malformed change hint %r", fields)
    return None


def _is_auth_refusal(exc: BaseException) -> bool:
    # redis-py 5+ opens with HELLO, and a server that wants a password answers
    # it with an error that redis-py raises as a plain ConnectionError.
    text = str(exc)
    return any(s in text for s in ("NOAUTH", "WRONGPASS", "already authenticated"))


def _decode_keyring(raw: str | None) -> Keyring:
    return Keyring() if raw is None else parse_keyring(json.loads(raw))


class RedisDirectory(Directory):
    def __init__(
        self,
        url: str,
        *,
        grace: float = 10.0,
        prefix: str = "voxrelay:",
        clock: Callable[[], float] = time.time,
        timeout: float = 2.0,
        password: str | None = None,
    ) -> None:
        self.url = url
        self.grace = grace
        self._clock = clock
        self._p = prefix
        self._stream = prefix + "changes"
        self._intents_key = prefix + "intents"
        # decode_responses=True: every reply is str; redis-py's stubs cannot say so.
        # A password in the URL takes precedence over ``password`` (redis-py's rule).
        self._redis: Any = aioredis.Redis.from_url(
            url, decode_responses=True, socket_timeout=None, socket_connect_timeout=timeout,
            password=password,
        )

    # --- plumbing -------------------------------------------------------------
    def _txr_key(self, txr_id: int) -> str:
        return f"{self._p}txr:{validate_transceiver_id(txr_id)}"

    def _ttl_ms(self) -> int:
        return max(1000, int(self.grace * 2000))

    async def _guard(self, op: Awaitable[T]) -> T:
        try:
            return await op
        except (AuthenticationError, NoPermissionError) as exc:
            raise DirectoryAuthError(
                f"redis {self._safe_url()} refused our credential: {exc} "
                "(check the URL's user/password or the directory secret)") from None
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            if _is_auth_refusal(exc):
                raise DirectoryAuthError(
                    f"redis {self._safe_url()} wants a credential: {exc} "
                    "(put a password in the URL or set the directory secret)") from None
            raise DirectoryUnavailable(f"redis {self._safe_url()} is unreachable: {exc}") from None

    def _safe_url(self) -> str:
        # Never print a password that may be in the URL.
        return self.url.split("@")[-1]

    def _hint(self, pipe: Any, kind: str, txr_id: int = 0) -> None:
        # Queued on a MULTI pipeline: it is sent with the write it describes.
        pipe.xadd(
            self._stream, {"kind": kind, "id": str(txr_id)}, maxlen=STREAM_MAXLEN, approximate=True
        )

    def _session_key(self, session_id: str) -> str:
        return f"{self._p}session:{validate_session_id(session_id)}"

    def _decode_txr(self, raw: str | None) -> TransceiverRecord | None:
        if raw is None:
            return None
        try:
            return parse_transceiver(json.loads(raw))
        except ValueError as exc:  # includes JSONDecodeError
            # Someone wrote a bad record behind our back: it never reaches a map.
            log.warning("ignoring bad transceiver record in redis: %s", exc)
            return None

    async def _read_modify_write(
        self,
        key: str,
        modify: Callable[[str | None], tuple[T, str | None]],
        *,
        px: int | None,
        hint: tuple[str, int] | None,
        what: str,
    ) -> T:
        """Read ``key`` under WATCH; ``modify`` turns its value into (result,
        new value, or None to write nothing), and the new value is written
        (with its change ``hint``) in MULTI, so a concurrent write to ``key``
        makes this one start over instead of being overwritten."""

        async def attempt() -> T:
            async with self._redis.pipeline(transaction=True) as pipe:
                for _ in range(16):
                    try:
                        await pipe.watch(key)
                        result, value = modify(await pipe.get(key))
                        if value is None:
                            await pipe.unwatch()
                            return result
                        pipe.multi()
                        pipe.set(key, value, px=px)
                        if hint is not None:
                            self._hint(pipe, *hint)
                        await pipe.execute()
                    except WatchError:
                        continue
                    return result
            raise DirectoryUnavailable(f"{what}: too much contention in redis")

        return await self._guard(attempt())

    async def _update_txr(
        self, txr_id: int, change: Callable[[TransceiverRecord], TransceiverRecord], notify: bool
    ) -> TransceiverRecord:
        def modify(raw: str | None) -> tuple[TransceiverRecord, str]:
            current = self._decode_txr(raw)
            if current is None or not is_live(current, self._clock(), self.grace):
                raise UnknownTransceiver(txr_id)
            updated = change(current)
            return updated, json.dumps(updated.to_json())

        return await self._read_modify_write(
            self._txr_key(txr_id),
            modify,
            px=self._ttl_ms(),
            hint=("transceiver", txr_id) if notify else None,
            what=f"transceiver {txr_id}",
        )

    async def _intent(self, txr_id: int) -> str | None:
        value = await self._guard(self._redis.hget(self._intents_key, str(txr_id)))
        try:
            return validate_intent(value)
        except ValueError:
            log.warning("ignoring bad intent %r for transceiver %d in redis", value, txr_id)
            return None

    async def _effective(self, record: TransceiverRecord) -> TransceiverRecord:
        return effective(record, await self._intent(record.id))

    # --- transceivers ----------------------------------------------------------
    async def announce(self, record: TransceiverRecord) -> TransceiverRecord:
        validate_self_status(record.status)
        now = self._clock()
        stored = record.with_(last_heartbeat=now, announced_at=now)

        async def op() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._txr_key(stored.id), json.dumps(stored.to_json()), px=self._ttl_ms())
                self._hint(pipe, "transceiver", stored.id)
                await pipe.execute()

        await self._guard(op())
        return await self._effective(stored)

    async def heartbeat(self, txr_id: int, load: int = 0) -> TransceiverRecord:
        return await self._effective(await self._update_txr(
            txr_id, lambda r: r.with_(load=load, last_heartbeat=self._clock()), notify=False
        ))

    async def set_status(self, txr_id: int, status: str) -> TransceiverRecord:
        validate_self_status(status)
        return await self._effective(
            await self._update_txr(txr_id, lambda r: r.with_(status=status), notify=True))

    async def set_intent(self, txr_id: int, intent: str | None) -> None:
        validate_transceiver_id(txr_id)
        validate_intent(intent)

        async def op() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                if intent is None:
                    pipe.hdel(self._intents_key, str(txr_id))
                else:
                    pipe.hset(self._intents_key, str(txr_id), intent)
                self._hint(pipe, "transceiver", txr_id)
                await pipe.execute()

        await self._guard(op())

    async def intents(self) -> dict[int, str]:
        raw = await self._guard(self._redis.hgetall(self._intents_key))
        out: dict[int, str] = {}
        for key, value in raw.items():
            try:
                intent = validate_intent(value)
                if intent is not None:
                    out[validate_transceiver_id(int(key))] = intent
            except ValueError:
                log.warning("ignoring bad intent %r=%r in redis", key, value)
        return out

    async def remove(self, txr_id: int) -> bool:
        async def op() -> bool:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._txr_key(txr_id))
                self._hint(pipe, "transceiver", txr_id)
                deleted, _ = await pipe.execute()
                return bool(deleted)

        return await self._guard(op())

    async def get_transceiver(self, txr_id: int) -> TransceiverRecord | None:
        record = self._decode_txr(await self._guard(self._redis.get(self._txr_key(txr_id))))
        if record is None or not is_live(record, self._clock(), self.grace):
            return None
        record = await self._effective(record)
        return None if record.status == "removed" else record

    # --- keys --------------------------------------------------------------------
    async def keyring(self) -> Keyring:
        return _decode_keyring(await self._guard(self._redis.get(self._p + "keys")))

    async def _rotate(self, only_if_empty: bool) -> Keyring:
        def modify(raw: str | None) -> tuple[Keyring, str | None]:
            ring = _decode_keyring(raw)
            if only_if_empty and ring.current is not None:
                return ring, None
            ring = ring.rotated(new_key())
            return ring, json.dumps(ring.to_json())

        return await self._read_modify_write(
            self._p + "keys", modify, px=None, hint=("keys", 0), what="key rotation"
        )

    async def rotate_keys(self) -> Keyring:
        return await self._rotate(only_if_empty=False)

    async def ensure_keyring(self) -> Keyring:
        return await self._rotate(only_if_empty=True)

    # --- sessions ------------------------------------------------------------------
    async def put_session(self, session_id: str, data: dict[str, Any], ttl: float) -> None:
        key = self._session_key(session_id)
        validate_session_ttl(ttl)
        payload = json.dumps(data)
        await self._guard(self._redis.set(key, payload, px=max(1, int(ttl * 1000))))

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        raw = await self._guard(self._redis.get(self._session_key(session_id)))
        return None if raw is None else dict(json.loads(raw))

    async def delete_session(self, session_id: str) -> bool:
        return bool(await self._guard(self._redis.delete(self._session_key(session_id))))

    # --- the sync's side -------------------------------------------------------------
    async def snapshot(self) -> Snapshot:
        async def op() -> Snapshot:
            keys = [k async for k in self._redis.scan_iter(match=f"{self._p}txr:*", count=1000)]
            values = await self._redis.mget(keys) if keys else []
            intents = await self.intents()
            now = self._clock()
            live: dict[int, TransceiverRecord] = {}
            for raw in values:
                record = self._decode_txr(raw)
                if record is not None and is_live(record, now, self.grace):
                    record = effective(record, intents.get(record.id))
                    if record.status != "removed":
                        live[record.id] = record
            return Snapshot(live, _decode_keyring(await self._redis.get(self._p + "keys")))

        return await self._guard(op())

    async def follow(self, poll: float) -> _StreamFeed:
        async def op() -> str:
            last = await self._redis.xrevrange(self._stream, count=1)
            return last[0][0] if last else "0-0"

        return _StreamFeed(self._redis, self._stream, await self._guard(op()), poll)

    async def close(self) -> None:
        await self._redis.aclose()
