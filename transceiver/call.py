"""Calls: one aiortc peer connection each, behind the relay, bridged to the model.

``CallManager`` is the library the HTTP layer (``signaling.py``) is thin over:
``create`` (offer -> answer), ``restart`` (ICE restart), ``end``, ``drain``
and ``close``. Every path that fails after allocating something frees it
before raising, so an error leaves no socket, port, task or record behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import grpc.aio
import webrtcvad
from aioice import Candidate
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from transceiver.ice import PortPool, RoutedIce, random_ice_password, restart_ice, routed_ice
from transceiver.media import CHUNK_MS, PcmChunker, ReplyTrack, recv_audio
from transceiver.model import voice_pb2
from transceiver.modellink import Backoff, ModelLink, open_channel
from transceiver.offer import parse_offer
from transceiver.sessions import SessionStore
from voxrelay import token as tokens
from voxrelay.directory import Directory, DirectoryError, SessionRecord

logger = logging.getLogger(__name__)

EVENTS_LABEL = "events"
_EARLY_EVENTS = 100  # events kept until the data channel opens


class CallError(Exception):
    """A call request that cannot be served; ``status`` is the HTTP status."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadOffer(CallError):
    status = 400


class AtCapacity(CallError):
    status = 503


class Draining(CallError):
    status = 503


class UnknownCall(CallError):
    status = 404


class NoTokenKey(CallError):
    """The directory has no current routing-token key (is the orchestrator running?)."""

    status = 503


@dataclass
class CallSettings:
    """What every call of one transceiver shares."""

    transceiver_id: int
    ports: PortPool
    advertised: list[Candidate]
    """Relay candidates for the answer, nearest first (``ice.relay_candidates``)."""
    model_target: str
    max_calls: int = 50
    token_ttl: int = 3600
    ice_timeout: float = 30.0
    """A call whose ICE has not connected by then is closed."""
    consent_interval: float = 5.0
    consent_failures: int = 6
    session_ttl: float = 120.0
    barge_in_frames: int = 8
    """Consecutive 20 ms voiced frames (VAD) that stop a playing reply."""
    vad_mode: int = 2
    model_backoff: Backoff = field(default_factory=Backoff)


