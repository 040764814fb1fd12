# SPDX-License-Identifier: Apache-2.0
"""A call: one aiortc peer connection behind the relay, bridged to the model.

``Call`` owns what one call allocates: its UDP port (from ``CallSettings.ports``),
the token ufrag naming that port, the peer connection with its routed ICE
(transceiver/ice.py), the model link and the call's tasks. Every path that
fails after allocating something frees it before raising, so an error leaves
no socket, port, task or record behind.

Until ICE connects a call holds only its port (and the peer connection bound
to it): the model stream opens when media can flow, if the manager grants a
model slot then (``model_slot``), so a caller who never connects costs the
model nothing. ``close`` is total, idempotent and bounded: every teardown step
runs, whatever an earlier one raised, each within its own time budget, and it
runs in a task of its own, so a cancelled caller (a DELETE whose client went
away) cannot stop it half-way. What the model says and barge-in are
the call's ``Turns`` (transceiver/turns.py); admission and the set of calls
are ``CallManager``'s (transceiver/manager.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc.aio
from aioice import Candidate
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from transceiver.events import OAI_EVENTS_LABEL, OaiEvents
from transceiver.ice import (
    PortPool,
    RoutedIce,
    random_ice_password,
    receive_audio_payloads,
    restart_ice,
    routed_ice,
    short_audio_jitter,
)
from transceiver.media import OPUS_RATE, ReplyTrack, pcm_chunks
from transceiver.model import voice_pb2
from transceiver.modellink import Backoff, ModelLink
from transceiver.offer import parse_offer
from transceiver.rxopus import OpusReceive
from transceiver.turns import Turns

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


class UnknownCall(CallError):
    status = 404


@dataclass
class CallSettings:
    """What every call of one transceiver shares."""

    transceiver_id: int
    """Carried in every routing token this transceiver mints."""
    ports: PortPool
    """Where each call's UDP socket is bound (its port goes into the token)."""
    advertised: list[Candidate]
    """Relay candidates for the answer, nearest first (``ice.relay_candidates``)."""
    model_target: str
    """gRPC address of the voice model."""
    max_calls: int = 50
    """Above this (counting calls being set up), a new call is refused (503)."""
    token_ttl: int = 3600
    """Seconds a call's routing token stays valid (ICE restarts mint a fresh one)."""
    ice_timeout: float = 30.0
    """A call whose ICE has not connected by then is closed."""
    consent_interval: float = 5.0
    """Seconds between consent checks to the client (RFC 7675), +-20 % jitter."""
    consent_timeout: float = 30.0
    """Seconds after the client last answered a consent check that the call
    closes (RFC 7675: 30 s)."""
    session_ttl: float = 120.0
    """Seconds a call's session record lives in the directory unless refreshed."""
    barge_in_frames: int = 8
    """Consecutive 20 ms voiced frames (VAD) that stop a playing reply."""
    vad_mode: int = 2
    """Barge-in VAD (Silero) strictness: 0 (least) to 3 (most) at filtering out non-speech."""
    model_backoff: Backoff = field(default_factory=Backoff)
    """Reconnect delays of each call's model stream while the model is away."""
    model_audio_frames: int = 2
    """The caller's 20 ms frames per gRPC message to the model (transceiver/modellink.py)."""
    model_streams: int = 16
    """Concurrent streams the voice model serves (its ``--max-streams``). A call
    takes one when ICE connects; a POST while all are taken is refused (503)."""
    max_pending_per_client: int = 4
    """Calls one client identity may have set up but not yet connected; more
    are refused (429). Identity "" (no auth) is not limited per client."""
    rebind_silence: float = 0.5
    """NAT rebinding: seconds the nominated pair must have been silent before an
    authenticated check from a new address of the client moves media there."""


# Time budgets of the teardown steps (seconds). Their sum bounds Call.close:
# DELETE must answer within 1 s even when the model has stopped reading.
_TASKS_BUDGET = 0.2
_MODEL_BUDGET = 0.3
_PC_BUDGET = 0.4


MintUfrag = Callable[[int], Awaitable[str]]
"""port -> a routing-token ufrag naming this transceiver and that port."""


