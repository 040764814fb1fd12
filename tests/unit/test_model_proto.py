# SPDX-License-Identifier: Apache-2.0
"""voice.proto: messages survive serialization, and the committed stubs match the .proto."""

from __future__ import annotations

from pathlib import Path

import pytest

from transceiver.model import genproto
from transceiver.model import voice_pb2 as pb

MESSAGES = [
    pb.ClientMessage(control=pb.Control(start=pb.Start(
        call_id="c-1", language="en-US", options={"asr": "grammar", "voice": "en-us"}))),
    pb.ClientMessage(control=pb.Control(end_of_input=True)),
    pb.ClientMessage(control=pb.Control(barge_in=True)),
    pb.ClientMessage(audio=pb.AudioChunk(pcm=bytes(range(256)) * 2 + bytes(128),
                                         sample_rate=16000, seq=2**40)),
    pb.ServerMessage(audio=pb.AudioChunk(pcm=b"\x01\x00" * 320, sample_rate=16000, seq=7)),
    pb.ServerMessage(transcript=pb.Transcript(text="turn on the lights", final=True, turn=3)),
    pb.ServerMessage(transcript=pb.Transcript(text="turn on", final=False, turn=3)),
    pb.ServerMessage(reply=pb.Reply(text="You said: hello", turn=1)),
    pb.ServerMessage(timings=pb.TurnTimings(turn=1, speech_end_ms=2340.0, processing_ms=127.5,
                                            asr_ms=109.25, reply_ms=0.5, tts_ms=18.0)),
    pb.ServerMessage(error=pb.ModelError(code="bad_audio", message="dropped")),
    pb.ServerMessage(turn_end=4),
]


@pytest.mark.parametrize(
    "msg", MESSAGES, ids=lambda m: f"{type(m).__name__}.{m.WhichOneof('kind')}")
def test_round_trip(msg) -> None:
    data = msg.SerializeToString()
    back = type(msg).FromString(data)
    assert back == msg
    assert back.WhichOneof("kind") == msg.WhichOneof("kind")
    # Map entries have no wire order; deterministic mode sorts them by key.
    assert back.SerializeToString(deterministic=True) == msg.SerializeToString(deterministic=True)


def test_oneof_keeps_only_last_kind() -> None:
    msg = pb.ServerMessage(turn_end=1)
    msg.reply.text = "x"
    assert msg.WhichOneof("kind") == "reply"
    assert pb.ServerMessage.FromString(msg.SerializeToString()).turn_end == 0


def test_committed_stubs_match_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (test extra) regenerates the stubs")
    generated = genproto.generate(tmp_path)
    for name, content in generated.items():
        committed = (genproto.MODEL_DIR / name).read_bytes()
        assert committed == content, (
            f"transceiver/model/{name} differs from protoc output for voice.proto: "
            "run python -m transceiver.model.genproto")
