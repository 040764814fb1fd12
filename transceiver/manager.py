# SPDX-License-Identifier: Apache-2.0
"""All calls of one transceiver: admission, lookup, sessions, drain.

``CallManager`` is the library the HTTP layer (``signaling.py``) is thin over:
``create`` (offer -> answer), ``restart`` (ICE restart), ``end``, ``drain``
and ``close``. It admits a call only while it is not draining and below
``max_calls`` (counting calls still being set up), mints each call's token
ufrag with the directory's current key, and keeps each live call's session
record in the directory.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import grpc.aio

from transceiver.call import BadOffer, Call, CallError, CallSettings, UnknownCall
from transceiver.modellink import open_channel
from transceiver.offer import parse_offer
from transceiver.sessions import SessionStore
from voxrelay import token as tokens
from voxrelay.directory import Directory, DirectoryError, SessionRecord

logger = logging.getLogger(__name__)


class AtCapacity(CallError):
    status = 503


class Draining(CallError):
    status = 503


class NoTokenKey(CallError):
    """The directory has no current routing-token key (is the orchestrator running?)."""

    status = 503


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

    @property
    def load(self) -> int:
        return len(self.calls) + self._pending

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
        """``client``: the identity of the caller's credential (transceiver/auth.py)."""
        try:
            parse_offer(offer_text)
        except ValueError as exc:
            raise BadOffer(str(exc)) from None
        if self.draining:
            raise Draining("transceiver is draining: no new calls")
        if self.load >= self.settings.max_calls:
            raise AtCapacity(f"at capacity: {self.settings.max_calls} calls")
        self._pending += 1
        call = Call(secrets.token_urlsafe(12), self.settings, self.channel, self.mint_ufrag,
                    self._forget)
        try:
            await call.answer(offer_text)
        finally:
            self._pending -= 1
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
        if self.calls.get(call.id) is call:
            del self.calls[call.id]
            self.sessions.delete(call.id)
            asyncio.get_running_loop().create_task(self._forget_remote(call.id))

    async def _forget_remote(self, call_id: str) -> None:
        try:
            await self.directory.delete_session(call_id)
        except Exception as exc:  # noqa: BLE001 - the record expires by TTL anyway
            logger.warning("could not delete session %s from the directory: %s", call_id, exc)

    async def refresh_sessions(self) -> None:
        """Extend the TTL of live calls here and in the directory; drop expired ones."""
        for call in list(self.calls.values()):
            await self._put_session(call)
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
        # Let the directory deletions scheduled by _forget run.
        await asyncio.sleep(0)

    async def close(self) -> None:
        await self.close_all("transceiver closed")
        await self.channel.close()
