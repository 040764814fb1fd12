# SPDX-License-Identifier: Apache-2.0
"""The receive packet path: Opus payloads decoded by libopus at 16 kHz in the
event loop (transceiver/rxopus.py), handed on by the transceiver's jitter
buffer (ice.receive_audio_payloads) instead of aiortc's decoder thread."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest
from aiortc.rtp import RtpPacket

from tests.unit.fake_model import TRANSCRIPT, start_fake_model, tone
from transceiver import ice
from transceiver.media import CHUNK_BYTES, CHUNK_SAMPLES, SAMPLE_RATE, OpusPackets, split_chunks
from transceiver.rxopus import FRAME_TICKS, MAX_CONCEAL_FRAMES, OpusDecoder16k, OpusReceive

TONE = tone(400, 440.0)


def opus_payloads(pcm: bytes) -> list[bytes]:
    """Opus packets of ``pcm`` (16 kHz mono), one per 20 ms, as the transceiver encodes."""
    encoder = OpusPackets()
    return [bytes(encoder.packet(chunk, i * CHUNK_SAMPLES))
            for i, chunk in enumerate(split_chunks(pcm))]


def receiver() -> tuple[OpusReceive, list[bytes]]:
    chunks: list[bytes] = []
    return OpusReceive(chunks.append), chunks


def level(pcm: bytes) -> float:
    return float(np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.float64)).mean())


def test_decodes_at_16k_mono_one_exact_chunk_per_20ms_packet() -> None:
    rx, chunks = receiver()
    payloads = opus_payloads(TONE)
    for i, payload in enumerate(payloads):
        rx.push(payload, 1000 + i * FRAME_TICKS)
    assert len(chunks) == len(payloads) == 20
    assert all(len(c) == CHUNK_BYTES for c in chunks)
    decoded = np.frombuffer(b"".join(chunks[5:]), dtype="<i2").astype(np.float64)
    # The tone comes back at 440 Hz (16 kHz samples), not at a rate 3x off.
    spectrum = np.abs(np.fft.rfft(decoded))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / decoded.size
    assert abs(peak_hz - 440.0) < 10
    assert level(b"".join(chunks[5:])) > 0.5 * level(TONE)
    assert rx.counters() == {"packets": 20, "chunks": 20, "lost": 0, "concealed": 0,
                             "bad_payloads": 0, "late": 0, "resyncs": 0}


def test_a_40ms_packet_gives_two_chunks() -> None:
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = 32000
    codec.format, codec.layout, codec.sample_rate = "s16", "mono", SAMPLE_RATE
    codec.time_base = fractions.Fraction(1, SAMPLE_RATE)
    codec.options = {"frame_duration": "40"}
    frame = av.AudioFrame(format="s16", layout="mono", samples=2 * CHUNK_SAMPLES)
    frame.planes[0].update(TONE[:2 * CHUNK_BYTES])
    frame.sample_rate, frame.pts = SAMPLE_RATE, 0
    packets = [bytes(p) for p in codec.encode(frame)] + [bytes(p) for p in codec.encode(None)]
    rx, chunks = receiver()
    for i, payload in enumerate(packets):
        rx.push(payload, i * 2 * FRAME_TICKS)
    assert len(chunks) == 2 * len(packets) and len(packets) >= 1
    assert rx.lost == 0


@pytest.mark.parametrize("bad", [b"", b"\xff", b"\x03", b"\x0b" + b"\xff" * 3])
def test_empty_and_bad_payloads_are_counted_and_their_slot_concealed(bad: bytes) -> None:
    rx, chunks = receiver()
    good = opus_payloads(TONE[:3 * CHUNK_BYTES])
    rx.push(good[0], 0)
    rx.push(bad, FRAME_TICKS)
    rx.push(good[2], 2 * FRAME_TICKS)
    assert rx.bad_payloads == 1
    # The bad packet's 20 ms is filled by concealment when the next one shows the gap.
    assert (rx.lost, rx.concealed) == (1, 1)
    assert len(chunks) == 3 and all(len(c) == CHUNK_BYTES for c in chunks)


def test_decoder_error_message_names_the_size_and_libopus_reason() -> None:
    decoder = OpusDecoder16k()
    with pytest.raises(ValueError, match=r"^empty Opus payload$"):
        decoder.decode(b"")
    with pytest.raises(ValueError, match=r"^Opus packet of 1 bytes did not decode: corrupted"):
        decoder.decode(b"\xff")
    decoder.close()
    with pytest.raises(ValueError, match=r"^Opus decoder is closed$"):
        decoder.decode(opus_payloads(TONE[:CHUNK_BYTES])[0])


def test_a_short_gap_is_concealed_and_counted() -> None:
    rx, chunks = receiver()
    payloads = opus_payloads(TONE)
    for i, payload in enumerate(payloads):
        if i in (7, 8):  # two packets lost
            continue
        rx.push(payload, i * FRAME_TICKS)
    assert (rx.lost, rx.concealed) == (2, 2)
    assert len(chunks) == len(payloads)  # the model's audio keeps its clock
    # Concealment continues the tone rather than inserting silence.
    assert level(chunks[7]) > 0.1 * level(TONE)


def test_a_long_gap_is_skipped_and_counted() -> None:
    rx, chunks = receiver()
    payloads = opus_payloads(TONE)
    gap = MAX_CONCEAL_FRAMES + 1
    rx.push(payloads[0], 0)
    rx.push(payloads[1], (1 + gap) * FRAME_TICKS)
    assert (rx.lost, rx.concealed) == (gap, 0)
    assert len(chunks) == 2


def test_late_and_duplicate_packets_are_dropped_and_counted() -> None:
    rx, chunks = receiver()
    payloads = opus_payloads(TONE[:4 * CHUNK_BYTES])
    rx.push(payloads[0], 0)
    rx.push(payloads[1], FRAME_TICKS)
    rx.push(payloads[1], FRAME_TICKS)  # duplicate
    rx.push(payloads[0], 0)  # late
    rx.push(payloads[2], 2 * FRAME_TICKS)
    assert rx.late == 2
    assert len(chunks) == 3 and rx.lost == 0


def test_timestamp_wrap_is_not_a_gap_and_a_restart_is_a_resync() -> None:
    rx, chunks = receiver()
    payloads = opus_payloads(TONE[:4 * CHUNK_BYTES])
    start = 2**32 - FRAME_TICKS
    rx.push(payloads[0], start)
    rx.push(payloads[1], start + FRAME_TICKS)  # wraps to 0
    rx.push(payloads[2], 123_456_789)  # a new stream's timestamps
    assert (rx.lost, rx.late, rx.resyncs) == (0, 0, 1)
    assert len(chunks) == 3


def _rtp(seq: int, payload: bytes) -> RtpPacket:
    packet = RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * FRAME_TICKS)
    packet.payload = payload
    packet._data = payload  # as RTCRtpReceiver stores the depayloaded frame
    return packet


def test_jitter_buffer_hands_frames_to_the_sink_not_to_aiortc() -> None:
    got: list[tuple[bytes, int]] = []
    buffer = ice._ShortAudioJitterBuffer(capacity=16, prefetch=4)
    frames_for_aiortc = [buffer.add(_rtp(seq, b"p%d" % seq))[1] for seq in range(2)]
    assert all(f is not None for f in frames_for_aiortc)  # no sink: aiortc's path
    buffer.sink = lambda data, ts: got.append((data, ts))
    frames_for_aiortc = [buffer.add(_rtp(seq, b"p%d" % seq))[1] for seq in range(2, 5)]
    assert frames_for_aiortc == [None, None, None]
    assert got == [(b"p2", 2 * FRAME_TICKS), (b"p3", 3 * FRAME_TICKS), (b"p4", 4 * FRAME_TICKS)]


def test_a_sink_that_raises_is_counted_and_the_receive_path_goes_on() -> None:
    def broken(data: bytes, timestamp: int) -> None:
        raise RuntimeError("sink bug")

    buffer = ice._ShortAudioJitterBuffer(capacity=16, prefetch=4)
    buffer.sink = broken
    results = [buffer.add(_rtp(seq, b"x")) for seq in range(3)]
    assert results == [(False, None)] * 3
    assert buffer.sink_errors == 3


# ------------------------------------------------------------ a real call


@pytest.fixture
async def rig():
    from tests.unit.transceiver_harness import LoopbackRelay, start_transceiver
    from voxrelay.directory.memory import MemoryDirectory

    directory = MemoryDirectory()
    ring = await directory.ensure_keyring()
    relay = LoopbackRelay(ring.active_keys())
    relay_addr = await relay.start()
    server, model, model_port = await start_fake_model()
    service = await start_transceiver(directory, [relay_addr], f"127.0.0.1:{model_port}")
    yield service, model
    await service.stop(0.2)
    relay.close()
    await server.stop(0)


@pytest.mark.timeout(60)
async def test_a_call_hears_its_caller_through_the_packet_path(rig) -> None:
    from lab.client import CallClient

    service, model = rig
    async with CallClient(service.url, "secret", 15) as client:
        call = service.manager.get(client.call_id)
        await client.wait_event("model", state="connected")
        await client.say_and_wait_reply(tone(800, 300.0))
        result = client.result()
        status = call.status()
    assert result.transcript == TRANSCRIPT
    inbound = status["inbound"]
    assert call.rx is not None and inbound is not None
    assert inbound["packets"] > 40 and inbound["bad_payloads"] == 0
    # Every chunk the model and barge-in detection got came from libopus at 16 kHz.
    assert status["chunks_in"] == inbound["chunks"] > 40
    assert model.chunks > 40
