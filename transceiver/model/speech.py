# SPDX-License-Identifier: Apache-2.0
"""Speech audio helpers: espeak-ng synthesis at 16 kHz, PCM framing and levels.

Everything that crosses the model API is 16 kHz mono s16le in 20 ms chunks
(voice.proto). espeak-ng speaks at 22050 Hz, so its output is resampled here
with a windowed-sinc low-pass and linear interpolation in numpy: no sox or scipy
at run time, and the same helper makes test and demo WAVs for the caller.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16000
"""The model API's sample rate (voice.proto)."""
CHUNK_MS = 20
CHUNK_SAMPLES = SAMPLE_RATE * CHUNK_MS // 1000
CHUNK_BYTES = CHUNK_SAMPLES * 2
"""One 20 ms chunk of s16le mono at 16 kHz: 640 bytes."""

ESPEAK = "espeak-ng"
MAX_TEXT_CHARS = 2000
"""Longer replies are cut: a voice turn is never that long, and espeak time grows with text."""
ESPEAK_TIMEOUT_S = 20.0


class SpeechError(RuntimeError):
    """espeak-ng is missing or failed; the message says which."""


@dataclass(frozen=True)
class Voice:
    name: str = "en-us"
    """espeak-ng voice (``espeak-ng --voices`` lists them)."""
    words_per_minute: int = 160
    """espeak-ng -s."""


def _espeak_argv(text: str, voice: Voice) -> list[str]:
    if shutil.which(ESPEAK) is None:
        raise SpeechError(f"{ESPEAK} is not installed (apt-get install espeak-ng)")
    # "--" keeps a reply that starts with "-" from being read as an option.
    return [ESPEAK, "--stdout", "-v", voice.name, "-s", str(voice.words_per_minute), "--",
            text[:MAX_TEXT_CHARS]]


def _decode_espeak_wav(data: bytes) -> tuple[npt.NDArray[np.int16], int]:
    # espeak-ng writes to a pipe, so the RIFF/data sizes in its header are
    # placeholders (0x7fffffff); parse the fmt chunk and take everything after
    # the "data" tag instead of trusting the wave module's frame count.
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SpeechError(f"{ESPEAK} did not produce a WAV stream ({len(data)} bytes)")
    pos = 12
    rate = 0
    while pos + 8 <= len(data):
        tag = data[pos:pos + 4]
        size = int.from_bytes(data[pos + 4:pos + 8], "little")
        body = pos + 8
        if tag == b"fmt ":
            channels = int.from_bytes(data[body + 2:body + 4], "little")
            rate = int.from_bytes(data[body + 4:body + 8], "little")
            bits = int.from_bytes(data[body + 14:body + 16], "little")
            if channels != 1 or bits != 16:
                raise SpeechError(f"{ESPEAK} WAV is {channels} ch/{bits} bit, want mono 16 bit")
        elif tag == b"data":
            if rate == 0:
                raise SpeechError(f"{ESPEAK} WAV has data before fmt")
            pcm = data[body:]
            pcm = pcm[: len(pcm) - len(pcm) % 2]
            return np.frombuffer(pcm, dtype="<i2"), rate
        pos = body + size + (size & 1)
    raise SpeechError(f"{ESPEAK} WAV has no data chunk")


def resample(samples: npt.NDArray[np.int16], src_rate: int,
             dst_rate: int = SAMPLE_RATE) -> npt.NDArray[np.int16]:
    """Resample int16 mono ``samples`` to ``dst_rate``; returns int16.

    Downsampling first low-passes at 0.9 x the new Nyquist (63-tap Hann-windowed
    sinc) so espeak's 8-11 kHz hiss does not alias into the speech band.
    """
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
    x = samples.astype(np.float64)
    if src_rate == dst_rate or x.size == 0:
        return samples.astype(np.int16)
    if dst_rate < src_rate:
        cutoff = 0.9 * dst_rate / 2 / src_rate  # cycles per input sample
        taps = 63
        n = np.arange(taps) - (taps - 1) / 2
        h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hanning(taps)
        h /= h.sum()
        x = np.convolve(x, h, mode="same")
    n_out = round(x.size * dst_rate / src_rate)
    t = np.arange(n_out, dtype=np.float64) * (src_rate / dst_rate)
    y = np.interp(t, np.arange(x.size), x)
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


