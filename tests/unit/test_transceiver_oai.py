# SPDX-License-Identifier: Apache-2.0
"""A client on the oai-events channel: session.update changes the call's silence timeout.

The caller says "turn on the lights", pauses 600 ms, then "in the kitchen".
At the default 250 ms end-of-turn silence that is two turns; after the
client's session.update sets turn_detection.silence_duration_ms to 1000 it
is one. The events come back in OpenAI Realtime's names.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from lab.client import CallClient
from tests.unit.transceiver_harness import LoopbackRelay, start_transceiver
from transceiver.model.server import ModelOptions, serve_model
from transceiver.model.speech import synthesize
from voxrelay.directory.memory import MemoryDirectory

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("espeak-ng") is None,
                       reason="espeak-ng is not installed (scripts/setup.sh installs it)"),
]


class OaiClient(CallClient):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.oai_events: list[dict[str, Any]] = []
        self.oai = self.pc.createDataChannel("oai-events")
        self.oai.on("message", self._on_oai)

    def _on_oai(self, message: str | bytes) -> None:
        self.oai_events.append(json.loads(message))
        self._on_message(json.dumps({"type": "oai"}))  # wakes wait_for

    def oai_types(self) -> list[str]:
        return [e["type"] for e in self.oai_events]


async def test_session_update_from_the_client_changes_the_silence_timeout() -> None:
    a, _ = synthesize("turn on the lights")
    b, _ = synthesize("in the kitchen")
    speech = bytes(6400) + a + bytes(int(0.6 * 32000)) + b + bytes(int(1.5 * 32000))
    directory = MemoryDirectory()
    relay = LoopbackRelay((await directory.ensure_keyring()).active_keys())
    relay_addr = await relay.start()
    async with serve_model("127.0.0.1:0", ModelOptions()) as model_target:
        service = await start_transceiver(directory, [relay_addr], model_target)
        try:
            async with OaiClient(service.url, "secret", 60) as client:
                await client.wait_event("model", state="connected")
                await client.wait_for(lambda: client.oai.readyState == "open", "oai-events open",
                                      poll=True)
                client.oai.send(json.dumps({"type": "session.update", "session": {
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 1000}}}))
                await client.wait_for(lambda: "session.updated" in client.oai_types(),
                                      "session.updated")
                await client.say_and_wait_reply(speech)
                await client.wait_for(lambda: "response.done" in client.oai_types(),
                                      "response.done")
        finally:
            await service.stop(0.5)
            relay.close()
    finals = [e["text"] for e in client.events if e.get("type") == "transcript" and e["final"]]
    assert len(finals) == 1, finals
    assert {"lights", "kitchen"} <= set(finals[0].split())
    types = client.oai_types()
    for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                 "conversation.item.input_audio_transcription.completed",
                 "response.output_audio_transcript.delta", "response.done"):
        assert kind in types, types
    assert types.count("input_audio_buffer.speech_started") == 1
    completed = next(e for e in client.oai_events
                     if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert completed["transcript"] == finals[0]
