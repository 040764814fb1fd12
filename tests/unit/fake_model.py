# SPDX-License-Identifier: Apache-2.0
"""A tiny voice.proto server for transceiver tests that are not about speech.

It does no ASR: a turn is "speech" (energy) followed by 300 ms of quiet, and
the transcript is a fixed text. It exists so that media-plumbing tests (ICE
restart, model restart, leaks) do not depend on the speech stack; the
speech test itself uses the real default model.
"""

from __future__ import annotations

import math
import struct

import grpc
import grpc.aio
import numpy as np

from transceiver.model import voice_pb2, voice_pb2_grpc

TRANSCRIPT = "fake transcript"


def tone(ms: int, freq: float = 440.0) -> bytes:
    n = 16 * ms
    return b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * i / 16000)))
                    for i in range(n))


class FakeModel(voice_pb2_grpc.VoiceModelServicer):
    def __init__(self) -> None:
        self.streams = 0
        self.chunks = 0
        self.barge_ins = 0
        self.reply_ms = 600
        self.capacity: tuple[int, int] | None = None
        """(max_streams, active_streams) for the Capacity RPC; None: UNIMPLEMENTED,
        as from a model server that predates it."""
        self.capacity_reads = 0

    async def Capacity(self, request, context):
        self.capacity_reads += 1
        if self.capacity is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no Capacity here")
        max_streams, active = self.capacity
        return voice_pb2.CapacityReply(max_streams=max_streams, active_streams=active)

    async def Converse(self, request_iterator, context):
        self.streams += 1
        first = await request_iterator.__anext__()
        assert first.control.WhichOneof("kind") == "start"
        voiced = quiet = 0
        turn = 0
        async for message in request_iterator:
            if message.WhichOneof("kind") == "control":
                if message.control.barge_in:
                    self.barge_ins += 1
                if message.control.end_of_input:
                    return
                continue
            self.chunks += 1
            samples = np.frombuffer(message.audio.pcm, dtype="<i2")
            loud = np.abs(samples).mean() > 300
            if loud:
                voiced += 1
                quiet = 0
            elif voiced:
                quiet += 1
            if voiced >= 5 and quiet >= 15:
                turn += 1
                end_ms = message.audio.seq * 20.0
                voiced = quiet = 0
                yield voice_pb2.ServerMessage(
                    transcript=voice_pb2.Transcript(text=TRANSCRIPT, final=True, turn=turn))
                yield voice_pb2.ServerMessage(reply=voice_pb2.Reply(text="you said: " + TRANSCRIPT,
                                                                    turn=turn))
                yield voice_pb2.ServerMessage(timings=voice_pb2.TurnTimings(
                    turn=turn, speech_end_ms=end_ms, processing_ms=1.0))
                pcm = tone(self.reply_ms)
                for i in range(0, len(pcm), 640):
                    yield voice_pb2.ServerMessage(audio=voice_pb2.AudioChunk(
                        pcm=pcm[i:i + 640], sample_rate=16000, seq=i // 640))
                yield voice_pb2.ServerMessage(turn_end=turn)


async def start_fake_model(port: int = 0) -> tuple[grpc.aio.Server, FakeModel, int]:
    server = grpc.aio.server()
    model = FakeModel()
    voice_pb2_grpc.add_VoiceModelServicer_to_server(model, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, model, bound