class Call:
    def __init__(self, call_id: str, settings: CallSettings, channel: grpc.aio.Channel,
                 mint_ufrag: MintUfrag, on_closed: Callable[[Call], None], *,
                 client: str = "", model_slot: Callable[[Call], bool] | None = None) -> None:
        self.id = call_id
        self.client = client
        """Identity of the credential that placed the call ("" without auth)."""
        self.model_slot = model_slot or (lambda call: True)
        """Asked once, when ICE connects: may this call open a model stream?"""
        self.connected = False
        """ICE connected at least once (the call is no longer pending)."""
        self.settings = settings
        self.channel = channel
        self.mint_ufrag = mint_ufrag
        self.on_closed = on_closed
        self.port = 0
        self.ufrag = ""
        self.answer_sdp = ""  # the last answer sent: to the offer or to an ICE restart
        self.pc: RTCPeerConnection | None = None
        self.routed: RoutedIce | None = None
        self.track = ReplyTrack(rate=OPUS_RATE, encoded=True)
        self.link: ModelLink | None = None
        self.turns = Turns(self.track, self.emit, self._tell_model_barge_in,
                           vad_mode=settings.vad_mode, barge_in_frames=settings.barge_in_frames)
        self.events_sent: list[dict[str, Any]] = []  # bounded: last 200, for GET /v1/calls/<id>
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.chunks_in = 0
        self.rx: OpusReceive | None = None
        """The inbound packet path (transceiver/rxopus.py), once the audio track is there."""
        self._channel: RTCDataChannel | None = None
        self._oai: OaiEvents | None = None
        self._early: list[str] = []
        self._events_flushed = asyncio.Event()  # the events channel opened, early ones sent
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._teardown: asyncio.Task[None] | None = None
        self.teardown_errors: list[str] = []
        """Teardown steps that failed or ran out of time (logged, never raised)."""

    # ------------------------------------------------------------ setup

    async def answer(self, offer_text: str) -> str:
        settings = self.settings
        sock = settings.ports.bind()
        self.port = sock.getsockname()[1]
        try:
            self.ufrag = await self.mint_ufrag(self.port)
            self.routed = RoutedIce(
                sock=sock,
                ufrag=self.ufrag,
                password=random_ice_password(),
                advertised=settings.advertised,
                consent_interval=settings.consent_interval,
                consent_timeout=settings.consent_timeout,
                rebind_silence=settings.rebind_silence,
            )
            short_audio_jitter()
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
        self.answer_sdp = self.pc.localDescription.sdp
        return self.answer_sdp

    def _on_connected(self) -> None:
        """ICE connected: open the model stream, if the model has room for it."""
        self.connected = True
        if self.link is not None or self._closing:
            return
        if not self.model_slot(self):
            self.emit({"type": "error", "source": "model", "code": "model_at_capacity",
                       "message": "the voice model serves no more calls now; call again later"})
            self._spawn(self._close_when_told("voice model at capacity when ICE connected"),
                        "refused")
            return
        self.link = ModelLink(
            self.channel,
            self.id,
            self.turns.on_model_message,
            self.turns.on_model_state,
            backoff=self.settings.model_backoff,
            frames_per_message=self.settings.model_audio_frames,
        )
        self.link.start()

    async def restart(self, offer_text: str) -> str:
        """ICE restart: new credentials (a fresh token for the same port)."""
        offer = parse_offer(offer_text)
        pc, routed = self.pc, self.routed
        if pc is None or routed is None or self._closing:
            raise UnknownCall(f"call {self.id} is closed")
        conn = routed.primary()
        if conn is None:
            raise CallError(f"call {self.id} has no ICE connection yet")
        ufrag = await self.mint_ufrag(self.port)
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
        self.answer_sdp = pc.localDescription.sdp
        return self.answer_sdp

    # ------------------------------------------------------------ teardown

    async def close(self, reason: str) -> None:
        """Free everything the call holds; idempotent, bounded, never raises."""
        if self._teardown is None:
            self._closing = True
            self.close_reason = reason
            logger.info("call %s closing: %s", self.id, reason)
            self._teardown = asyncio.get_running_loop().create_task(
                self._close_all(), name=f"call-{self.id}-close")
        # Shielded: cancelling the caller (a DELETE whose client went away)
        # must not stop the teardown half-way.
        await asyncio.shield(self.closed.wait())

    async def _close_all(self) -> None:
        try:
            await self._free()
        finally:
            self.closed.set()
            try:
                self.on_closed(self)
            except Exception:  # the call is closed regardless
                logger.exception("call %s: on_closed failed", self.id)

    async def _step(self, what: str, coro: Awaitable[object], budget: float) -> None:
        """One teardown step: errors and overruns are logged and counted, never raised."""
        try:
            await asyncio.wait_for(coro, budget)
        except TimeoutError:
            self.teardown_errors.append(f"{what}: not done in {budget} s")
            logger.warning("call %s: %s took longer than %s s", self.id, what, budget)
        except Exception as exc:  # noqa: BLE001 - every later step must still run
            self.teardown_errors.append(f"{what}: {exc!r}")
            logger.warning("call %s: %s failed: %r", self.id, what, exc)

    async def _free(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await self._step("stopping the call's tasks",
                             asyncio.wait(tasks), _TASKS_BUDGET)
        try:
            self.track.stop()
        except Exception as exc:  # noqa: BLE001 - keep tearing down
            self.teardown_errors.append(f"reply track: {exc!r}")
        # The model stream and the peer connection end side by side: neither
        # waits on the other, and each has its own budget.
        steps = []
        if self.link is not None:
            steps.append(self._step("closing the model stream",
                                    self.link.close(timeout=_MODEL_BUDGET / 2),
                                    _MODEL_BUDGET))
        if self.pc is not None:
            steps.append(self._step("closing the peer connection", self.pc.close(), _PC_BUDGET))
        if steps:
            await asyncio.gather(*steps)
        # aioice closes the socket it gathered on; close it ourselves when the
        # call failed before gathering, or when the peer connection's close
        # did not finish in time.
        if self.routed is not None:
            for conn in self.routed.connections:
                conn.drop_transports()
            if self.routed.sock.fileno() != -1:
                self.routed.sock.close()
        if self.port:
            self.settings.ports.release(self.port)
        if self.rx is not None:
            self.rx.close()  # a packet still arriving now is counted, not decoded

    def _spawn(self, coro: Coroutine[object, object, None], name: str) -> None:
        task = asyncio.create_task(coro, name=f"call-{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ice_watchdog(self) -> None:
        await asyncio.sleep(self.settings.ice_timeout)
        if self.pc is not None and self.pc.connectionState != "connected":
            self._spawn_close("ICE did not connect in time")

    async def _close_when_told(self, reason: str, wait: float = 2.0) -> None:
        """Close once the events channel has carried what was emitted (the
        caller learns why), or after ``wait`` s if it never opens."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._events_flushed.wait(), wait)
        await asyncio.sleep(0.1)  # let SCTP send it before the peer connection goes
        self._spawn_close(reason)

    def _spawn_close(self, reason: str) -> None:
        # close() cancels this call's tasks, so it must not run inside one.
        asyncio.get_running_loop().create_task(self.close(reason))

    # ------------------------------------------------------------ aiortc events

    def _on_state(self) -> None:
        if self.pc is None:
            return
        state = self.pc.connectionState
        if state == "connected" and not self.connected:
            self._on_connected()
        if state in ("failed", "closed") and not self._closing:
            self._spawn_close(f"peer connection {state} (client gone or consent expired)")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label == OAI_EVENTS_LABEL:
            self._attach_oai(channel)
            return
        if channel.label != EVENTS_LABEL:
            return
        self._channel = channel

        def flush() -> None:
            early, self._early = self._early, []
            for text in early:
                channel.send(text)
            self._events_flushed.set()

        if channel.readyState == "open":
            flush()
        else:
            channel.on("open", flush)

    def _attach_oai(self, channel: RTCDataChannel) -> None:
        # OpenAI Realtime's event names (transceiver/events.py); events sent
        # before the channel opens are not replayed there.
        def send(text: str) -> None:
            if channel.readyState == "open":
                channel.send(text)

        def to_model(update: voice_pb2.SessionUpdate) -> bool:
            return self.link is not None and self.link.send_session(update)

        self._oai = OaiEvents(send, to_model, lambda: self.turns.barge_in("response.cancel"))
        channel.on("message", self._oai.on_client_message)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio" or self.pc is None:
            return
        # Opus payloads are decoded in the event loop as they arrive
        # (transceiver/rxopus.py); aiortc's decoder thread and frames remain
        # only for a receiver that is not the transceiver's own.
        rx = OpusReceive(self._heard)
        if self.rx is None and receive_audio_payloads(self.pc, track, rx.push):
            self.rx = rx
            return
        rx.close()
        logger.warning("call %s: audio through aiortc's decoder (no packet path)", self.id)
        self._spawn(self._pump(track), "inbound")

    async def _pump(self, track: MediaStreamTrack) -> None:
        async for _, chunk in pcm_chunks(track):
            self._heard(chunk)

    def _heard(self, chunk: bytes) -> None:
        """One inbound 20 ms chunk: to barge-in detection and the model."""
        if self._closing:
            return
        self.chunks_in += 1
        self.turns.heard(chunk)
        if self.link is not None:
            seq = self.link.send_audio(chunk)
            if seq is not None:
                # The loop's clock, as Turns reads it when a reply starts.
                self.turns.clock.chunk_sent(seq, asyncio.get_running_loop().time())

    def _tell_model_barge_in(self) -> None:
        if self.link is not None:
            self.link.send_barge_in()

    # ------------------------------------------------------------ events

    def emit(self, event: dict[str, Any]) -> None:
        text = json.dumps(event)
        self.events_sent.append(event)
        del self.events_sent[:-200]
        if self._oai is not None:
            self._oai.forward(event)
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            channel.send(text)
        elif len(self._early) < _EARLY_EVENTS:
            self._early.append(text)

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        conn = self.routed.primary() if self.routed else None
        return {
            "id": self.id,
            "port": self.port,
            "ufrag": self.ufrag,
            "state": self.pc.connectionState if self.pc else "new",
            "remote": list(conn.nominated_remote() or ()) if conn else [],
            "client": self.client,
            "connected": self.connected,
            "model_connected": bool(self.link and self.link.connected),
            "model_chunks_dropped": self.link.chunks_dropped if self.link else 0,
            "consent_age_s": (round(asyncio.get_running_loop().time() - conn.consent_fresh_at, 3)
                              if conn is not None and conn.consent_fresh_at else None),
            "rebinds": conn.rebinds if conn is not None else 0,
            "chunks_in": self.chunks_in,
            "inbound": self.rx.counters() if self.rx is not None else None,
            "reply_frames": self.track.audio_frames_sent,
            "barge_ins": self.turns.barge_ins,
        }
