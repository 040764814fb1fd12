# SPDX-License-Identifier: Apache-2.0
"""One call's gRPC stream to the voice model (client side of voice.proto).

The stream is (re)opened with exponential backoff: a call connects even when
the model is down, reports it, and picks the model up again when it returns.
Audio produced while the model is away is dropped, not buffered: a stale
sentence replayed later would be worse than a missed one.

The caller's 20 ms frames go to the model ``frames_per_message`` at a time
(2 by default: 40 ms per ``AudioChunk``). Each gRPC message costs the
transceiver about as much CPU as decoding the frame in it (grpc.aio's write
path, per message, whatever its size), so two frames per message halve that
cost per call; the price is at most one frame (20 ms) more before the model
hears the frame that ends a turn. A control message (barge-in, session
update, end of input) first sends the frames waiting before it, so the model
sees everything in the order the caller produced it.

Back-pressure never raises into the call: when the model reads slower than
the caller speaks, the stream's bounded queue fills and further audio is
dropped and counted (``chunks_dropped``); a barge-in that finds the queue full
is counted too (``controls_dropped``). ``close`` is idempotent, bounded by its
timeout and never raises: it ends the stream politely when the queue has room
and cancels it otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import KW_ONLY, InitVar, dataclass, field
from typing import Protocol

import grpc
import grpc.aio

from transceiver.model import voice_pb2, voice_pb2_grpc

logger = logging.getLogger(__name__)

# Let gRPC itself retry the TCP connection quickly too; its default initial
# backoff is 1 s, growing to 120 s, far too slow for a live call.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

_AUDIO_QUEUE_FRAMES = 100  # 2 s of audio: bounded, the model should keep up


class _VoiceModel(Protocol):
    """The client side of voice.proto's service, as the link calls it."""

    # The RPC, named as in voice.proto: a multi-callable the stub sets up.
    Converse: Callable[[AsyncIterator[voice_pb2.ClientMessage]], grpc.aio.StreamStreamCall]
    # The transceiver's admission reads it (CallManager.read_model_capacity).
    Capacity: Callable[..., Awaitable[voice_pb2.CapacityReply]]


# protoc's grpc module is not annotated (and is never edited: genproto.py
# regenerates it); this is the type of the names of it that the transceiver calls.
voice_model_stub: Callable[[grpc.aio.Channel], _VoiceModel] = voice_pb2_grpc.VoiceModelStub


def open_channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.2
    maximum: float = 5.0
    factor: float = 2.0

    def next_delay(self, attempt: int) -> float:
        """Delay before reconnect ``attempt`` (0-based), with +-20 % jitter."""
        base = min(self.maximum, self.initial * self.factor**attempt)
        return base * (0.8 + 0.4 * random.random())


