# SPDX-License-Identifier: Apache-2.0
"""espeak-ng synthesis at 16 kHz, resampling, framing."""

from __future__ import annotations

import numpy as np
import pytest

from transceiver.model import speech
from transceiver.model.speech import CHUNK_BYTES, SAMPLE_RATE


def test_synthesize_gives_16k_speech() -> None:
    pcm, rate = speech.synthesize("hello there")
    assert rate == SAMPLE_RATE
    assert len(pcm) % 2 == 0
    seconds = len(pcm) / 2 / SAMPLE_RATE
    assert 0.4 < seconds < 3.0
    assert speech.rms(pcm) > 500


async def test_synthesize_async_matches_sync() -> None:
    a, _ = speech.synthesize("play some music")
    b, _ = await speech.synthesize_async("play some music")
    assert a == b


def test_empty_text_is_empty_audio() -> None:
    assert speech.synthesize("  ") == (b"", SAMPLE_RATE)


def test_text_starting_with_dash_is_spoken_not_parsed() -> None:
    pcm, _ = speech.synthesize("-v is not an option here")
    assert speech.rms(pcm) > 500


def test_resample_keeps_tone_frequency() -> None:
    src_rate = 22050
    t = np.arange(src_rate) / src_rate
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    out = speech.resample(tone, src_rate, SAMPLE_RATE)
    assert abs(out.size - SAMPLE_RATE) <= 1
    spectrum = np.abs(np.fft.rfft(out.astype(np.float64)))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / out.size
    assert abs(peak_hz - 440) < 2


def test_resample_removes_what_16k_cannot_carry() -> None:
    src_rate = 22050
    t = np.arange(src_rate) / src_rate
    hiss = (8000 * np.sin(2 * np.pi * 10000 * t)).astype(np.int16)  # above 8 kHz Nyquist
    out = speech.resample(hiss, src_rate, SAMPLE_RATE)
    assert speech.rms(out.tobytes()) < 0.05 * speech.rms(hiss.tobytes())


def test_resample_rejects_bad_rates() -> None:
    with pytest.raises(ValueError, match=r"sample rates must be positive, got 0 -> 16000"):
        speech.resample(np.zeros(4, np.int16), 0)


def test_chunks_pad_last() -> None:
    parts = list(speech.chunks(b"\x01" * (CHUNK_BYTES + 10)))
    assert [len(p) for p in parts] == [CHUNK_BYTES, CHUNK_BYTES]
    assert parts[1] == b"\x01" * 10 + bytes(CHUNK_BYTES - 10)


def test_rms() -> None:
    assert speech.rms(b"") == 0.0
    assert speech.rms(bytes(640)) == 0.0
    assert speech.rms(np.full(10, -300, "<i2").tobytes()) == pytest.approx(300)


def test_espeak_wav_errors() -> None:
    with pytest.raises(speech.SpeechError, match="did not produce a WAV stream"):
        speech._decode_espeak_wav(b"nope" * 20)


def test_wav_round_trip(tmp_path) -> None:
    pcm = np.arange(-100, 100, dtype="<i2").tobytes()
    speech.write_wav(tmp_path / "a.wav", pcm)
    assert speech.read_wav(tmp_path / "a.wav") == (pcm, SAMPLE_RATE)
