# SPDX-License-Identifier: Apache-2.0
"""The call's receive packet path: Opus RTP payloads in, 16 kHz chunks out.

aiortc's receive path for each inbound packet is: a hop to its decoder
thread (``queue.Queue``: a ``Condition`` wait and notify per packet), libopus
through ffmpeg at 48 kHz stereo (ffmpeg's libopus wrapper decodes at 48 kHz
whatever the caller wants), a hop back to the event loop
(``run_coroutine_threadsafe``: a coroutine, a future and a self-pipe wake-up
per frame), then ``media.PcmChunker``'s numpy 48 -> 16 kHz decimation.
libopus itself decodes at 16 kHz mono directly (RFC 6716: any of 8, 12, 16,
24, 48 kHz), in well under the cost of one thread hop, so ``OpusReceive``
does that in the event loop, on the packet as the transceiver's jitter buffer
hands it on (``ice.receive_audio_payloads``): no thread, no resampler, no
AudioFrame.

libopus is reached through ctypes, on the copy PyAV bundles (the same
library ``media.OpusPackets`` encodes with, pinned with av in pyproject.toml),
or the system's when PyAV has none beside it.

Loss: the jitter buffer hands packets on in sequence order and skips the ones
it gave up on. A gap in the RTP timestamps of up to ``MAX_CONCEAL_FRAMES``
frames is filled with libopus's packet loss concealment, so the model's
audio keeps its clock; a longer gap (a sender that stopped, DTX) is skipped.
Every missing frame, bad payload and out-of-order packet is counted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from pathlib import Path

import av

from transceiver.media import CHUNK_BYTES, CHUNK_SAMPLES, SAMPLE_RATE

RTP_CLOCK = 48000
"""Opus's RTP clock whatever the decoded rate (RFC 7587)."""
_TICKS_PER_SAMPLE = RTP_CLOCK // SAMPLE_RATE  # 3
FRAME_TICKS = CHUNK_SAMPLES * _TICKS_PER_SAMPLE  # 960: one 20 ms frame
MAX_PACKET_SAMPLES = SAMPLE_RATE * 120 // 1000
"""The longest Opus packet (120 ms) at 16 kHz: the decode buffer's size."""
MAX_CONCEAL_FRAMES = 5
"""Missing 20 ms frames (100 ms) filled by libopus's concealment; a longer gap
is skipped, as the stream has stopped rather than lost a packet."""
RESYNC_FRAMES = 50
"""A forward timestamp jump of more than 1 s is a restarted stream, not loss:
counted as a resync, its frames not as lost."""

_OPUS_OK = 0


@functools.cache
def libopus() -> ctypes.CDLL:
    """The libopus shared library, with the decoder functions typed."""
    bundled = sorted((Path(av.__file__).parent.parent / "av.libs").glob("libopus*.so*"))
    path = str(bundled[0]) if bundled else ctypes.util.find_library("opus")
    if path is None:
        raise RuntimeError("libopus not found: neither bundled with PyAV (av.libs/) "
                           "nor installed on the system (libopus.so.0)")
    lib = ctypes.CDLL(path)
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_decoder_destroy.restype = None
    lib.opus_decode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32,
                                ctypes.POINTER(ctypes.c_int16), ctypes.c_int, ctypes.c_int]
    lib.opus_decode.restype = ctypes.c_int
    lib.opus_strerror.argtypes = [ctypes.c_int]
    lib.opus_strerror.restype = ctypes.c_char_p
    return lib


def _strerror(code: int) -> str:
    message: bytes = libopus().opus_strerror(code)
    return message.decode()


