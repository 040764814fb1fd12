# SPDX-License-Identifier: Apache-2.0
"""A call's turns: what the model says, talking over it, and how long replies take.

``Turns`` is one call's conversation bookkeeping: the model's messages become
reply audio on the call's ``ReplyTrack`` and JSON events on its data channel;
a caller who speaks over a playing reply stops it (barge-in: the Silero VAD
the model detects turns with, run here on the inbound chunks so that no
round trip to the model delays it, or the model's own speech-started event or
a transcript arriving); and ``TurnClock`` measures how long the caller waited
for the reply.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from transceiver.media import CHUNK_MS, ReplyTrack
from transceiver.model import voice_pb2
from transceiver.model.vad import SileroVad

VAD_WARMUP_CHUNKS = 15
"""Chunks (300 ms) the barge-in VAD catches up on when a reply starts playing."""

Emit = Callable[[dict[str, Any]], None]


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
        # speech_end_ms is the stream time after the chunk that closed the
        # turn, so that chunk is the one before: the model may answer before
        # the next chunk has even been sent (a speculative decode does).
        at = self._arrived.get(int(speech_end_ms // CHUNK_MS) - 1)
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


class Turns:
    """One call's conversation: see the module docstring.

    ``emit`` sends an event to the caller; ``tell_model`` tells the model
    that the caller barged in. Both belong to the call, which outlives
    neither.
    """

    def __init__(self, track: ReplyTrack, emit: Emit, tell_model: Callable[[], None], *,
                 vad_mode: int, barge_in_frames: int) -> None:
        self.track = track
        self.emit = emit
        self.tell_model = tell_model
        self.clock = TurnClock()
        self.barge_ins = 0
        self.barge_in_frames = barge_in_frames
        if not 0 <= vad_mode <= 3:
            raise ValueError(f"vad_mode {vad_mode} must be 0..3")
        # vad_mode keeps its meaning (higher rejects more non-speech) as a
        # Silero probability threshold: 0.35, 0.45, 0.55, 0.65.
        self.vad_threshold = 0.35 + 0.1 * vad_mode
        self._vad = SileroVad()
        self._recent: deque[bytes] = deque(maxlen=VAD_WARMUP_CHUNKS)
        self._scoring = False
        self.vad_chunks = 0
        """Chunks the VAD scored as they came (warm-up chunks not counted)."""
        self._voiced = 0
        self._suppress_audio = False
        track.on_segment_start = self._on_segment_start

    # ------------------------------------------------------------ the caller

    def heard(self, chunk: bytes) -> None:
        """One inbound 20 ms chunk, before it goes to the model: over a
        playing reply, enough voiced chunks in a row are a barge-in.

        Only a playing reply can be barged into, so the VAD (a Silero run per
        32 ms, the largest cost of an idle call: bench/profiles) scores only
        then. While nothing plays the last ``VAD_WARMUP_CHUNKS`` are kept, and
        when a reply starts the VAD catches up on them first, so that its
        LSTM state follows the caller as if it had scored every chunk."""
        if not self.track.playing:
            self._voiced = 0
            self._scoring = False
            self._recent.append(chunk)
            return
        if not self._scoring:
            self._scoring = True
            self._vad.reset()
            self._vad.push(b"".join(self._recent))
            self._recent.clear()
        self.vad_chunks += 1
        self._vad.push(chunk)
        if self._vad.probability >= self.vad_threshold:
            self._voiced += 1
            if self._voiced >= self.barge_in_frames:
                self.barge_in("vad")
        else:
            self._voiced = 0

    def barge_in(self, source: str) -> None:
        dropped = self.track.flush()
        self._voiced = 0
        self._suppress_audio = True
        self.barge_ins += 1
        self.tell_model()
        self.emit({"type": "barge_in", "source": source, "dropped_ms": dropped * CHUNK_MS})

    # ------------------------------------------------------------ the model

    def on_model_state(self, state: str, detail: str) -> None:
        if state == "connected":
            self.clock.reset()
            self.emit({"type": "model", "state": "connected"})
        else:
            self.emit({"type": "error", "source": "model", "code": "model_unavailable",
                       "message": f"voice model unreachable, reconnecting: {detail}"})

    def on_model_message(self, message: voice_pb2.ServerMessage) -> None:
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
                "speech_end_ms": m.speech_end_ms, "vad_ms": m.vad_ms,
                "asr_wait_ms": m.asr_wait_ms,
            }
            first = self.clock.turn_closed(m.turn, m.speech_end_ms)
            if first is not None:
                event["first_audio_ms"] = first
            self.emit(event)
        elif kind == "error":
            self.emit({"type": "error", "source": "model", "code": message.error.code,
                       "message": message.error.message})
        elif kind == "speech":
            sp = message.speech
            if sp.started and self.track.playing:
                self.barge_in("vad")
            self.emit({"type": "speech", "started": sp.started, "turn": sp.turn,
                       "audio_ms": sp.audio_ms})
        elif kind == "turn_end":
            self._suppress_audio = False
            self.track.end_segment()
            self.emit({"type": "turn_end", "turn": message.turn_end})

    def _on_segment_start(self, at: float) -> None:
        # On the loop's clock, as the inbound chunks were stamped.
        result = self.clock.segment_started(asyncio.get_running_loop().time())
        if result is not None:
            turn, first = result
            self.emit({"type": "timings", "turn": turn, "first_audio_ms": first})
