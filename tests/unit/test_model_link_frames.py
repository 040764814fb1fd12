# SPDX-License-Identifier: Apache-2.0
"""ModelLink sends the caller's 20 ms frames to the model N to a message.

Against a real grpc.aio server that records every ClientMessage it reads: the
audio arrives whole and in order, in messages of ``frames_per_message`` frames
with seq 0, 1, 2...; a control message (barge-in, session update, the end of
input) is preceded by the frames waiting before it; the frame index that
``send_audio`` returns is the frame's position in the model's stream time;
(tests/unit/test_model_server.py: the model hears two-frame messages as it
hears single frames).
"""

from __future__ import annotations

import asyncio

import grpc.aio
import pytest

from tests.support import until_async
from transceiver.model import voice_pb2, voice_pb2_grpc
from transceiver.modellink import ModelLink, open_channel
from voxrelay.config import ConfigError, load_config

pytestmark = pytest.mark.timeout(60)

FRAME = 640


class RecordingModel(voice_pb2_grpc.VoiceModelServicer):
    def __init__(self) -> None:
        self.messages: list[voice_pb2.ClientMessage] = []
        self.ended = asyncio.Event()

    async def Converse(self, request_iterator, context):  # the proto names it
        async for message in request_iterator:
            self.messages.append(message)
        self.ended.set()
        if False:  # a stream handler that answers nothing
            yield voice_pb2.ServerMessage()

    def kinds(self) -> list[str]:
        """Each message after Start: ("audio", frames) or the control's kind."""
        out: list[str] = []
        for m in self.messages[1:]:
            if m.WhichOneof("kind") == "audio":
                out.append(f"audio{len(m.audio.pcm) // FRAME}")
            else:
                out.append(m.control.WhichOneof("kind"))
        return out


def _frame(i: int) -> bytes:
    return bytes([i % 256]) * FRAME


async def _linked(frames_per_message: int):
    server = grpc.aio.server()
    model = RecordingModel()
    voice_pb2_grpc.add_VoiceModelServicer_to_server(model, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    link = ModelLink(channel, "c1", lambda m: None, lambda s, d: None,
                     frames_per_message=frames_per_message)
    link.start()
    await until_async(lambda: link.connected, timeout=10, what="the stream to open")
    return server, channel, model, link


async def _closed(server, channel, model, link) -> None:
    await link.close(timeout=2.0)
    await asyncio.wait_for(model.ended.wait(), 5)
    await channel.close(None)
    await server.stop(0)


@pytest.mark.parametrize("per_message", [1, 2, 3])
async def test_frames_arrive_whole_in_order_n_per_message(per_message: int) -> None:
    rig = await _linked(per_message)
    model, link = rig[2], rig[3]
    indexes = [link.send_audio(_frame(i)) for i in range(10)]
    await _closed(*rig)
    assert indexes == list(range(10))
    audio = [m.audio for m in model.messages[1:] if m.WhichOneof("kind") == "audio"]
    assert b"".join(a.pcm for a in audio) == b"".join(_frame(i) for i in range(10))
    assert [a.seq for a in audio] == list(range(len(audio)))
    full, rest = divmod(10, per_message)
    # The last, short message is the frames still waiting when the call closed.
    assert [len(a.pcm) // FRAME for a in audio] == [per_message] * full + ([rest] if rest else [])
    assert model.kinds()[-1] == "end_of_input"


async def test_a_control_message_goes_after_the_frames_before_it() -> None:
    rig = await _linked(2)
    model, link = rig[2], rig[3]
    link.send_audio(_frame(0))
    link.send_audio(_frame(1))
    link.send_audio(_frame(2))  # waits for a second frame
    assert link.send_barge_in() is True
    link.send_audio(_frame(3))
    assert link.send_session(voice_pb2.SessionUpdate(silence_duration_ms=300)) is True
    link.send_audio(_frame(4))
    link.send_audio(_frame(5))
    await _closed(*rig)
    assert model.kinds() == ["audio2", "audio1", "barge_in", "audio1", "session", "audio2",
                             "end_of_input"]
    pcm = b"".join(m.audio.pcm for m in model.messages if m.WhichOneof("kind") == "audio")
    assert pcm == b"".join(_frame(i) for i in range(6))


async def test_dropped_frames_are_counted_and_take_no_index() -> None:
    rig = await _linked(2)
    link = rig[3]
    try:
        link.connected = False  # as while the stream is down: nothing is queued
        assert link.send_audio(_frame(0)) is None
        assert link.chunks_dropped == 1
        link.connected = True
        assert link.send_audio(_frame(1)) == 0
    finally:
        await _closed(*rig)
    assert link.send_audio(_frame(2)) is None  # closed
    assert link.chunks_dropped == 2


async def test_frames_per_message_out_of_range_is_refused() -> None:
    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    try:
        for bad in (0, 101):
            with pytest.raises(ValueError, match="frames_per_message must be 1..100"):
                ModelLink(channel, "c1", lambda m: None, lambda s, d: None,
                          frames_per_message=bad)
    finally:
        await channel.close(None)


@pytest.mark.parametrize("value", [0, 11])
def test_config_refuses_model_audio_frames_out_of_range(tmp_path, value: int) -> None:
    path = tmp_path / "voxrelay.toml"
    path.write_text(f"[transceiver]\nmodel_audio_frames = {value}\n")
    with pytest.raises(ConfigError, match="model_audio_frames must be 1 to 10"):
        load_config(path)