class TurnClock:
    """Turn timings the transceiver measures itself.

    ``first_audio_ms``: from the end of speech (the inbound chunk at which the
    model's VAD closed the turn) to the first reply chunk handed to the
    outbound track. Stream seq -> arrival time is kept for the last minute.
    """

    _KEEP = 3000  # chunks (60 s)

    def __init__(self) -> None:
        self._arrived: dict[int, float] = {}
        self._speech_end: tuple[int, float] | None = None
        self._pending_audio: float | None = None

    def reset(self) -> None:
        self._arrived.clear()

    def chunk_sent(self, seq: int, at: float) -> None:
        self._arrived[seq] = at
        self._arrived.pop(seq - self._KEEP, None)

    def turn_closed(self, turn: int, speech_end_ms: float) -> float | None:
        """Record the model's end of speech; returns first_audio_ms if audio already started."""
        at = self._arrived.get(int(speech_end_ms // CHUNK_MS))
        if at is None:
            return None
        if self._pending_audio is not None and self._pending_audio >= at:
            first, self._pending_audio = self._pending_audio, None
            return (first - at) * 1000
        self._speech_end = (turn, at)
        return None

    def segment_started(self, at: float) -> tuple[int, float] | None:
        """A reply began playing; returns (turn, first_audio_ms) when the turn is known."""
        if self._speech_end is None:
            self._pending_audio = at
            return None
        turn, end = self._speech_end
        self._speech_end = None
        return turn, (at - end) * 1000


class Call:
    def __init__(self, manager: CallManager, call_id: str) -> None:
        self.manager = manager
        self.id = call_id
        self.port = 0
        self.ufrag = ""
        self.pc: RTCPeerConnection | None = None
        self.routed: RoutedIce | None = None
        self.track = ReplyTrack(on_segment_start=self._on_segment_start)
        self.link: ModelLink | None = None
        self.clock = TurnClock()
        self.events_sent: list[dict[str, Any]] = []  # bounded: last 200, for GET /v1/calls/<id>
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.barge_ins = 0
        self.chunks_in = 0
        self._channel: Any = None
        self._early: list[str] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._suppress_audio = False
        self._vad = webrtcvad.Vad(manager.settings.vad_mode)
        self._voiced = 0
        self._closing = False

    # ------------------------------------------------------------ setup

    async def answer(self, offer_text: str) -> str:
        settings = self.manager.settings
        sock = settings.ports.bind()
        self.port = sock.getsockname()[1]
        try:
            self.ufrag = await self.manager.mint_ufrag(self.port)
            self.routed = RoutedIce(
                sock=sock,
                ufrag=self.ufrag,
                password=random_ice_password(),
                advertised=settings.advertised,
                consent_interval=settings.consent_interval,
                consent_failures=settings.consent_failures,
            )
            with routed_ice(self.routed):
                self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                pc.on("track", self._on_track)
                pc.on("datachannel", self._on_datachannel)
                pc.on("connectionstatechange", self._on_state)
                pc.addTrack(self.track)
                try:
                    await pc.setRemoteDescription(RTCSessionDescription(offer_text, "offer"))
                except Exception as exc:  # noqa: BLE001 - aiortc raises many types for a refused offer
                    raise BadOffer(f"SDP offer was refused: {exc}") from None
                await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:
            await self._free()
            raise
        self._spawn(self._ice_watchdog(), "ice-watchdog")
        self.link = ModelLink(
            self.manager.channel,
            self.id,
            self._on_model_message,
            self._on_model_state,
            backoff=settings.model_backoff,
        )
        self.link.start()
        return self.pc.localDescription.sdp

    async def restart(self, offer_text: str) -> str:
        """ICE restart: new credentials (a fresh token for the same port)."""
        offer = parse_offer(offer_text)
        pc, routed = self.pc, self.routed
        if pc is None or routed is None or self._closing:
            raise UnknownCall(f"call {self.id} is closed")
        conn = routed.primary()
        if conn is None:
            raise CallError(f"call {self.id} has no ICE connection yet")
        ufrag = await self.manager.mint_ufrag(self.port)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer_text, "offer"))
        except Exception as exc:  # noqa: BLE001 - aiortc raises many types for a refused offer
            raise BadOffer(f"SDP offer was refused: {exc}") from None
        restart_ice(
            conn,
            local_username=ufrag,
            local_password=random_ice_password(),
            remote_username=offer.ice_ufrag,
            remote_password=offer.ice_pwd,
        )
        self.ufrag = ufrag
        await pc.setLocalDescription(await pc.createAnswer())
        self.emit({"type": "ice_restart", "ufrag": ufrag})
        return pc.localDescription.sdp

    # ------------------------------------------------------------ teardown

    async def close(self, reason: str) -> None:
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        self.close_reason = reason
        logger.info("call %s closing: %s", self.id, reason)
        if self.link is not None:
            await self.link.close()
        await self._free()
        self.closed.set()
        self.manager._forget(self)

    async def _free(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.track.stop()
        if self.pc is not None:
            await self.pc.close()
        # aioice closes the socket it gathered on; close it ourselves when the
        # call failed before gathering.
        if self.routed is not None and self.routed.sock.fileno() != -1:
            self.routed.sock.close()
        if self.port:
            self.manager.settings.ports.release(self.port)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=f"call-{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ice_watchdog(self) -> None:
        await asyncio.sleep(self.manager.settings.ice_timeout)
        if self.pc is not None and self.pc.connectionState != "connected":
            self._spawn_close("ICE did not connect in time")

    def _spawn_close(self, reason: str) -> None:
        # close() cancels this call's tasks, so it must not run inside one.
        asyncio.get_running_loop().create_task(self.close(reason))

    # ------------------------------------------------------------ aiortc events

    def _on_state(self) -> None:
        if self.pc is None:
            return
        state = self.pc.connectionState
        if state in ("failed", "closed") and not self._closing:
            self._spawn_close(f"peer connection {state} (client gone or consent expired)")

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != EVENTS_LABEL:
            return
        self._channel = channel

        def flush() -> None:
            early, self._early = self._early, []
            for text in early:
                channel.send(text)

        if channel.readyState == "open":
            flush()
        else:
            channel.on("open", flush)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._pump(track), "inbound")

    async def _pump(self, track: MediaStreamTrack) -> None:
        chunker = PcmChunker()
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await recv_audio(track)
            except MediaStreamError:
                return
            for chunk in chunker.push(frame):
                self.chunks_in += 1
                self._check_barge_in(chunk)
                if self.link is not None:
                    seq = self.link.send_audio(chunk)
                    if seq is not None:
                        self.clock.chunk_sent(seq, loop.time())

    # ------------------------------------------------------------ events

    def emit(self, event: dict[str, Any]) -> None:
        text = json.dumps(event)
        self.events_sent.append(event)
        del self.events_sent[:-200]
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            channel.send(text)
        elif len(self._early) < _EARLY_EVENTS:
            self._early.append(text)

    # ------------------------------------------------------------ barge-in

    def _check_barge_in(self, chunk: bytes) -> None:
        if not self.track.playing:
            self._voiced = 0
            return
        if self._vad.is_speech(chunk, 16000):
            self._voiced += 1
            if self._voiced >= self.manager.settings.barge_in_frames:
                self.barge_in("vad")
        else:
            self._voiced = 0

    def barge_in(self, source: str) -> None:
        dropped = self.track.flush()
        self._voiced = 0
        self._suppress_audio = True
        self.barge_ins += 1
        if self.link is not None:
            self.link.send_barge_in()
        self.emit({"type": "barge_in", "source": source, "dropped_ms": dropped * CHUNK_MS})

    # ------------------------------------------------------------ the model

    def _on_model_state(self, state: str, detail: str) -> None:
        if state == "connected":
            self.clock.reset()
            self.emit({"type": "model", "state": "connected"})
        else:
            self.emit({"type": "error", "source": "model", "code": "model_unavailable",
                       "message": f"voice model unreachable, reconnecting: {detail}"})

    def _on_model_message(self, message: voice_pb2.ServerMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "audio":
            if not self._suppress_audio:
                self.track.push(message.audio.pcm)
        elif kind == "transcript":
            t = message.transcript
            if t.final:
                self._suppress_audio = False
            elif self.track.playing:
                self.barge_in("transcript")
            self.emit({"type": "transcript", "text": t.text, "final": t.final, "turn": t.turn})
        elif kind == "reply":
            self.emit({"type": "reply", "text": message.reply.text, "turn": message.reply.turn})
        elif kind == "timings":
            m = message.timings
            event: dict[str, Any] = {
                "type": "timings", "turn": m.turn, "processing_ms": m.processing_ms,
                "asr_ms": m.asr_ms, "reply_ms": m.reply_ms, "tts_ms": m.tts_ms,
                "speech_end_ms": m.speech_end_ms,
            }
            first = self.clock.turn_closed(m.turn, m.speech_end_ms)
            if first is not None:
                event["first_audio_ms"] = first
            self.emit(event)
        elif kind == "error":
            self.emit({"type": "error", "source": "model", "code": message.error.code,
                       "message": message.error.message})
        elif kind == "turn_end":
            self._suppress_audio = False
            self.track.end_segment()
            self.emit({"type": "turn_end", "turn": message.turn_end})

    def _on_segment_start(self, at: float) -> None:
        result = self.clock.segment_started(asyncio.get_running_loop().time())
        if result is not None:
            turn, first = result
            self.emit({"type": "timings", "turn": turn, "first_audio_ms": first})

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        conn = self.routed.primary() if self.routed else None
        return {
            "id": self.id,
            "port": self.port,
            "ufrag": self.ufrag,
            "state": self.pc.connectionState if self.pc else "new",
            "remote": list(conn.nominated_remote() or ()) if conn else [],
            "model_connected": bool(self.link and self.link.connected),
            "chunks_in": self.chunks_in,
            "reply_frames": self.track.audio_frames_sent,
            "barge_ins": self.barge_ins,
        }


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

    async def create(self, offer_text: str) -> Call:
        try:
            parse_offer(offer_text)
        except ValueError as exc:
            raise BadOffer(str(exc)) from None
        if self.draining:
            raise Draining("transceiver is draining: no new calls")
        if self.load >= self.settings.max_calls:
            raise AtCapacity(f"at capacity: {self.settings.max_calls} calls")
        self._pending += 1
        call = Call(self, secrets.token_urlsafe(12))
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
            await self.directory.drain(self.settings.transceiver_id)
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
