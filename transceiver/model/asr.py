# SPDX-License-Identifier: Apache-2.0
"""Speech recognition behind a small protocol, with an offline pocketsphinx default.

An ``Asr`` opens one ``Utterance`` per turn. The server feeds it 16 kHz s16le
PCM as the caller speaks (so decoding overlaps speech), asks for ``partial()``
text now and then, and calls ``finish()`` when the VAD closes the turn. The
calls are blocking and CPU-bound; the server runs them in a worker thread, one
utterance at a time per stream.

The pocketsphinx wheel ships its en-us acoustic model, dictionary and language
model, so nothing is downloaded. Its free-form (n-gram) transcript of espeak-ng
speech is poor, so two modes exist:

- ``free``: the wheel's en-us n-gram language model.
- ``grammar``: a JSGF grammar of assistant phrases (``ASSISTANT_PHRASES``)
  decoded live, then checked: the grammar result is kept only if the decoder
  reached the end of a whole grammar sentence and its pronunciation agrees with
  a free phone-loop decode of the same audio (phone error rate at most
  ``MAX_PHONE_ERROR``). A grammar forces every sound onto some phrase; the
  phone loop does not, so disagreement means "not one of our phrases", and the
  buffered audio is decoded again in free mode (the fallback).
"""

from __future__ import annotations

import contextlib
import queue
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeGuard

from pocketsphinx import Decoder, get_model_path

AsrMode = Literal["grammar", "free"]
ASR_MODES: tuple[AsrMode, ...] = ("grammar", "free")

# Phrase templates in JSGF's own syntax: (a | b) is a choice, [x] is optional.
# They are the assistant's intents; add lines here to teach it more.
ASSISTANT_PHRASES: tuple[str, ...] = (
    "hello [how are you]",
    "hi there",
    "good (morning | afternoon | evening)",
    "turn (on | off) the lights [in the (kitchen | living room | bedroom | bathroom | office)]",
    "what is the weather [like] [today | tomorrow]",
    ("set a timer for (one | two | three | four | five | ten | fifteen | twenty | thirty)"
     " (minute | minutes | second | seconds)"),
    "play some music",
    "stop the music",
    "what time is it",
    "what can you do",
    "tell me a joke",
    "call my (mother | father | friend)",
    "(goodbye | thank you | thanks)",
)

MAX_PHONE_ERROR = 0.9
"""Grammar results whose phones differ from the phone-loop decode by more than
this fraction (edit distance / grammar phones) are rejected. Measured on
espeak-ng speech: in-grammar sentences score 0.55-0.85, out-of-grammar ones
forced onto a phrase score 1.0 and above (bench/asr_wer.py)."""

_NON_SPEECH_PHONES = frozenset({"SIL", "+SPN+", "+NSN+", "+BREATH+", "+NOISE+"})
_TOKEN = re.compile(r"\(|\)|\[|\]|\||[a-z']+")


@dataclass(frozen=True)
class AsrResult:
    text: str
    """Lower-case words, space separated; "" when nothing was recognised."""
    source: str
    """Which decode produced ``text``: "grammar", "free" or "fallback"."""


class Utterance(Protocol):
    def feed(self, pcm: bytes) -> None:
        """Add 16 kHz mono s16le PCM (any length, whole samples)."""

    def partial(self) -> str:
        """Best guess so far ("" if none)."""

    def finish(self) -> AsrResult:
        """End the utterance and return the final transcript. Call once."""

    def abort(self) -> None:
        """Drop the utterance without a result (the stream ended mid-turn)."""


class Asr(Protocol):
    name: str

    def open(self) -> Utterance:
        """Start one utterance."""


def grammar_to_jsgf(phrases: tuple[str, ...] = ASSISTANT_PHRASES, name: str = "assistant") -> str:
    """One public rule: a choice between the phrase templates."""
    for phrase in phrases:
        _template_regex(phrase)  # validates the template
    body = "\n  | ".join(f"( {p} )" for p in phrases)
    return f"#JSGF V1.0;\ngrammar {name};\npublic <utterance> =\n    {body};\n"


def _template_regex(template: str) -> str:
    """The template as a regex over space-terminated words ("a b " matches "a b")."""
    out: list[str] = []
    stack: list[str] = []
    for tok in _TOKEN.findall(template.lower()):
        if tok in "([":
            stack.append(tok)
            out.append("(?:")
        elif tok in ")]":
            if not stack or {"(": ")", "[": "]"}[stack.pop()] != tok:
                raise ValueError(f"unbalanced {tok!r} in phrase template {template!r}")
            out.append(")" if tok == ")" else ")?")
        elif tok == "|":
            out.append("|")
        else:
            out.append(re.escape(tok) + " ")
    if stack:
        raise ValueError(f"unclosed {stack[-1]!r} in phrase template {template!r}")
    return "".join(out)


