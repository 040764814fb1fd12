# SPDX-License-Identifier: Apache-2.0
"""What makes a call cheaper (issue #14), as behaviour: the outbound track
hands aiortc Opus packets (libopus at 16 kHz mono on the call's own thread,
no codec run at all for silence), and the barge-in VAD scores only while a
reply plays. The costs themselves are measured in bench/voice.py."""

from __future__ import annotations

import shutil

import av
import numpy as np
import pytest
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterFrame

from transceiver.media import CHUNK_BYTES, CHUNK_SAMPLES, OPUS_RATE, OpusPackets, ReplyTrack
from transceiver.model import voice_pb2


def _tone(seconds: float, amplitude: float = 8000.0) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    return (amplitude * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def test_silence_is_never_encoded_and_speech_decodes_as_sent() -> None:
    opus = OpusPackets()
    silent = [opus.packet(None, i * CHUNK_SAMPLES) for i in range(50)]
    assert opus.encoded == 0
    assert len({bytes(p) for p in silent}) == 1  # one cached packet, every slot
    assert [p.pts for p in silent[:3]] == [0, 960, 1920]  # the 48 kHz RTP clock
    tone = _tone(0.4)
    decoder = OpusDecoder()
    decoded = []
    for i in range(0, len(tone), CHUNK_BYTES):
        packet = opus.packet(tone[i:i + CHUNK_BYTES], (50 + i // CHUNK_BYTES) * CHUNK_SAMPLES)
        for frame in decoder.decode(JitterFrame(bytes(packet), packet.pts)):
            decoded.append(frame.to_ndarray().reshape(-1))
    assert opus.encoded == len(tone) // CHUNK_BYTES
    heard = np.concatenate(decoded[5:])  # past the codec's start-up
    # 440 Hz at amplitude 8000: RMS 5657; Opus at 32 kbit/s keeps it within 20%.
    assert _rms(heard) == pytest.approx(8000 / np.sqrt(2), rel=0.2)
    # After speech the cached silence fades the decoder out (its first frame
    # carries the tone's tail) and is then silence.
    after = [decoder.decode(JitterFrame(bytes(silent[0]), 0))[0].to_ndarray() for _ in range(3)]
    assert _rms(after[-1]) < 50


async def test_the_calls_track_gives_packets_and_plays_replies_between_silence() -> None:
    track = ReplyTrack(rate=OPUS_RATE, encoded=True)
    first = await track.recv()
    assert isinstance(first, av.Packet) and first.time_base.denominator == OPUS_RATE
    track.push(_tone(0.06))  # three chunks
    track.end_segment()
    sizes = [len(bytes(await track.recv())) for _ in range(4)]
    assert track.audio_frames_sent == 3
    assert sizes[0] > len(bytes(first)) and sizes[3] == len(bytes(first))  # then silence again
    track.stop()


@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng is not installed (scripts/setup.sh installs it)")
def test_the_barge_in_vad_scores_only_over_a_playing_reply_and_still_catches_speech() -> None:
    from transceiver.model.speech import synthesize
    from transceiver.turns import VAD_WARMUP_CHUNKS, Turns

    events: list[dict] = []
    track = ReplyTrack()
    turns = Turns(track, events.append, lambda: None, vad_mode=2, barge_in_frames=8)
    speech, _ = synthesize("stop stop please stop talking now")
    chunks = [speech[i:i + CHUNK_BYTES] for i in range(0, len(speech) - CHUNK_BYTES, CHUNK_BYTES)]
    for chunk in chunks[:40]:  # the caller talks while nothing plays: the model's business
        turns.heard(chunk)
    assert turns.vad_chunks == 0 and not events
    reply = voice_pb2.ServerMessage(audio=voice_pb2.AudioChunk(pcm=b"\x10\x00" * 32000))
    turns.on_model_message(reply)
    assert track.playing
    for chunk in chunks[40:]:
        turns.heard(chunk)
        if events:
            break
    assert events and events[0]["source"] == "vad", "speech over the reply was not caught"
    assert 8 <= turns.vad_chunks < len(chunks) - 40
    assert VAD_WARMUP_CHUNKS * CHUNK_SAMPLES == 16000 * 0.3  # the 300 ms caught up on
    track.stop()