@dataclass(eq=False)
class ModelLink:
    """Keeps a ``Converse`` stream open for one call.

    ``on_message`` receives every ``ServerMessage``; ``on_state`` receives
    ``("connected", "")`` when a stream is up and ``("error", reason)`` when it
    fails. ``seq`` restarts at 0 on each new stream, as the proto says, and so
    does the frame index ``send_audio`` returns (frames the model has been
    given on this stream: its stream time is that index x 20 ms).
    """

    channel: InitVar[grpc.aio.Channel]
    call_id: str
    on_message: Callable[[voice_pb2.ServerMessage], None]
    on_state: Callable[[str, str], None]
    _: KW_ONLY
    language: str = "en-US"
    backoff: Backoff = field(default_factory=Backoff)
    frames_per_message: int = 2
    """20 ms frames per AudioChunk (see the module docstring)."""
    connected: bool = field(default=False, init=False)
    streams_opened: int = field(default=0, init=False)
    chunks_dropped: int = field(default=0, init=False)
    """Audio chunks not queued: no stream, the queue full (a slow model), or closing."""
    controls_dropped: int = field(default=0, init=False)
    """Barge-ins and end-of-input messages that found the queue full."""
    _queue: asyncio.Queue[voice_pb2.ClientMessage | None] | None = field(
        default=None, init=False, repr=False
    )
    _seq: int = field(default=0, init=False, repr=False)
    _frames: int = field(default=0, init=False, repr=False)
    _pending: list[bytes] = field(default_factory=list, init=False, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _closing: bool = field(default=False, init=False, repr=False)

    def __post_init__(self, channel: grpc.aio.Channel) -> None:
        if not 1 <= self.frames_per_message <= _AUDIO_QUEUE_FRAMES:
            raise ValueError(f"frames_per_message must be 1..{_AUDIO_QUEUE_FRAMES}, "
                             f"got {self.frames_per_message}")
        self._stub = voice_model_stub(channel)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"model-link-{self.call_id}")

    def send_audio(self, pcm: bytes) -> int | None:
        """Take one 20 ms frame; returns its index in the stream, or None if it
        was dropped. It is sent once ``frames_per_message`` frames are waiting."""
        queue = self._queue
        # A frame that starts a message needs a free slot for it. Frames that
        # join a message have one: only a control message (which sends the
        # waiting frames first) or the reader change the queue in between.
        if self._closing or not self.connected or queue is None or (
                not self._pending and queue.full()):
            self.chunks_dropped += 1
            return None
        index = self._frames
        self._frames += 1
        self._pending.append(pcm)
        if len(self._pending) >= self.frames_per_message:
            self._flush(queue)
        return index

    def _flush(self, queue: asyncio.Queue[voice_pb2.ClientMessage | None]) -> None:
        """Queue the waiting frames as one AudioChunk (the caller checked for room)."""
        if not self._pending:
            return
        pcm = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        queue.put_nowait(voice_pb2.ClientMessage(
            audio=voice_pb2.AudioChunk(pcm=pcm, sample_rate=16000, seq=self._seq)))
        self._seq += 1

    def _put_control(self, control: voice_pb2.Control) -> bool:
        """Queue a control message after the frames waiting before it; False
        (counted in ``controls_dropped``) when the queue has no room for both."""
        queue = self._queue
        if self._closing or not self.connected or queue is None:
            return False
        if queue.maxsize - queue.qsize() < 1 + bool(self._pending):
            self.controls_dropped += 1
            return False
        self._flush(queue)
        queue.put_nowait(voice_pb2.ClientMessage(control=control))
        return True

    def send_barge_in(self) -> bool:
        return self._put_control(voice_pb2.Control(barge_in=True))

    def send_session(self, update: voice_pb2.SessionUpdate) -> bool:
        """Send a session update (silence timeout, instructions); False if not
        connected or the queue is full."""
        return self._put_control(voice_pb2.Control(session=update))

    async def close(self, timeout: float = 1.0) -> None:
        """End the stream: politely (end_of_input) when the queue has room,
        else by cancelling it; stop reconnecting. Idempotent, returns within
        about ``timeout`` s, and never raises (a failing stream was already
        reported through ``on_state``)."""
        self._closing = True
        queue = self._queue
        polite = False
        if self.connected and queue is not None:
            # Two slots: end_of_input, then the end of the request iterator
            # (and one more for frames still waiting to be sent).
            if queue.maxsize - queue.qsize() >= 2 + bool(self._pending):
                self._flush(queue)
                queue.put_nowait(
                    voice_pb2.ClientMessage(control=voice_pb2.Control(end_of_input=True))
                )
                queue.put_nowait(None)
                polite = True
            else:
                self.controls_dropped += 1
        task, self._task = self._task, None
        if task is None:
            return
        try:
            if polite:
                # The stream ends by itself after end_of_input; if the model
                # does not close it in time, it is cancelled below.
                await asyncio.wait({task}, timeout=timeout)
            if not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done() and not task.cancelled() and task.exception() is not None:
            logger.warning("call %s: model stream ended with %r", self.call_id,
                           task.exception())

    async def _requests(
        self, queue: asyncio.Queue[voice_pb2.ClientMessage | None]
    ) -> AsyncIterator[voice_pb2.ClientMessage]:
        yield voice_pb2.ClientMessage(
            control=voice_pb2.Control(
                start=voice_pb2.Start(call_id=self.call_id, language=self.language)
            )
        )
        while True:
            item = await queue.get()
            if item is None:
                return
            yield item

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            queue: asyncio.Queue[voice_pb2.ClientMessage | None] = asyncio.Queue(
                -(-_AUDIO_QUEUE_FRAMES // self.frames_per_message)
            )
            call = self._stub.Converse(self._requests(queue))
            failure = ""
            try:
                await call.wait_for_connection()
                self._queue = queue
                self._seq = 0
                self._frames = 0
                self._pending.clear()
                self.connected = True
                self.streams_opened += 1
                attempt = 0
                self.on_state("connected", "")
                async for message in call:
                    self.on_message(message)
                if self._closing:
                    return
                failure = "model closed the stream"
            except grpc.aio.AioRpcError as exc:
                failure = f"{exc.code().name}: {exc.details()}"
            except asyncio.CancelledError:
                call.cancel()
                raise
            finally:
                self.connected = False
                self._queue = None
                call.cancel()
            if self._closing:
                return
            logger.info("call %s: model stream failed: %s", self.call_id, failure)
            if attempt == 0:  # report the outage once, not every retry
                self.on_state("error", failure)
            await asyncio.sleep(self.backoff.next_delay(attempt))
            attempt += 1
