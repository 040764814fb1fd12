# SPDX-License-Identifier: Apache-2.0
"""Audio between aiortc and the model: 16 kHz mono s16le, 20 ms chunks.

Inbound: aiortc's Opus decoder gives 48 kHz stereo frames; ``PcmChunker``
resamples them and cuts exact 640-byte chunks, and ``pcm_chunks`` is the one
loop that reads a track that way (the transceiver's calls and the aiortc
test clients in lab/ and bench/ all use it). Outbound: ``ReplyTrack`` is an
aiortc audio track that plays queued model audio and silence otherwise, paced
on an absolute clock (start + n * 20 ms) so it neither gaps nor drifts.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

SAMPLE_RATE = 16000
CHUNK_MS = 20
CHUNK_SAMPLES = SAMPLE_RATE * CHUNK_MS // 1000  # 320
CHUNK_BYTES = CHUNK_SAMPLES * 2  # 640
SILENCE = bytes(CHUNK_BYTES)


def split_chunks(pcm: bytes) -> list[bytes]:
    """Cut s16le PCM into 640-byte chunks, zero-padding the last one."""
    if len(pcm) % 2:
        raise ValueError(f"PCM must be whole 16-bit samples, got {len(pcm)} bytes")
    chunks = [pcm[i : i + CHUNK_BYTES] for i in range(0, len(pcm), CHUNK_BYTES)]
    if chunks and len(chunks[-1]) < CHUNK_BYTES:
        chunks[-1] = chunks[-1] + bytes(CHUNK_BYTES - len(chunks[-1]))
    return chunks


def pcm_frame(pcm: bytes, pts: int) -> av.AudioFrame:
    """One 20 ms 16 kHz mono s16 AudioFrame holding ``pcm`` (640 bytes)."""
    frame = av.AudioFrame(format="s16", layout="mono", samples=CHUNK_SAMPLES)
    frame.planes[0].update(pcm)
    frame.pts = pts
    frame.sample_rate = SAMPLE_RATE
    frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
    return frame


async def recv_audio(track: MediaStreamTrack) -> av.AudioFrame:
    """The next frame of an audio track.

    aiortc types ``recv()`` as any frame or packet; its audio tracks decode to
    AudioFrames only, so anything else is a broken track and stops the reader.
    Raises MediaStreamError when the track ends, as ``recv()`` does.
    """
    frame = await track.recv()
    if not isinstance(frame, av.AudioFrame):
        raise TypeError(f"audio track {track.id} gave a {type(frame).__name__}, not an AudioFrame")
    return frame


class PcmChunker:
    """Any aiortc AudioFrame in, exact 20 ms 16 kHz mono chunks out."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._pending = bytearray()

    def push(self, frame: av.AudioFrame) -> list[bytes]:
        for out in self._resampler.resample(frame):
            self._pending += out.to_ndarray().tobytes()
        chunks = []
        while len(self._pending) >= CHUNK_BYTES:
            chunks.append(bytes(self._pending[:CHUNK_BYTES]))
            del self._pending[:CHUNK_BYTES]
        return chunks


async def pcm_chunks(
    track: MediaStreamTrack, *, on_frame: Callable[[float], bool] | None = None
) -> AsyncIterator[tuple[float, bytes]]:
    """``(arrived_at, chunk)`` for every 20 ms 16 kHz mono chunk of an audio
    track, until the track ends. ``arrived_at`` is the ``time.monotonic()``
    at which the frame carrying the chunk arrived.

    ``on_frame(arrived_at)`` sees every frame first; when it returns False
    the frame is not decoded into chunks (a client that only times frames
    saves the resampling).
    """
    chunker = PcmChunker()
    while True:
        try:
            frame = await recv_audio(track)
        except MediaStreamError:
            return
        arrived_at = time.monotonic()
        if on_frame is not None and not on_frame(arrived_at):
            continue
        for chunk in chunker.push(frame):
            yield arrived_at, chunk


class ReplyTrack(MediaStreamTrack):
    """The call's outbound audio: the model's reply, or silence when idle.

    ``push`` queues model audio; ``end_segment`` marks the end of a reply
    turn; ``flush`` drops what is queued (barge-in). ``on_segment_start`` is
    called with the monotonic time at which the first chunk of a reply is
    handed to the encoder, which is when the caller starts hearing it.
    """

    kind = "audio"

    def __init__(self, on_segment_start: Callable[[float], None] | None = None) -> None:
        super().__init__()
        self._queue: deque[bytes | None] = deque()
        self._start: float | None = None
        self._pts = 0
        self._in_segment = False
        self._queued = 0
        self.on_segment_start = on_segment_start
        self.frames_sent = 0
        self.audio_frames_sent = 0

    @property
    def playing(self) -> bool:
        """Whether reply audio is still waiting to be played."""
        return self._queued > 0

    def push(self, pcm: bytes) -> None:
        chunks = split_chunks(pcm)
        self._queue.extend(chunks)
        self._queued += len(chunks)

    def end_segment(self) -> None:
        self._queue.append(None)

    def flush(self) -> int:
        dropped = self._queued
        self._queue.clear()
        self._queued = 0
        self._in_segment = False
        return dropped

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += CHUNK_SAMPLES
            # An absolute schedule: a late wake-up shortens the next sleep
            # instead of accumulating drift.
            wait = self._start + self._pts / SAMPLE_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        pcm = SILENCE
        while self._queue:
            item = self._queue.popleft()
            if item is None:
                self._in_segment = False
                continue
            if not self._in_segment:
                self._in_segment = True
                if self.on_segment_start is not None:
                    self.on_segment_start(time.monotonic())
            pcm = item
            self._queued -= 1
            self.audio_frames_sent += 1
            break
        self.frames_sent += 1
        return pcm_frame(pcm, self._pts)
