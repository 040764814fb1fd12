# SPDX-License-Identifier: Apache-2.0
"""All calls of one transceiver: admission, lookup, sessions, drain.

``CallManager`` is the library the HTTP layer (``signaling.py``) is thin over:
``create`` (offer -> answer), ``restart`` (ICE restart), ``end``, ``drain``
and ``close``. It mints each call's token ufrag with the directory's current
key, and keeps each live call's session record in the directory.

Admission is one policy over three limits, checked at POST in this order:

1. ``max_calls``: every call, pending or connected, holds a UDP port and a
   peer connection; beyond it, 503 + Retry-After (``AtCapacity``).
2. ``model_streams``: the voice model serves that many streams (its
   ``--max-streams``, 16 by default). A call takes a model slot only when ICE
   connects, so pending calls cannot starve the model; a POST while every
   slot is taken is 503 + Retry-After (``ModelAtCapacity``), never a call
   without a model. Should more pending calls connect at once than slots are
   left, the late ones are closed with a ``model_at_capacity`` event.
3. ``max_pending_per_client``: calls one client identity has set up but not
   connected yet; beyond it, 429 + Retry-After (``TooManyPending``). A
   fuzzer's POSTs that never start ICE therefore hold at most that many
   ports each, until ``ice_timeout`` frees them. Identity "" (auth off) is
   not limited per client: without credentials there is no client to tell
   apart behind a load balancer.

The model's capacity is also asked of the model: ``follow_model_capacity``
reads its ``Capacity`` RPC every ``MODEL_CAPACITY_SECONDS``. The limit is then
the smaller of ``model_streams`` and the model's ``max_streams`` (derived from
its decode pool), and a POST while the model already serves all its streams
(other transceivers' calls included) is ``ModelAtCapacity`` too. A count is not
a reservation: two transceivers sharing a model can still both take its last
stream between two reads; the model then says ``busy`` on the stream, which
reaches the caller as an event. A model without the RPC (an older or a
third-party server) leaves ``model_streams`` as the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass

import grpc
import grpc.aio

from transceiver.call import BadOffer, Call, CallError, CallSettings, UnknownCall
from transceiver.model import voice_pb2
from transceiver.modellink import open_channel, voice_model_stub
from transceiver.offer import parse_offer
from transceiver.sessions import SessionStore
from voxrelay import token as tokens
from voxrelay.directory import Directory, DirectoryError, SessionRecord

logger = logging.getLogger(__name__)


class AtCapacity(CallError):
    status = 503


class ModelAtCapacity(AtCapacity):
    """Every model stream is taken (503, Retry-After)."""


class TooManyPending(AtCapacity):
    """This client has too many calls that have not connected yet (429, Retry-After)."""

    status = 429


class Draining(CallError):
    status = 503


class NoTokenKey(CallError):
    """The directory has no current routing-token key (is the orchestrator running?)."""

    status = 503


MODEL_CAPACITY_SECONDS = 2.0
"""How often the model's Capacity RPC is read."""
MODEL_CAPACITY_TIMEOUT_SECONDS = 1.0
MODEL_CAPACITY_STALE_SECONDS = 3 * MODEL_CAPACITY_SECONDS
"""A reading older than this no longer limits admission (the model is away)."""


@dataclass(frozen=True)
class ModelCapacity:
    """The model's last answer to Capacity, and when it came (monotonic s)."""

    max_streams: int
    active_streams: int
    read_at: float

    def fresh(self, now: float) -> bool:
        return now - self.read_at <= MODEL_CAPACITY_STALE_SECONDS


