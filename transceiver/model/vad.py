# SPDX-License-Identifier: Apache-2.0
"""Turn detection: webrtcvad over 20 ms frames, with start and end hysteresis."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

import webrtcvad

from transceiver.model.speech import CHUNK_BYTES, CHUNK_MS, SAMPLE_RATE


@dataclass(frozen=True)
class VadSettings:
    aggressiveness: int = 2
    """webrtcvad mode 0-3; higher rejects more non-speech."""
    start_frames: int = 3
    """Speech frames among the last ``start_window`` that open a turn (60 ms)."""
    start_window: int = 5
    end_silence_ms: int = 500
    """Non-speech that closes a turn. Shorter cuts speakers off mid-sentence;
    longer adds straight to the reply latency."""
    preroll_ms: int = 200
    """Audio before the detected start that still goes to ASR (word onsets are quiet)."""
    max_turn_ms: int = 15000
    """A turn is closed after this long even if the caller keeps talking."""

    def __post_init__(self) -> None:
        if not 0 <= self.aggressiveness <= 3:
            raise ValueError(f"VAD aggressiveness {self.aggressiveness} must be 0..3")
        if not 1 <= self.start_frames <= self.start_window:
            raise ValueError("VAD start_frames must be 1..start_window")
        if self.end_silence_ms < CHUNK_MS or self.max_turn_ms < CHUNK_MS:
            raise ValueError(f"VAD end_silence_ms and max_turn_ms must be >= {CHUNK_MS}")


class Event(Enum):
    START = "start"
    """A turn opened; the frames returned with it are the pre-roll plus this frame."""
    SPEECH = "speech"
    """A frame inside an open turn."""
    END = "end"
    """The turn closed; the frame returned with it is the last one of the turn."""


class TurnDetector:
    """Feed 20 ms frames; get (event, frames for ASR) back."""

    def __init__(self, settings: VadSettings = VadSettings()) -> None:
        self.settings = settings
        self._vad = webrtcvad.Vad(settings.aggressiveness)
        self._recent: deque[bool] = deque(maxlen=settings.start_window)
        self._preroll: deque[bytes] = deque(maxlen=max(1, settings.preroll_ms // CHUNK_MS))
        self.in_turn = False
        self._silent = 0
        self._turn_frames = 0

    def push(self, frame: bytes) -> tuple[Event | None, list[bytes]]:
        if len(frame) != CHUNK_BYTES:
            raise ValueError(f"VAD frame must be {CHUNK_BYTES} bytes, got {len(frame)}")
        speech = self._vad.is_speech(frame, SAMPLE_RATE)
        s = self.settings
        if not self.in_turn:
            self._recent.append(speech)
            if sum(self._recent) >= s.start_frames:
                self.in_turn = True
                self._silent = 0
                frames = [*self._preroll, frame]
                self._turn_frames = len(frames)
                self._preroll.clear()
                self._recent.clear()
                return Event.START, frames
            self._preroll.append(frame)
            return None, []
        self._turn_frames += 1
        self._silent = 0 if speech else self._silent + 1
        if (self._silent * CHUNK_MS >= s.end_silence_ms
                or self._turn_frames * CHUNK_MS >= s.max_turn_ms):
            self.in_turn = False
            self._silent = 0
            return Event.END, [frame]
        return Event.SPEECH, [frame]

    def flush(self) -> bool:
        """End of input: True if a turn was open (the caller should close it)."""
        was_open = self.in_turn
        self.in_turn = False
        self._preroll.clear()
        self._recent.clear()
        return was_open