class StreamResampler:
    """``resample`` for audio that arrives in pieces: each ``push`` returns what it can.

    The same low-pass (when downsampling) and linear interpolation as
    ``resample``, with the filter's history carried between pieces, so no
    piece waits for the next one beyond the filter's half length (31 input
    samples, 1.4 ms at 22050 Hz). ``flush`` ends the stream.
    """

    _TAPS = 63

    def __init__(self, src_rate: int, dst_rate: int = SAMPLE_RATE) -> None:
        if src_rate <= 0 or dst_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
        self.ratio = src_rate / dst_rate
        self._h: npt.NDArray[np.float64] | None = None
        if dst_rate < src_rate:
            cutoff = 0.9 * dst_rate / 2 / src_rate
            n = np.arange(self._TAPS) - (self._TAPS - 1) / 2
            h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hanning(self._TAPS)
            self._h = h / h.sum()
        half = (self._TAPS - 1) // 2 if self._h is not None else 0
        # Zero history stands in for the samples before the first one, as
        # np.convolve(mode="same") assumes.
        self._raw = np.zeros(half)
        self._filtered = np.zeros(0)
        self._base = 0  # input index of self._filtered[0]
        self._next = 0  # output samples produced so far

    def _filter(self, raw: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self._h is None:
            return raw
        return np.convolve(raw, self._h, mode="valid")

    def _emit(self, final: bool) -> npt.NDArray[np.int16]:
        end = self._base + self._filtered.size  # input samples available
        t = np.arange(self._next, self._next + int(end / self.ratio) + 2) * self.ratio
        t = t[(t <= end - 1) if final else (t < end - 1)]
        if t.size == 0:
            return np.zeros(0, dtype=np.int16)
        y = np.interp(t - self._base, np.arange(self._filtered.size), self._filtered)
        self._next += t.size
        keep = max(0, int(np.floor(self._next * self.ratio)) - 1 - self._base)
        self._filtered = self._filtered[keep:]
        self._base += keep
        out: npt.NDArray[np.int16] = np.clip(np.round(y), -32768, 32767).astype(np.int16)
        return out

    def push(self, samples: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        self._raw = np.concatenate([self._raw, samples.astype(np.float64)])
        need = self._TAPS if self._h is not None else 1
        if self._raw.size < need:
            return np.zeros(0, dtype=np.int16)
        self._filtered = np.concatenate([self._filtered, self._filter(self._raw)])
        self._raw = self._raw[self._raw.size - (need - 1):] if need > 1 else self._raw[:0]
        return self._emit(final=False)

    def flush(self) -> npt.NDArray[np.int16]:
        half = (self._TAPS - 1) // 2 if self._h is not None else 0
        if half:
            self._raw = np.concatenate([self._raw, np.zeros(half)])
            self._filtered = np.concatenate([self._filtered, self._filter(self._raw)])
            self._raw = self._raw[:0]
        return self._emit(final=True)


async def synthesize_stream(text: str, voice: Voice = Voice(),
                            piece_bytes: int = 4096) -> AsyncIterator[bytes]:
    """Like ``synthesize_async``, but yields 16 kHz PCM as espeak-ng writes it.

    espeak-ng writes its WAV to the pipe clause by clause, so the first
    clause's audio can play while the rest is synthesized.
    """
    if not text.strip():
        return
    proc = await asyncio.create_subprocess_exec(
        *_espeak_argv(text, voice), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None  # noqa: S101 (PIPE given)
    assert proc.stderr is not None  # noqa: S101
    try:
        async with asyncio.timeout(ESPEAK_TIMEOUT_S):
            head = bytearray()
            resampler: StreamResampler | None = None
            odd = b""
            while True:
                piece = await proc.stdout.read(piece_bytes)
                if not piece:
                    break
                if resampler is None:
                    head += piece
                    pos = head.find(b"data")
                    if pos < 0 or len(head) < pos + 8:
                        continue
                    _, rate = _decode_espeak_wav(bytes(head[:pos + 8]) + b"\0\0")
                    resampler = StreamResampler(rate)
                    piece = bytes(head[pos + 8:])
                data = odd + piece
                odd = data[len(data) - len(data) % 2:]
                data = data[:len(data) - len(data) % 2]
                out = resampler.push(np.frombuffer(data, dtype="<i2"))
                if out.size:
                    yield out.astype("<i2").tobytes()
            err = await proc.stderr.read()
            await proc.wait()
        if proc.returncode != 0:
            raise _exited(proc.returncode, err)
        if resampler is None:
            raise SpeechError(f"{ESPEAK} did not produce a WAV stream ({len(head)} bytes)")
        tail = resampler.flush()
        if tail.size:
            yield tail.astype("<i2").tobytes()
    except TimeoutError:
        raise _timed_out() from None
    finally:
        if proc.returncode is None:  # cancelled or failed: do not leave espeak-ng behind
            proc.kill()
            await proc.wait()


def _timed_out() -> SpeechError:
    return SpeechError(f"{ESPEAK} took longer than {ESPEAK_TIMEOUT_S:.0f} s")


def _exited(returncode: int | None, stderr: bytes) -> SpeechError:
    return SpeechError(f"{ESPEAK} exited {returncode}: {stderr.decode(errors='replace').strip()}")


def _to_pcm16k(wav_bytes: bytes) -> bytes:
    samples, rate = _decode_espeak_wav(wav_bytes)
    return resample(samples, rate).astype("<i2").tobytes()


def synthesize(text: str, voice: Voice = Voice()) -> tuple[bytes, int]:
    """Speak ``text`` with espeak-ng; returns (16 kHz mono s16le PCM, 16000)."""
    if not text.strip():
        return b"", SAMPLE_RATE
    try:
        proc = subprocess.run(_espeak_argv(text, voice), capture_output=True,
                              timeout=ESPEAK_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise _timed_out() from None
    if proc.returncode != 0:
        raise _exited(proc.returncode, proc.stderr)
    return _to_pcm16k(proc.stdout), SAMPLE_RATE


async def synthesize_async(text: str, voice: Voice = Voice()) -> tuple[bytes, int]:
    """``synthesize`` without blocking the event loop (espeak-ng runs as a subprocess)."""
    if not text.strip():
        return b"", SAMPLE_RATE
    proc = await asyncio.create_subprocess_exec(
        *_espeak_argv(text, voice), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), ESPEAK_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise _timed_out() from None
    finally:
        if proc.returncode is None:  # cancelled: do not leave espeak-ng behind
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise _exited(proc.returncode, err)
    # Resampling a few seconds of audio takes ~ms; not worth a thread hop.
    return _to_pcm16k(out), SAMPLE_RATE


def chunks(pcm: bytes, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Split PCM into ``size``-byte chunks, zero-padding the last one."""
    for i in range(0, len(pcm), size):
        part = pcm[i:i + size]
        yield part if len(part) == size else part + bytes(size - len(part))


def rms(pcm: bytes) -> float:
    """Root mean square of s16le PCM, in sample units (0 for silence)."""
    if len(pcm) < 2:
        return 0.0
    x = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x * x)))


def write_wav(path: Path | str, pcm: bytes, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono s16le PCM as a WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)


def read_wav(path: Path | str) -> tuple[bytes, int]:
    """Read a mono 16-bit WAV file; returns (PCM, sample rate)."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: want mono 16-bit WAV, got {w.getnchannels()} ch, "
                             f"{8 * w.getsampwidth()} bit")
        return w.readframes(w.getnframes()), w.getframerate()


def wav_bytes(pcm: bytes, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Mono s16le PCM as an in-memory WAV file."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return buf.getvalue()
