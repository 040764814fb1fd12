# SPDX-License-Identifier: Apache-2.0
"""Turn detection: the Silero VAD (ONNX, run with onnxruntime) over 20 ms frames.

The Silero VAD network ships inside the ``faster-whisper`` wheel
(``faster_whisper/assets/silero_vad_v6.onnx``); only the file is used, through
onnxruntime directly, so faster-whisper's own transcribe code is never loaded.

Silero scores 512-sample (32 ms) windows with 64 samples of context and an LSTM
state carried between windows. The server frames audio in 20 ms chunks, so
``SileroVad`` buffers samples and scores each complete window as it arrives;
a 20 ms frame is "speech" by the latest window's probability, with Silero's
usual hysteresis (``threshold`` to enter speech, ``threshold - 0.15`` to leave).
Nothing waits for audio that has not arrived: a frame's decision uses the
windows completed by the end of that frame.
"""

from __future__ import annotations

import functools
import importlib.util
from collections import deque
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from transceiver.model.speech import CHUNK_BYTES, CHUNK_MS, SAMPLE_RATE

WINDOW = 512
"""Samples Silero scores at a time at 16 kHz (32 ms)."""
CONTEXT = 64
"""Samples of the previous window prepended to each one (Silero v5/v6)."""
_STATE_SHAPE = (1, 1, 128)
"""The LSTM's h and c (faster-whisper's v6 export takes them apart, no ``sr``)."""


class VadError(RuntimeError):
    """The VAD model file or onnxruntime is missing; the message says which."""


def silero_path() -> Path:
    """Where the faster-whisper wheel keeps the Silero VAD ONNX file."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise VadError("the Silero VAD ships in the faster-whisper package, which is not "
                       "installed (pip install faster-whisper)")
    assets = Path(next(iter(spec.submodule_search_locations))) / "assets"
    found = sorted(assets.glob("silero_vad*.onnx"))
    if not found:
        raise VadError(f"no silero_vad*.onnx under {assets}")
    return found[-1]


@functools.lru_cache(maxsize=4)
def _session(path: str) -> Any:
    # One session per file for the whole process: onnxruntime's run() is
    # thread-safe, and the per-stream LSTM state lives in SileroVad.
    try:
        import onnxruntime  # noqa: PLC0415 (optional at import time; a clear error instead)
    except ImportError as exc:
        raise VadError("onnxruntime is not installed (pip install onnxruntime)") from exc
    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 4
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"],
                                        sess_options=opts)


class SileroVad:
    """Streaming speech probability for 16 kHz s16le PCM; one per stream."""

    def __init__(self, path: Path | None = None) -> None:
        self._session = _session(str(path or silero_path()))
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self.probability = 0.0
        """The latest window's speech probability."""

    def push(self, pcm: bytes) -> list[float]:
        """Add PCM; returns the probability of every window it completed."""
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        self._pending = np.concatenate([self._pending, x])
        probs: list[float] = []
        while self._pending.size >= WINDOW:
            window, self._pending = self._pending[:WINDOW], self._pending[WINDOW:]
            inp = np.concatenate([self._context, window])[None, :]
            out, self._h, self._c = self._session.run(
                None, {"input": inp, "h": self._h, "c": self._c})
            self._context = window[-CONTEXT:]
            self.probability = float(np.asarray(out).reshape(-1)[0])
            probs.append(self.probability)
        return probs


def speech_ms(pcm: bytes, threshold: float = 0.5, path: Path | None = None) -> float:
    """Milliseconds of ``pcm`` that Silero scores as speech (fresh state)."""
    probs = SileroVad(path).push(pcm)
    return sum(p >= threshold for p in probs) * WINDOW * 1000 / SAMPLE_RATE


@dataclass(frozen=True)
class VadSettings:
    threshold: float = 0.5
    """Silero speech probability that counts as speech; it takes
    ``threshold - 0.15`` to count as silence again (hysteresis)."""
    start_frames: int = 3
    """Speech frames among the last ``start_window`` that open a turn (60 ms)."""
    start_window: int = 5
    end_silence_ms: int = 250
    """Non-speech that closes a turn. Shorter cuts speakers off mid-sentence;
    longer adds straight to the reply latency. A client changes it per call
    (session.update's turn_detection.silence_duration_ms)."""
    preroll_ms: int = 200
    """Audio before the detected start that still goes to ASR (word onsets are quiet)."""
    max_turn_ms: int = 15000
    """A turn is closed after this long even if the caller keeps talking."""

    def __post_init__(self) -> None:
        if not 0.15 < self.threshold < 1:
            raise ValueError(f"VAD threshold {self.threshold} must be in (0.15, 1)")
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

    def __init__(self, settings: VadSettings = VadSettings(), vad: SileroVad | None = None) -> None:
        self.settings = settings
        self._vad = vad or SileroVad()
        self._recent: deque[bool] = deque(maxlen=settings.start_window)
        self._preroll: deque[bytes] = deque(maxlen=max(1, settings.preroll_ms // CHUNK_MS))
        self.in_turn = False
        self._speaking = False
        self._silent = 0
        self._turn_frames = 0
        self.silence_frames = 0
        """Frames of non-speech at the end of the open turn so far."""
        self.last_silence_frames = 0
        """Frames of non-speech that closed the last turn."""

    def set_end_silence(self, ms: int) -> None:
        """Change the end-of-turn silence for the turns to come (and the open one)."""
        s = self.settings
        self.settings = VadSettings(s.threshold, s.start_frames, s.start_window, ms,
                                    s.preroll_ms, s.max_turn_ms)

    def _is_speech(self, frame: bytes) -> bool:
        self._vad.push(frame)
        p, th = self._vad.probability, self.settings.threshold
        self._speaking = p >= th if not self._speaking else p >= th - 0.15
        return self._speaking

    def push(self, frame: bytes) -> tuple[Event | None, list[bytes]]:
        if len(frame) != CHUNK_BYTES:
            raise ValueError(f"VAD frame must be {CHUNK_BYTES} bytes, got {len(frame)}")
        speech = self._is_speech(frame)
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
        self.silence_frames = self._silent
        if (self._silent * CHUNK_MS >= s.end_silence_ms
                or self._turn_frames * CHUNK_MS >= s.max_turn_ms):
            self.in_turn = False
            self.last_silence_frames = self._silent
            self._silent = self.silence_frames = 0
            return Event.END, [frame]
        return Event.SPEECH, [frame]

    def flush(self) -> bool:
        """End of input: True if a turn was open (the caller should close it)."""
        was_open = self.in_turn
        self.in_turn = False
        self._preroll.clear()
        self._recent.clear()
        return was_open


def pcm_to_float(pcm: bytes) -> npt.NDArray[np.float32]:
    """s16le PCM as float32 in [-1, 1)."""
    return np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float32) / 32768.0