class CallManager:
    """All calls of one transceiver."""

    def __init__(
        self,
        settings: CallSettings,
        directory: Directory,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.channel = channel or open_channel(settings.model_target)
        self.calls: dict[str, Call] = {}
        self.sessions = SessionStore(settings.session_ttl)
        self.draining = False
        self._pending = 0
        self._pending_by_client: dict[str, int] = {}  # calls in create(), per identity
        self._model_calls: set[str] = set()  # ids of calls holding a model slot
        self._background: set[asyncio.Task[None]] = set()
        self.model_capacity: ModelCapacity | None = None
        """The model's last Capacity answer (None: not read yet, or it has no such RPC)."""
        self._capacity_unavailable_logged = False

    @property
    def load(self) -> int:
        return len(self.calls) + self._pending

    @property
    def model_streams_in_use(self) -> int:
        return len(self._model_calls)

    def pending(self, client: str) -> int:
        """Calls of ``client`` being set up or answered but not yet connected."""
        answered = sum(1 for c in self.calls.values()
                       if c.client == client and not c.connected and not c.closed.is_set())
        return answered + self._pending_by_client.get(client, 0)

    @property
    def model_stream_limit(self) -> int:
        """Model streams this transceiver may hold: ``model_streams``, or fewer if
        the model's last fresh Capacity answer says it serves fewer."""
        cap = self.model_capacity
        if cap is not None and cap.fresh(time.monotonic()):
            return min(self.settings.model_streams, cap.max_streams)
        return self.settings.model_streams

    def _model_full(self) -> bool:
        """The model's last fresh answer: it serves all its streams already."""
        cap = self.model_capacity
        return (cap is not None and cap.fresh(time.monotonic())
                and cap.active_streams >= cap.max_streams)

    async def read_model_capacity(self) -> ModelCapacity | None:
        """Ask the model's Capacity RPC once; keep and return the answer.

        None when the model has no such RPC or cannot be reached (the last
        answer then ages out of ``fresh``)."""
        stub = voice_model_stub(self.channel)
        try:
            reply = await stub.Capacity(voice_pb2.CapacityRequest(),
                                        timeout=MODEL_CAPACITY_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.model_capacity = None
                if not self._capacity_unavailable_logged:
                    self._capacity_unavailable_logged = True
                    logger.warning("the voice model has no Capacity RPC: admitting up to "
                                   "model_streams (%d) calls", self.settings.model_streams)
            return None
        before = self.model_capacity
        self.model_capacity = ModelCapacity(reply.max_streams, reply.active_streams,
                                            time.monotonic())
        if reply.max_streams < self.settings.model_streams and (
                before is None or before.max_streams != reply.max_streams):
            logger.warning("the voice model serves %d streams, fewer than model_streams (%d): "
                           "admitting up to %d", reply.max_streams, self.settings.model_streams,
                           reply.max_streams)
        return self.model_capacity

    async def follow_model_capacity(self, stop: asyncio.Event,
                                    interval: float = MODEL_CAPACITY_SECONDS) -> None:
        """Read the model's Capacity every ``interval`` s until ``stop`` is set
        (the first read is the service's, at start: ``read_model_capacity``)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                return
            try:
                await self.read_model_capacity()
            except Exception as exc:  # noqa: BLE001 - admission falls back to model_streams
                logger.warning("could not read the voice model's capacity: %r", exc)

    def _take_model_slot(self, call: Call) -> bool:
        if call.id in self._model_calls:
            return True
        if self.calls.get(call.id) is not call:
            return False  # closed meanwhile
        if len(self._model_calls) >= self.model_stream_limit:
            return False
        self._model_calls.add(call.id)
        return True

    def admit(self, client: str) -> None:
        """Raise the ``CallError`` a new call of ``client`` gets now, if any."""
        settings = self.settings
        if self.draining:
            raise Draining("transceiver is draining: no new calls")
        if self.load >= settings.max_calls:
            raise AtCapacity(f"at capacity: {settings.max_calls} calls")
        limit = self.model_stream_limit
        if len(self._model_calls) >= limit:
            raise ModelAtCapacity(f"voice model at capacity: {limit} streams in use")
        if self._model_full():
            cap = self.model_capacity
            assert cap is not None  # noqa: S101 (_model_full checked it)
            raise ModelAtCapacity(
                f"voice model at capacity: it serves {cap.active_streams} of its "
                f"{cap.max_streams} streams (other transceivers' calls included)")
        if client and self.pending(client) >= settings.max_pending_per_client:
            raise TooManyPending(
                f"too many calls not connected yet for this client: "
                f"{settings.max_pending_per_client}")

    async def mint_ufrag(self, port: int) -> str:
        """A routing token naming this transceiver and ``port``, minted with
        the directory's current key (read per call, so that a rotation is
        followed at once)."""
        ring = await self.directory.keyring()
        if ring.current is None:
            raise NoTokenKey("the directory has no routing-token key yet; start the orchestrator "
                             "(or run `voxrelay keys rotate`)")
        return tokens.mint(ring.keys[ring.current], key_id=ring.current,
                           transceiver_id=self.settings.transceiver_id, port=port,
                           ttl=self.settings.token_ttl)

    async def _put_session(self, call: Call) -> None:
        record = SessionRecord(call.id, self.settings.transceiver_id, call.port)
        self.sessions.put(record, expires=time.time() + self.settings.session_ttl)
        await self.directory.put_session(record.call_id, record.to_json(),
                                         ttl=self.settings.session_ttl)

    async def create(self, offer_text: str, *, client: str = "") -> Call:
        """Admit and answer a call; ``client`` is the identity of the caller's
        credential (transceiver/auth.py; "" when auth is off), for the
        per-client pending limit."""
        try:
            parse_offer(offer_text)
        except ValueError as exc:
            raise BadOffer(str(exc)) from None
        self.admit(client)
        self._pending += 1
        self._pending_by_client[client] = self._pending_by_client.get(client, 0) + 1
        call = Call(secrets.token_urlsafe(12), self.settings, self.channel, self.mint_ufrag,
                    self._forget, client=client, model_slot=self._take_model_slot)
        try:
            await call.answer(offer_text)
        finally:
            self._pending -= 1
            left = self._pending_by_client[client] - 1
            if left:
                self._pending_by_client[client] = left
            else:
                del self._pending_by_client[client]
        self.calls[call.id] = call
        try:
            await self._put_session(call)
        except Exception:
            await call.close("directory refused the session record")
            raise
        return call

    def get(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            raise UnknownCall(f"no call {call_id!r} on this transceiver")
        return call

    async def restart(self, call_id: str, offer_text: str) -> str:
        call = self.get(call_id)
        try:
            return await call.restart(offer_text)
        except ValueError as exc:
            raise BadOffer(str(exc)) from None

    async def end(self, call_id: str) -> None:
        await self.get(call_id).close("ended by DELETE")

    def _forget(self, call: Call) -> None:
        self._model_calls.discard(call.id)
        if self.calls.get(call.id) is call:
            del self.calls[call.id]
            self.sessions.delete(call.id)
            task = asyncio.get_running_loop().create_task(self._forget_remote(call.id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _forget_remote(self, call_id: str) -> None:
        try:
            await self.directory.delete_session(call_id)
        except Exception as exc:  # noqa: BLE001 - the record expires by TTL anyway
            logger.warning("could not delete session %s from the directory: %s", call_id, exc)

    async def refresh_sessions(self) -> None:
        """Extend the TTL of live calls here and in the directory; drop expired ones."""
        for call in list(self.calls.values()):
            if call.closed.is_set() or call.close_reason:
                continue  # closing: its record is being deleted
            try:
                await self._put_session(call)
            except Exception as exc:  # noqa: BLE001 - the next beat retries
                logger.warning("could not refresh session %s: %s", call.id, exc)
        for call_id in self.sessions.expire():
            expired = self.calls.get(call_id)
            if expired is not None:
                await expired.close("session expired")

    async def drain(self, grace: float) -> None:
        """No new calls; let existing ones finish for ``grace`` s, then close them."""
        self.draining = True
        try:
            # Its own word, not an operator intent: the record goes when it withdraws.
            await self.directory.set_status(self.settings.transceiver_id, "draining")
        except DirectoryError as exc:
            # The heartbeat loop announces us as draining when the directory is back.
            logger.warning("could not mark transceiver %s draining in the directory: %s",
                           self.settings.transceiver_id, exc)
        waits = [asyncio.ensure_future(c.closed.wait()) for c in list(self.calls.values())]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace)
            for w in pending:
                w.cancel()
        await self.close_all("transceiver shut down")

    async def close_all(self, reason: str) -> None:
        calls = list(self.calls.values())
        await asyncio.gather(*(c.close(reason) for c in calls), return_exceptions=True)
        # The directory deletions scheduled by _forget: bounded, as the
        # records expire by TTL anyway.
        if self._background:
            await asyncio.wait(set(self._background), timeout=1.0)

    async def close(self) -> None:
        """Close every call and the model channel; bounded, never raises."""
        await self.close_all("transceiver closed")
        for task in list(self._background):
            task.cancel()
        try:
            # grace=None cancels whatever stream is still open at once.
            await asyncio.wait_for(self.channel.close(None), 2.0)
        except Exception as exc:  # noqa: BLE001 - shutting down regardless
            logger.warning("could not close the model channel cleanly: %r", exc)
