# SPDX-License-Identifier: Apache-2.0
"""The default voice model: a grpc.aio server for voice.proto's VoiceModel.

Per stream (one per call):

    audio chunks -> 20 ms framer -> VAD turn detector -> ASR (live, in a thread)
                 -> final transcript -> reply policy -> TTS -> paced 20 ms audio

Three tasks per stream, joined by queues, so that decoding the caller's next
turn never waits on playing the previous reply:

- the reader validates messages, frames audio, runs the VAD and queues ASR work;
- the ASR worker feeds pocketsphinx in a thread and emits partial/final
  transcripts;
- the turn worker asks the reply policy, synthesizes, and streams the audio at
  real time plus a small lead (so ``barge_in`` stops what the caller would
  still hear, rather than audio already queued in the transceiver).

Outbound order per turn: Transcript(final), Reply, TurnTimings, audio...,
turn_end. Errors are ModelError messages; a bad stream never takes the server
down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

from transceiver.model import voice_pb2 as pb
from transceiver.model import voice_pb2_grpc as pb_grpc
from transceiver.model.asr import Asr, AsrResult, PocketsphinxAsr, Utterance
from transceiver.model.reply import Conversation, EchoReply, ReplyPolicy
from transceiver.model.speech import CHUNK_BYTES, CHUNK_MS, SAMPLE_RATE, chunks
from transceiver.model.tts import EspeakTts, Tts
from transceiver.model.vad import Event, TurnDetector, VadSettings
from voxrelay.addr import parse_hostport

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 64 * 1024
"""Larger audio messages are refused (2 s of audio; the API sends 640 bytes)."""
PARTIAL_EVERY_MS = 300
"""Partial transcripts are sent at most this often, and only when they change."""

# protoc's grpc module is not annotated (and is never edited: genproto.py
# regenerates it); this is the signature of the one function of it we call.
_add_servicer: Callable[[pb_grpc.VoiceModelServicer, grpc.aio.Server], None] = (
    pb_grpc.add_VoiceModelServicer_to_server
)


# Error codes sent in ModelError.code; the transceiver maps them to events.
BAD_FIRST_MESSAGE = "bad_first_message"
BAD_MESSAGE = "bad_message"
BAD_AUDIO = "bad_audio"
BUSY = "busy"
TURN_FAILED = "turn_failed"
INTERNAL = "internal"


@dataclass
class ModelOptions:
    """How the default model behaves; the CLI builds one from its flags."""

    asr: Asr = field(default_factory=PocketsphinxAsr)
    """Speech recogniser; by default pocketsphinx in grammar mode."""
    reply: ReplyPolicy = field(default_factory=EchoReply)
    """What to answer to a final transcript."""
    tts: Tts = field(default_factory=EspeakTts)
    """How to speak the answer."""
    vad: VadSettings = field(default_factory=VadSettings)
    audio_lead_ms: int = 200
    """Reply audio is sent at most this far ahead of real time. Large values
    send at once (tests); small values let barge_in cut audio sooner."""
    max_streams: int = 16
    """Concurrent calls; more get a ModelError 'busy'."""

    def __post_init__(self) -> None:
        if self.audio_lead_ms < CHUNK_MS:
            raise ValueError(f"audio_lead_ms must be >= {CHUNK_MS}")
        if self.max_streams < 1:
            raise ValueError("max_streams must be >= 1")


def error_message(code: str, message: str) -> pb.ServerMessage:
    return pb.ServerMessage(error=pb.ModelError(code=code, message=message))


@dataclass
class _ClosedTurn:
    turn: int
    result: AsrResult
    speech_end_ms: float
    closed_at: float
    asr_ms: float


# What the reader asks of the ASR worker, in order, through one bounded queue:
# open a turn, feed it audio (bytes), finish it; stop at the end of input.
@dataclass(frozen=True)
class _AsrOpen:
    turn: int


@dataclass(frozen=True)
class _AsrFinish:
    speech_end_ms: float


@dataclass(frozen=True)
class _AsrStop:
    pass


_AsrOp = _AsrOpen | bytes | _AsrFinish | _AsrStop


class _Stream:
    """State and tasks of one Converse call."""

    def __init__(self, options: ModelOptions, call_id: str) -> None:
        self.options = options
        self.asr: Asr = options.asr
        self.call_id = call_id
        self.out: asyncio.Queue[pb.ServerMessage | None] = asyncio.Queue()
        # Bounded so a caller that sends audio faster than ASR can decode is
        # slowed down by gRPC flow control instead of growing memory.
        self.asr_ops: asyncio.Queue[_AsrOp] = asyncio.Queue(maxsize=500)
        self.turns: asyncio.Queue[_ClosedTurn | None] = asyncio.Queue()
        self.vad = TurnDetector(options.vad)
        self.frame_buf = bytearray()
        self.frames_in = 0
        self.turn = 0
        self.barged_through = 0
        """Audio of turns up to this number is not sent (barge-in)."""
        self.bad_chunks = 0
        self.conversation = Conversation()

    def send(self, msg: pb.ServerMessage) -> None:
        self.out.put_nowait(msg)

    # reader side ---------------------------------------------------------
    async def on_audio(self, chunk: pb.AudioChunk) -> None:
        if chunk.sample_rate not in (0, SAMPLE_RATE):
            self._bad_chunk(f"sample_rate {chunk.sample_rate}, want {SAMPLE_RATE}")
            return
        if len(chunk.pcm) % 2 or len(chunk.pcm) > MAX_CHUNK_BYTES:
            self._bad_chunk(f"pcm of {len(chunk.pcm)} bytes: want whole 16-bit samples, "
                            f"at most {MAX_CHUNK_BYTES} bytes")
            return
        self.frame_buf += chunk.pcm
        while len(self.frame_buf) >= CHUNK_BYTES:
            frame = bytes(self.frame_buf[:CHUNK_BYTES])
            del self.frame_buf[:CHUNK_BYTES]
            self.frames_in += 1
            event, frames = self.vad.push(frame)
            if event is Event.START:
                self.turn += 1
                await self.asr_ops.put(_AsrOpen(self.turn))
            if frames:
                await self.asr_ops.put(b"".join(frames))
            if event is Event.END:
                await self.asr_ops.put(_AsrFinish(self.frames_in * CHUNK_MS))

    def _bad_chunk(self, why: str) -> None:
        # Reported on the first bad chunk and then every 50th, so a broken
        # client cannot flood the event channel; all are counted.
        self.bad_chunks += 1
        if self.bad_chunks == 1 or self.bad_chunks % 50 == 0:
            self.send(error_message(
                BAD_AUDIO, f"dropped audio chunk ({self.bad_chunks} so far): {why}"))

    async def end_of_input(self) -> None:
        if self.vad.flush():
            await self.asr_ops.put(_AsrFinish(self.frames_in * CHUNK_MS))
        await self.asr_ops.put(_AsrStop())

    def barge_in(self) -> None:
        # Every turn the caller has finished so far loses its remaining audio;
        # the turn being spoken now (if any) is the one they want answered.
        self.barged_through = self.turn - 1 if self.vad.in_turn else self.turn

    # ASR worker ----------------------------------------------------------
    async def asr_worker(self) -> None:
        utt: Utterance | None = None
        utt_turn = 0
        since_partial_ms = 0.0
        last_partial = ""
        try:
            while True:
                op = await self.asr_ops.get()
                if isinstance(op, _AsrStop):
                    break
                if isinstance(op, _AsrOpen):
                    if utt is not None:  # cannot happen: VAD alternates START/END
                        await asyncio.to_thread(utt.abort)
                    utt = await asyncio.to_thread(self.asr.open)
                    utt_turn = op.turn
                    since_partial_ms, last_partial = 0.0, ""
                elif isinstance(op, bytes) and utt is not None:
                    # Take every feed already queued in one thread hop.
                    pcm = bytearray(op)
                    pending_finish: _AsrOp | None = None
                    while not self.asr_ops.empty():
                        nop = self.asr_ops.get_nowait()
                        if isinstance(nop, bytes):
                            pcm += nop
                            continue
                        pending_finish = nop
                        break
                    await asyncio.to_thread(utt.feed, bytes(pcm))
                    since_partial_ms += len(pcm) / 2 / SAMPLE_RATE * 1000
                    if since_partial_ms >= PARTIAL_EVERY_MS:
                        since_partial_ms = 0.0
                        text = await asyncio.to_thread(utt.partial)
                        if text and text != last_partial:
                            last_partial = text
                            self.send(pb.ServerMessage(transcript=pb.Transcript(
                                text=text, final=False, turn=utt_turn)))
                    if pending_finish is not None:
                        if isinstance(pending_finish, _AsrStop):
                            break
                        # Only a finish can follow feeds of the same turn.
                        op = pending_finish
                if isinstance(op, _AsrFinish) and utt is not None:
                    closed_at = time.monotonic()
                    result = await asyncio.to_thread(utt.finish)
                    asr_ms = (time.monotonic() - closed_at) * 1000
                    utt = None
                    self.send(pb.ServerMessage(transcript=pb.Transcript(
                        text=result.text, final=True, turn=utt_turn)))
                    await self.turns.put(_ClosedTurn(utt_turn, result, op.speech_end_ms,
                                                     closed_at, asr_ms))
        finally:
            if utt is not None:
                await asyncio.to_thread(utt.abort)
            await self.turns.put(None)

    # turn worker ---------------------------------------------------------
    async def turn_worker(self) -> None:
        while True:
            closed = await self.turns.get()
            if closed is None:
                return
            try:
                await self._answer(closed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (one bad turn must not end the call)
                log.warning("call %s turn %d failed: %s", self.call_id, closed.turn, exc)
                self.send(error_message(TURN_FAILED, f"turn {closed.turn}: {exc}"))
                self.send(pb.ServerMessage(turn_end=closed.turn))

    async def _answer(self, closed: _ClosedTurn) -> None:
        turn = closed.turn
        t0 = time.monotonic()
        text = await self.options.reply.reply(closed.result.text, self.conversation)
        t1 = time.monotonic()
        self.conversation.add("user", closed.result.text)
        self.conversation.add("assistant", text)
        self.send(pb.ServerMessage(reply=pb.Reply(text=text, turn=turn)))
        pcm = await self.options.tts.speak(text)
        t2 = time.monotonic()
        reply_ms, tts_ms = (t1 - t0) * 1000, (t2 - t1) * 1000
        self.send(pb.ServerMessage(timings=pb.TurnTimings(
            turn=turn, speech_end_ms=closed.speech_end_ms,
            # From the VAD closing the turn to the reply audio being ready,
            # including any wait behind the previous turn's playback.
            processing_ms=(t2 - closed.closed_at) * 1000,
            asr_ms=closed.asr_ms, reply_ms=reply_ms, tts_ms=tts_ms)))
        await self._play(turn, pcm)
        self.send(pb.ServerMessage(turn_end=turn))

    async def _play(self, turn: int, pcm: bytes) -> None:
        lead_s = self.options.audio_lead_ms / 1000
        start = time.monotonic()
        for seq, frame in enumerate(chunks(pcm)):
            if turn <= self.barged_through:
                return
            # Chunk seq is due at start + seq*20 ms; send it up to lead early.
            delay = start + seq * CHUNK_MS / 1000 - lead_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                if turn <= self.barged_through:
                    return
            self.send(pb.ServerMessage(audio=pb.AudioChunk(
                pcm=frame, sample_rate=SAMPLE_RATE, seq=seq)))


class VoiceModelServicer(pb_grpc.VoiceModelServicer):
    def __init__(self, options: ModelOptions) -> None:
        self.options = options
        self.active = 0

    async def converse(
        self, request_iterator: AsyncIterator[pb.ClientMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ServerMessage]:
        if self.active >= self.options.max_streams:
            yield error_message(BUSY, f"model is at its limit of {self.options.max_streams} calls")
            return
        self.active += 1
        try:
            async for msg in self._serve_stream(request_iterator):
                yield msg
        finally:
            self.active -= 1

    # grpc finds the handler by the rpc's name in voice.proto.
    Converse = converse

    async def _serve_stream(
        self, requests: AsyncIterator[pb.ClientMessage]
    ) -> AsyncIterator[pb.ServerMessage]:
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        if not (first.WhichOneof("kind") == "control"
                and first.control.WhichOneof("kind") == "start"):
            got = first.WhichOneof("kind") or "an empty message"
            if got == "control":
                got = f"control {first.control.WhichOneof('kind') or '(empty)'}"
            yield error_message(BAD_FIRST_MESSAGE,
                                f"first message must be Control.start, got {got}")
            return
        stream = _Stream(self.options, first.control.start.call_id)
        tasks = [asyncio.create_task(self._read(stream, requests), name="model-reader"),
                 asyncio.create_task(stream.asr_worker(), name="model-asr"),
                 asyncio.create_task(stream.turn_worker(), name="model-turns")]
        done_task = asyncio.create_task(self._close_when_done(stream, tasks))
        try:
            while True:
                msg = await stream.out.get()
                if msg is None:
                    return
                yield msg
        finally:
            for t in (*tasks, done_task):
                t.cancel()
            await asyncio.gather(*tasks, done_task, return_exceptions=True)

    async def _close_when_done(self, stream: _Stream, tasks: list[asyncio.Task[None]]) -> None:
        # The stream ends when the turn worker has answered every turn (after
        # end of input), or when any task fails.
        try:
            for fut in asyncio.as_completed(tasks):
                try:
                    await fut
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.exception("call %s failed", stream.call_id)
                    stream.send(error_message(INTERNAL, f"model stream failed: {exc}"))
                    return
                if tasks[2].done():
                    return
        finally:
            stream.out.put_nowait(None)

    async def _read(self, stream: _Stream, requests: AsyncIterator[pb.ClientMessage]) -> None:
        try:
            async for msg in requests:
                kind = msg.WhichOneof("kind")
                if kind == "audio":
                    await stream.on_audio(msg.audio)
                elif kind == "control":
                    ctl = msg.control.WhichOneof("kind")
                    if ctl == "barge_in":
                        stream.barge_in()
                    elif ctl == "end_of_input":
                        break
                    elif ctl == "start":
                        stream.send(error_message(BAD_MESSAGE, "Control.start sent twice; ignored"))
                    else:
                        stream.send(error_message(BAD_MESSAGE, "empty Control message; ignored"))
                else:
                    stream.send(error_message(BAD_MESSAGE, "empty ClientMessage; ignored"))
        finally:
            # Also when the client half-closes without end_of_input: answer
            # what was said, then end the stream.
            await stream.end_of_input()


@contextlib.asynccontextmanager
async def serve_model(listen: str = "127.0.0.1:0",
                      options: ModelOptions | None = None,
                      grace_s: float = 1.0) -> AsyncIterator[str]:
    """Run the model server until the block exits; yields the bound "host:port".

    ``listen`` with port 0 picks a free port. Active streams get ``grace_s`` to
    finish on exit, then are cancelled.
    """
    options = options or ModelOptions()
    addr = parse_hostport(listen, allow_zero=True, what="listen address")
    server = grpc.aio.server()
    _add_servicer(VoiceModelServicer(options), server)
    port = server.add_insecure_port(str(addr))
    if port == 0:
        raise OSError(f"cannot listen on {addr}")
    warm = getattr(options.asr, "warm_up", None)
    if warm is not None:
        await asyncio.to_thread(warm)
    await server.start()
    try:
        yield str(addr._replace(port=port))
    finally:
        await server.stop(grace_s)
        close = getattr(options.reply, "close", None)
        if close is not None:
            await close()