def grammar_matcher(phrases: tuple[str, ...] = ASSISTANT_PHRASES) -> re.Pattern[str]:
    """A regex that fully matches ``" ".join(words) + " "`` for a whole grammar sentence."""
    return re.compile("(?:" + "|".join(f"(?:{_template_regex(p)})" for p in phrases) + ")")


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance: insertions, deletions and substitutions of whole items."""
    prev = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        cur = [i]
        for j, h in enumerate(hypothesis, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


def phone_error_rate(reference: list[str], hypothesis: list[str]) -> float:
    """Levenshtein distance / len(reference); len(hypothesis) if reference is empty."""
    if not reference:
        return float(len(hypothesis))
    return edit_distance(reference, hypothesis) / len(reference)


def _clean(hypstr: str) -> str:
    # Alternate pronunciations come back as "word(2)"; fillers as <sil>, [noise].
    words = []
    for raw in hypstr.split():
        word = re.sub(r"\(\d+\)$", "", raw)
        if word.startswith(("<", "[", "+")):
            continue
        words.append(word.lower())
    return " ".join(words)


class _Hypothesis(Protocol):
    hypstr: str


class _Decoder(Protocol):
    """The part of ``pocketsphinx.Decoder`` used here (the wheel has no type hints)."""

    def add_jsgf_string(self, name: str, jsgf: str, /) -> None: ...
    def add_allphone_file(self, name: str, lmfile: str, /) -> None: ...
    def activate_search(self, name: str | None = None, /) -> None: ...
    def start_utt(self) -> None: ...
    def process_raw(self, data: bytes, /) -> int: ...
    def end_utt(self) -> None: ...
    def hyp(self) -> _Hypothesis | None: ...
    def lookup_word(self, word: str, /) -> str | None: ...


class _DecoderPool:
    """Reusable pocketsphinx decoders: loading one takes ~0.3 s, so streams share.

    A decoder is held by one utterance at a time; at most ``max_idle`` idle ones
    are kept.
    """

    def __init__(self, mode: AsrMode, max_idle: int = 4) -> None:
        self.mode = mode
        self._idle: queue.LifoQueue[_Decoder] = queue.LifoQueue(maxsize=max_idle)

    def _new(self) -> _Decoder:
        # FATAL: pocketsphinx logs every rejected grammar path as an ERROR.
        decoder: _Decoder = Decoder(loglevel="FATAL")
        if self.mode == "grammar":
            decoder.add_jsgf_string("grammar", grammar_to_jsgf())
            decoder.add_allphone_file("phones", get_model_path("en-us/en-us-phone.lm.bin"))
        return decoder

    def get(self) -> _Decoder:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self._new()

    def put(self, decoder: _Decoder) -> None:
        with contextlib.suppress(queue.Full):  # enough idle ones: let this one go
            self._idle.put_nowait(decoder)


class PocketsphinxUtterance:
    def __init__(self, pool: _DecoderPool) -> None:
        self._pool = pool
        self._decoder = pool.get()
        self._mode = pool.mode
        self._audio = bytearray()
        self._done = False
        d = self._decoder
        d.activate_search("grammar" if self._mode == "grammar" else None)
        d.start_utt()

    def feed(self, pcm: bytes) -> None:
        if self._done:
            raise RuntimeError("utterance already finished")
        if len(pcm) % 2:
            raise ValueError(f"PCM must be whole 16-bit samples, got {len(pcm)} bytes")
        self._audio += pcm
        self._decoder.process_raw(pcm)

    def partial(self) -> str:
        hyp = self._decoder.hyp()
        return _clean(hyp.hypstr) if hyp else ""

    def _decode(self, search: str | None) -> str:
        d = self._decoder
        d.activate_search(search)
        d.start_utt()
        # 20 ms pieces, as in the live decode: pocketsphinx's result on one
        # whole-utterance call differs (and is worse) on this audio.
        audio = bytes(self._audio)
        for i in range(0, len(audio), 640):
            d.process_raw(audio[i:i + 640])
        d.end_utt()
        hyp = d.hyp()
        return hyp.hypstr if hyp else ""

    def _phones(self, text: str) -> list[str]:
        phones: list[str] = []
        for word in text.split():
            pron = self._decoder.lookup_word(word)
            phones += pron.split() if pron else []
        return phones

    def finish(self) -> AsrResult:
        if self._done:
            raise RuntimeError("utterance already finished")
        self._done = True
        d = self._decoder
        try:
            d.end_utt()
            hyp = d.hyp()
            text = _clean(hyp.hypstr) if hyp else ""
            if self._mode == "free":
                return AsrResult(text, "free")
            if text and _MATCHER.fullmatch(text + " "):
                loop = [p for p in self._decode("phones").split() if p not in _NON_SPEECH_PHONES]
                if phone_error_rate(self._phones(text), loop) <= MAX_PHONE_ERROR:
                    return AsrResult(text, "grammar")
            return AsrResult(_clean(self._decode(None)), "fallback")
        finally:
            self._release()

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._decoder.end_utt()
        finally:
            self._release()

    def _release(self) -> None:
        self._audio.clear()
        self._pool.put(self._decoder)


_MATCHER = grammar_matcher()


def is_asr_mode(name: str) -> TypeGuard[AsrMode]:
    return name in ASR_MODES


class PocketsphinxAsr:
    """Offline en-us ASR from the pocketsphinx wheel; ``mode`` is "grammar" or "free"."""

    def __init__(self, mode: str = "grammar") -> None:
        if not is_asr_mode(mode):
            raise ValueError(f"unknown ASR mode {mode!r}; known: {', '.join(ASR_MODES)}")
        self.mode: AsrMode = mode
        self.name = f"pocketsphinx-{mode}"
        self._pool = _DecoderPool(mode)

    def warm_up(self) -> None:
        """Load one decoder now, so the first call does not pay for it."""
        self._pool.put(self._pool.get())

    def open(self) -> Utterance:
        return PocketsphinxUtterance(self._pool)


def transcribe(asr: Asr, pcm: bytes, chunk_bytes: int = 640) -> AsrResult:
    """Decode a whole recording as one utterance, fed in 20 ms chunks (for benches and tests)."""
    utt = asr.open()
    try:
        for i in range(0, len(pcm), chunk_bytes):
            utt.feed(pcm[i:i + chunk_bytes])
    except BaseException:
        utt.abort()
        raise
    return utt.finish()