class OpusDecoder16k:
    """One libopus decoder at 16 kHz mono (its state carries between packets)."""

    def __init__(self) -> None:
        lib = libopus()
        error = ctypes.c_int(0)
        handle = lib.opus_decoder_create(SAMPLE_RATE, 1, ctypes.byref(error))
        if error.value != _OPUS_OK or not handle:
            raise RuntimeError(f"opus_decoder_create failed: {_strerror(error.value)}")
        self._lib = lib
        self._handle: int | None = handle
        self._pcm = (ctypes.c_int16 * MAX_PACKET_SAMPLES)()

    def decode(self, payload: bytes) -> bytes:
        """One Opus packet -> its s16le PCM at 16 kHz mono.

        Raises ValueError for an empty or undecodable packet (libopus's reason).
        """
        if not payload:
            raise ValueError("empty Opus payload")
        return self._run(payload, MAX_PACKET_SAMPLES)

    def conceal(self, samples: int = CHUNK_SAMPLES) -> bytes:
        """``samples`` of libopus's packet loss concealment (a multiple of 2.5 ms)."""
        return self._run(None, samples)

    def _run(self, payload: bytes | None, samples: int) -> bytes:
        if self._handle is None:
            raise ValueError("Opus decoder is closed")
        size = len(payload) if payload is not None else 0
        got = self._lib.opus_decode(self._handle, payload, size, self._pcm, samples, 0)
        if got < 0:
            raise ValueError(f"Opus packet of {size} bytes did not decode: {_strerror(got)}")
        return ctypes.string_at(self._pcm, got * 2)

    def close(self) -> None:
        if self._handle is not None:
            self._lib.opus_decoder_destroy(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.close()


class OpusReceive:
    """One call's inbound Opus packets (in sequence order, with their RTP
    timestamps) in; each exact 20 ms 16 kHz mono chunk (640 bytes) goes to
    ``on_chunk`` as soon as its packet is decoded.

    Counters (never reset): ``packets`` pushed, ``chunks`` given out,
    ``lost`` frames missing or undecodable (of which ``concealed`` were filled
    by libopus's concealment), ``bad_payloads`` (empty or undecodable
    packets), ``late`` (a packet at or behind one already decoded: dropped) and
    ``resyncs`` (a jump of more than ``RESYNC_FRAMES`` frames, or backwards by
    more than that: the stream restarted).
    """

    def __init__(self, on_chunk: Callable[[bytes], None], *,
                 max_conceal: int = MAX_CONCEAL_FRAMES) -> None:
        self.on_chunk = on_chunk
        self.max_conceal = max_conceal
        self.decoder = OpusDecoder16k()
        self._next_ts: int | None = None  # RTP timestamp the next packet should carry
        self._pending = bytearray()  # PCM short of a whole chunk (packets not of 20 ms)
        self.packets = 0
        self.chunks = 0
        self.lost = 0
        self.concealed = 0
        self.bad_payloads = 0
        self.late = 0
        self.resyncs = 0

    def counters(self) -> dict[str, int]:
        return {"packets": self.packets, "chunks": self.chunks, "lost": self.lost,
                "concealed": self.concealed, "bad_payloads": self.bad_payloads,
                "late": self.late, "resyncs": self.resyncs}

    def push(self, payload: bytes, timestamp: int) -> None:
        """One packet's Opus payload and its RTP timestamp (48 kHz clock)."""
        self.packets += 1
        timestamp &= 0xFFFFFFFF
        if self._next_ts is not None:
            ahead = (timestamp - self._next_ts) & 0xFFFFFFFF
            behind = (self._next_ts - timestamp) & 0xFFFFFFFF
            if 0 < behind <= RESYNC_FRAMES * FRAME_TICKS:
                self.late += 1
                return
            if ahead > RESYNC_FRAMES * FRAME_TICKS and behind > RESYNC_FRAMES * FRAME_TICKS:
                self.resyncs += 1
            elif ahead:
                self._fill_gap(ahead // FRAME_TICKS)
        try:
            pcm = self.decoder.decode(payload)
        except ValueError:
            # Its slot is concealed as a loss when the next packet shows the gap.
            self.bad_payloads += 1
            return
        self._next_ts = (timestamp + len(pcm) // 2 * _TICKS_PER_SAMPLE) & 0xFFFFFFFF
        self._emit(pcm)

    def _fill_gap(self, frames: int) -> None:
        self.lost += frames
        if frames > self.max_conceal:
            return
        for _ in range(frames):
            self.concealed += 1
            self._emit(self.decoder.conceal())

    def _emit(self, pcm: bytes) -> None:
        if len(pcm) == CHUNK_BYTES and not self._pending:
            self.chunks += 1
            self.on_chunk(pcm)
            return
        self._pending += pcm
        while len(self._pending) >= CHUNK_BYTES:
            chunk = bytes(self._pending[:CHUNK_BYTES])
            del self._pending[:CHUNK_BYTES]
            self.chunks += 1
            self.on_chunk(chunk)

    def close(self) -> None:
        self.decoder.close()
