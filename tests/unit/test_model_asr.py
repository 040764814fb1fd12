# SPDX-License-Identifier: Apache-2.0
"""Offline ASR: the grammar, the phone-consistency check, and real decodes of espeak-ng speech."""

from __future__ import annotations

import re

import pytest

from transceiver.model import asr
from transceiver.model.speech import chunks, synthesize
from transceiver.model.vad import Event, TurnDetector, VadSettings


def test_grammar_matcher_accepts_whole_phrases_only() -> None:
    m = asr.grammar_matcher(("turn (on | off) the lights [in the (kitchen | living room)]",))
    assert m.fullmatch("turn on the lights ")
    assert m.fullmatch("turn off the lights in the living room ")
    assert not m.fullmatch("turn on the ")
    assert not m.fullmatch("turn on the lights in the ")
    assert not m.fullmatch("turn up the lights ")


def test_jsgf_has_every_phrase() -> None:
    jsgf = asr.grammar_to_jsgf(("hello", "good (morning | evening)"))
    assert jsgf.startswith("#JSGF V1.0;\ngrammar assistant;\npublic <utterance> =")
    assert "( hello )" in jsgf
    assert "( good (morning | evening) )" in jsgf


@pytest.mark.parametrize(("template", "message"), [
    ("turn (on | off the lights", "unclosed '(' in phrase template 'turn (on | off the lights'"),
    ("turn on] the lights", "unbalanced ']' in phrase template 'turn on] the lights'"),
    ("turn (on ] the", "unbalanced ']' in phrase template 'turn (on ] the'"),
])
def test_bad_template(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        asr.grammar_to_jsgf((template,))


def test_edit_distance() -> None:
    assert asr.edit_distance("kitten", "sitting") == 3
    assert asr.edit_distance(["a", "b"], []) == 2
    assert asr.edit_distance([], ["a"]) == 1
    assert asr.edit_distance(["turn", "on", "the", "lights"], ["turn", "the", "light"]) == 2


def test_phone_error_rate() -> None:
    assert asr.phone_error_rate(["a", "b", "c", "d"], ["a", "b", "c", "d"]) == 0
    assert asr.phone_error_rate(["a", "b", "c", "d"], ["a", "x", "c"]) == 0.5
    assert asr.phone_error_rate([], ["a", "b"]) == 2.0


def test_unknown_mode() -> None:
    message = "unknown ASR mode 'whisper'; known: grammar, free"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        asr.PocketsphinxAsr("whisper")


@pytest.fixture(scope="module")
def grammar_asr() -> asr.PocketsphinxAsr:
    return asr.PocketsphinxAsr("grammar")


def test_grammar_mode_recognises_an_assistant_phrase(grammar_asr) -> None:
    pcm, _ = synthesize("turn on the lights in the kitchen")
    result = asr.transcribe(grammar_asr, pcm)
    assert result == asr.AsrResult("turn on the lights in the kitchen", "grammar")


def test_grammar_mode_falls_back_for_other_speech(grammar_asr) -> None:
    # Not a grammar phrase: the forced grammar match must be rejected and the
    # free decode used, whatever words that finds.
    pcm, _ = synthesize("my cat likes to sleep on the sofa")
    result = asr.transcribe(grammar_asr, pcm)
    assert result.source == "fallback"
    assert "sofa" in result.text.split()


def test_free_mode_gets_key_words() -> None:
    pcm, _ = synthesize("what is the weather today")
    result = asr.transcribe(asr.PocketsphinxAsr("free"), pcm)
    assert result.source == "free"
    assert {"what", "weather"} <= set(result.text.split())


def test_utterance_rejects_use_after_finish(grammar_asr) -> None:
    utt = grammar_asr.open()
    utt.feed(bytes(640))
    utt.finish()
    with pytest.raises(RuntimeError, match="utterance already finished"):
        utt.feed(bytes(640))
    with pytest.raises(RuntimeError, match="utterance already finished"):
        utt.finish()


def test_utterance_rejects_odd_bytes(grammar_asr) -> None:
    utt = grammar_asr.open()
    try:
        with pytest.raises(ValueError, match="PCM must be whole 16-bit samples, got 3 bytes"):
            utt.feed(b"abc")
    finally:
        utt.abort()


def test_vad_finds_one_turn_in_speech_between_silences() -> None:
    pcm, _ = synthesize("hello how are you")
    det = TurnDetector(VadSettings(end_silence_ms=400))
    events = []
    for frame in chunks(bytes(16000) + pcm + bytes(32000)):
        event, _frames = det.push(frame)
        if event in (Event.START, Event.END):
            events.append(event)
    assert events == [Event.START, Event.END]


def test_vad_silence_is_no_turn() -> None:
    det = TurnDetector()
    assert all(det.push(bytes(640)) == (None, []) for _ in range(100))
    assert det.flush() is False


def test_vad_settings_validated() -> None:
    with pytest.raises(ValueError, match=re.escape("VAD threshold 1.5 must be in (0.15, 1)")):
        VadSettings(threshold=1.5)
    with pytest.raises(ValueError, match="VAD frame must be 640 bytes, got 320"):
        TurnDetector().push(bytes(320))
