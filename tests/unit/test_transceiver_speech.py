# SPDX-License-Identifier: Apache-2.0
"""A spoken sentence through the whole transceiver with the real default model.

espeak-ng says an assistant phrase; the aiortc client sends it as its
microphone through the HTTP API and the loopback relay stand-in (the XDP
relay path is tests/netns); the default model (Silero VAD -> Whisper -> echo ->
espeak-ng) answers. We assert the transcript's words, that the reply is
audible, and the per-turn timings events.
"""

from __future__ import annotations

import shutil

import pytest

from lab.client import place_call
from tests.unit.transceiver_harness import LoopbackRelay, start_transceiver
from transceiver.model.server import ModelOptions, serve_model
from transceiver.model.speech import synthesize
from voxrelay.directory.memory import MemoryDirectory

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("espeak-ng") is None,
                       reason="espeak-ng is not installed (scripts/setup.sh installs it)"),
]


async def test_spoken_sentence_gives_transcript_and_audible_reply(tmp_path) -> None:
    pcm, _ = synthesize("what time is it")
    directory = MemoryDirectory()
    relay = LoopbackRelay((await directory.ensure_keyring()).active_keys())
    relay_addr = await relay.start()
    async with serve_model("127.0.0.1:0", ModelOptions()) as model_target:
        service = await start_transceiver(directory, [relay_addr], model_target)
        try:
            result = await place_call(service.url, pcm, "secret", timeout=60,
                                      reply_wav=tmp_path / "reply.wav")
        finally:
            await service.stop(0.5)
            relay.close()
    words = result.transcript.lower().split()
    assert {"what", "time"} <= set(words), result.events
    assert "time" in result.reply.lower()
    assert result.reply_peak > 1000  # not silence
    assert (tmp_path / "reply.wav").stat().st_size > 44 + 16000  # > 0.5 s of audio
    timings = result.of_type("timings")
    assert any(t.get("processing_ms", 0) > 0 for t in timings)
    assert any(t.get("first_audio_ms", -1) >= 0 for t in timings)
    assert relay.counters["new_flow"] == 1
    assert relay.counters["drop_bad_token"] == 0
