# SPDX-License-Identifier: Apache-2.0
"""Text to speech behind a small protocol, with Debian's espeak-ng as the default."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from transceiver.model.speech import (
    SAMPLE_RATE,
    SpeechError,
    Voice,
    synthesize_async,
    synthesize_stream,
)


class Tts(Protocol):
    name: str

    async def speak(self, text: str) -> bytes:
        """``text`` as 16 kHz mono s16le PCM ("" gives b"")."""

    def stream(self, text: str) -> AsyncIterator[bytes]:
        """``text`` as 16 kHz mono s16le PCM in pieces, the first as soon as it exists."""


class EspeakTts:
    """espeak-ng run as a subprocess per reply (offline; ~50 ms for a sentence, first
    audio after ~30 ms when streamed)."""

    def __init__(self, voice: Voice | None = None) -> None:
        voice = voice or Voice()
        self.voice = voice
        self.name = f"espeak-ng:{voice.name}"

    async def speak(self, text: str) -> bytes:
        pcm, rate = await synthesize_async(text, self.voice)
        if rate != SAMPLE_RATE:  # synthesize_async resamples to it; the API promises it
            raise SpeechError(f"espeak-ng PCM is {rate} Hz, want {SAMPLE_RATE}")
        return pcm

    def stream(self, text: str) -> AsyncIterator[bytes]:
        return synthesize_stream(text, self.voice)
