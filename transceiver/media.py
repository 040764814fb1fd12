# SPDX-License-Identifier: Apache-2.0
"""Audio between aiortc and the model: 16 kHz mono s16le, 20 ms chunks.

Inbound: aiortc's Opus decoder gives 48 kHz stereo frames; ``PcmChunker``
resamples them and cuts exact 640-byte chunks, and ``pcm_chunks`` is the one
loop that reads a track that way (the aiortc test clients in lab/ and bench/
use it; the transceiver's calls decode the Opus packets themselves, at 16 kHz
in the event loop: transceiver/rxopus.py). 48 kHz is decimated by 3 with a
short FIR whose history is carried between frames, so a 20 ms frame gives its
20 ms chunk at once (libswresample held part of each frame back until the
next one, ~20 ms per stage). Outbound: ``ReplyTrack`` is an aiortc audio track
that plays queued model audio and silence otherwise, paced on an absolute
clock (start + n * 20 ms) so it neither gaps nor drifts; when reply audio
arrives while the track idles, the frame being waited for is sent at once and
the clock restarts from it, so the first reply frame does not wait for a tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

SAMPLE_RATE = 16000
CHUNK_MS = 20
CHUNK_SAMPLES = SAMPLE_RATE * CHUNK_MS // 1000  # 320
CHUNK_BYTES = CHUNK_SAMPLES * 2  # 640
SILENCE = bytes(CHUNK_BYTES)
OPUS_RATE = 48000
"""What aiortc's Opus encoder takes: a track that gives it 48 kHz stereo frames
passes its resampler untouched (libswresample held ~a frame back otherwise)."""


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


def _decimation_filter(factor: int, taps: int = 31) -> npt.NDArray[np.float64]:
    """Hann-windowed sinc low-pass at 0.9 x the output Nyquist."""
    cutoff = 0.9 / (2 * factor)
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hanning(taps)
    return np.asarray(h / h.sum(), dtype=np.float64)


class Decimator:
    """Integer-ratio downsampling of mono float samples, streaming.

    Each ``push`` returns every output sample its input completes; the FIR's
    history (taps - 1 input samples) is kept, never future input.
    """

    def __init__(self, factor: int, taps: int = 31) -> None:
        self.factor = factor
        self._h = _decimation_filter(factor, taps)
        self._hist = np.zeros(taps - 1)
        self._phase = 0  # input samples to skip before the next output

    def push(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self.factor == 1:
            return x
        buf = np.concatenate([self._hist, x])
        filtered = np.convolve(buf, self._h, mode="valid")  # one per input sample
        out = filtered[self._phase::self.factor]
        self._phase = (self._phase - filtered.size) % self.factor
        self._hist = buf[buf.size - (self._h.size - 1):]
        return np.asarray(out, dtype=np.float64)


class Interpolator:
    """Integer-ratio upsampling of int16 mono, streaming: zero-stuff, then the
    ``Decimator``'s low-pass with its history carried, so every frame gives
    its output at once."""

    def __init__(self, factor: int, taps: int = 31) -> None:
        self.factor = factor
        self._h = _decimation_filter(factor, taps) * factor
        self._hist = np.zeros(taps - 1)

    def push(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        stuffed = np.zeros(x.size * self.factor)
        stuffed[::self.factor] = x
        buf = np.concatenate([self._hist, stuffed])
        self._hist = buf[buf.size - (self._h.size - 1):]
        return np.asarray(np.convolve(buf, self._h, mode="valid"), dtype=np.float64)


def opus_frame(pcm: bytes, pts: int, up: Interpolator) -> av.AudioFrame:
    """One 20 ms 16 kHz mono chunk as a 48 kHz stereo s16 AudioFrame (pts in 48 kHz)."""
    y = up.push(np.frombuffer(pcm, dtype="<i2").astype(np.float64))
    s16 = np.clip(np.round(y), -32768, 32767).astype("<i2")
    frame = av.AudioFrame.from_ndarray(np.repeat(s16, 2)[None, :], format="s16", layout="stereo")
    frame.pts = pts
    frame.sample_rate = OPUS_RATE
    frame.time_base = fractions.Fraction(1, OPUS_RATE)
    return frame


OPUS_BITRATE = 32000
"""Bits per second of the transceiver's own Opus encoder: 16 kHz mono speech
(aiortc's 96 kbit/s is for 48 kHz stereo music)."""
RTP_TIME_BASE = fractions.Fraction(1, OPUS_RATE)
"""Opus's RTP clock is 48 kHz whatever the encoded bandwidth (RFC 7587)."""


class OpusPackets:
    """20 ms 16 kHz mono PCM in, Opus packets out, on the caller's thread.

    aiortc's own path for a frame is: its audio-level measure (numpy), a hop
    to the thread pool, libswresample to 48 kHz stereo, and libopus at 48 kHz
    stereo; for the model's 16 kHz mono voice that is an upsampling nobody
    hears and a thread hop per frame. libopus takes 16 kHz mono as it is, and
    the packets decode at any rate. A silent frame is not encoded at all: its
    packet is made once (libopus's own encoding of digital silence) and sent
    again with the next timestamp, so an idle call costs no codec time.
    """

    def __init__(self, bitrate: int = OPUS_BITRATE) -> None:
        self.codec = av.CodecContext.create("libopus", "w")
        self.codec.bit_rate = bitrate
        self.codec.format = "s16"
        self.codec.layout = "mono"
        self.codec.sample_rate = SAMPLE_RATE
        self.codec.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self.codec.options = {"application": "voip"}
        self.codec.open()
        self._silence = self._encode_silence()
        self.encoded = 0
        """Frames that went through libopus (silent ones do not)."""

    @staticmethod
    def _encode_silence() -> bytes:
        codec = av.CodecContext.create("libopus", "w")
        codec.bit_rate = OPUS_BITRATE
        codec.format, codec.layout, codec.sample_rate = "s16", "mono", SAMPLE_RATE
        codec.time_base = fractions.Fraction(1, SAMPLE_RATE)
        packets: list[av.Packet[Any]] = []
        for pts in range(0, 10 * CHUNK_SAMPLES, CHUNK_SAMPLES):  # past libopus's start-up
            packets += codec.encode(pcm_frame(SILENCE, pts))
        if not packets:
            raise RuntimeError("libopus gave no packet for 200 ms of silence")
        return bytes(packets[-1])

    def packet(self, pcm: bytes | None, pts: int) -> av.Packet[Any]:
        """The packet for one 20 ms chunk at ``pts`` (16 kHz samples); ``None``
        is silence. Stamped in the 48 kHz RTP clock, as aiortc's ``pack`` wants."""
        payload = self._silence
        if pcm is not None:
            self.encoded += 1
            out = self.codec.encode(pcm_frame(pcm, pts))
            # libopus gives one packet per 20 ms frame here (frame size = our
            # chunk); should it ever hold one back, that slot carries silence.
            if out:
                payload = bytes(out[0])
        packet = av.Packet(payload)
        packet.pts = pts * (OPUS_RATE // SAMPLE_RATE)
        packet.time_base = RTP_TIME_BASE
        return packet


class PcmChunker:
    """Any aiortc AudioFrame in, exact 20 ms 16 kHz mono chunks out.

    Rates that are a whole multiple of 16 kHz (48 kHz: Opus) go through
    ``Decimator``, which holds nothing back; others through libswresample.
    """

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._decimator: Decimator | None = None
        self._rate = 0
        self._pending = bytearray()

    def _to_16k(self, frame: av.AudioFrame) -> bytes:
        rate = frame.sample_rate
        if rate != self._rate:
            self._rate = rate
            self._decimator = Decimator(rate // SAMPLE_RATE) if rate % SAMPLE_RATE == 0 else None
            self._resampler = None
        if self._decimator is None:
            if self._resampler is None:
                self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            return b"".join(out.to_ndarray().tobytes() for out in self._resampler.resample(frame))
        x = frame.to_ndarray().astype(np.float64)
        channels = len(frame.layout.channels)
        if frame.format.is_planar:
            x = x.reshape(channels, -1).mean(axis=0)
        else:
            x = x.reshape(-1, channels).mean(axis=1)
        if frame.format.name.startswith(("flt", "dbl")):
            x = x * 32768.0
        y = self._decimator.push(x)
        return np.clip(np.round(y), -32768, 32767).astype("<i2").tobytes()

    def push(self, frame: av.AudioFrame) -> list[bytes]:
        self._pending += self._to_16k(frame)
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

    def __init__(self, on_segment_start: Callable[[float], None] | None = None,
                 rate: int = SAMPLE_RATE, *, encoded: bool = False) -> None:
        """``rate`` 16000 gives 16 kHz mono frames; ``OPUS_RATE`` 48 kHz stereo,
        which aiortc's Opus encoder takes without resampling (the test clients
        use it). ``encoded``: give Opus packets (``OpusPackets``) instead of
        frames, which aiortc sends as they are (calls use it)."""
        super().__init__()
        if rate not in (SAMPLE_RATE, OPUS_RATE):
            raise ValueError(f"ReplyTrack rate must be {SAMPLE_RATE} or {OPUS_RATE}, got {rate}")
        self._opus = OpusPackets() if encoded else None
        self._up = (Interpolator(OPUS_RATE // SAMPLE_RATE)
                    if rate == OPUS_RATE and not encoded else None)
        self._queue: deque[bytes | None] = deque()
        self._start: float | None = None
        self._pts = 0
        self._in_segment = False
        self._queued = 0
        self.on_segment_start = on_segment_start
        self.frames_sent = 0
        self.audio_frames_sent = 0
        self._arrived = asyncio.Event()

    @property
    def playing(self) -> bool:
        """Whether reply audio is still waiting to be played."""
        return self._queued > 0

    def push(self, pcm: bytes) -> None:
        chunks = split_chunks(pcm)
        self._queue.extend(chunks)
        self._queued += len(chunks)
        self._arrived.set()

    def end_segment(self) -> None:
        self._queue.append(None)

    def flush(self) -> int:
        dropped = self._queued
        self._queue.clear()
        self._queued = 0
        self._in_segment = False
        return dropped

    async def recv(self) -> av.AudioFrame | av.Packet[Any]:
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
                if self._queued or self._in_segment:
                    await asyncio.sleep(wait)
                else:
                    # Idle (silence): a reply's first chunk goes out as soon
                    # as it is pushed, and the schedule restarts from now.
                    self._arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._arrived.wait(), wait)
                    if self._queued:
                        self._start = time.monotonic() - self._pts / SAMPLE_RATE
        pcm: bytes | None = None
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
        if self._opus is not None:
            return self._opus.packet(pcm, self._pts)
        if self._up is not None:
            return opus_frame(pcm or SILENCE, self._pts * self._up.factor, self._up)
        return pcm_frame(pcm or SILENCE, self._pts)
