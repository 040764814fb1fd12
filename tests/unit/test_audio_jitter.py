# SPDX-License-Identifier: Apache-2.0
"""The transceiver's audio jitter buffer (transceiver/ice.py ``_ShortAudioJitterBuffer``):
an Opus packet that arrives in order is a frame on arrival, a missing one is
waited for one packet, and video keeps aiortc's reassembly."""

from __future__ import annotations

import aiortc.rtcrtpreceiver
import pytest
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from transceiver import ice

SAMPLES_PER_FRAME = 960  # 20 ms at Opus's 48 kHz RTP clock


def packet(seq: int) -> RtpPacket:
    p = RtpPacket(sequence_number=seq % 65536, timestamp=(seq * SAMPLES_PER_FRAME) % 2**32)
    p._data = b"opus-%d" % seq  # what RTCRtpReceiver stores before add()
    return p


def feed(buffer: JitterBuffer, seqs: list[int]) -> list[bytes | None]:
    """The frame add() hands out for each packet, in arrival order."""
    out = []
    for seq in seqs:
        _pli, frame = buffer.add(packet(seq))
        out.append(frame.data if frame is not None else None)
    return out


def audio_buffer() -> JitterBuffer:
    ice.short_audio_jitter()
    # RTCRtpReceiver builds its audio buffer like this (aiortc 1.16).
    return aiortc.rtcrtpreceiver.JitterBuffer(capacity=16, prefetch=4)


def test_in_order_audio_is_a_frame_as_soon_as_it_arrives() -> None:
    assert feed(audio_buffer(), [10, 11, 12, 13]) == [b"opus-10", b"opus-11", b"opus-12", b"opus-13"]


def test_stock_aiortc_holds_every_audio_frame_until_the_next_packet_and_four_more() -> None:
    """What the short buffer replaces: aiortc yields frame N only once packets up
    to N+4 have arrived (prefetch 4: 80 ms behind on a LAN)."""
    got = feed(JitterBuffer(capacity=16, prefetch=4), [10, 11, 12, 13, 14, 15])
    assert got == [None, None, None, None, b"opus-10", b"opus-11"]


def test_a_reordered_pair_comes_out_in_order() -> None:
    assert feed(audio_buffer(), [10, 12, 11, 13]) == [b"opus-10", None, b"opus-11", b"opus-12"]


def test_a_lost_packet_is_waited_for_one_packet_then_skipped() -> None:
    # 11 never comes: at 12 it may still (one packet late), at 13 it is lost.
    assert feed(audio_buffer(), [10, 12, 13, 14]) == [b"opus-10", None, b"opus-12", b"opus-13"]


def test_a_burst_of_losses_is_skipped_at_once() -> None:
    assert feed(audio_buffer(), [10, 15, 16]) == [b"opus-10", b"opus-15", b"opus-16"]


def test_sequence_numbers_wrap() -> None:
    assert feed(audio_buffer(), [65534, 65535, 65536, 65537]) == [
        b"opus-65534", b"opus-65535", b"opus-65536", b"opus-65537"]


def test_a_late_duplicate_is_dropped() -> None:
    assert feed(audio_buffer(), [10, 11, 10, 12]) == [b"opus-10", b"opus-11", None, b"opus-12"]


@pytest.mark.parametrize("prefetch", [0, 4])
def test_video_keeps_aiortcs_reassembly(prefetch: int) -> None:
    ice.short_audio_jitter()
    short = aiortc.rtcrtpreceiver.JitterBuffer(capacity=128, prefetch=prefetch, is_video=True)
    stock = JitterBuffer(capacity=128, prefetch=prefetch, is_video=True)
    seqs = [1, 2, 3, 5, 4, 6, 7]
    assert feed(short, seqs) == feed(stock, seqs)


def test_like_a_browser_holds_each_audio_frame_one_packet() -> None:
    """The lab's timed clients: one frame behind (20 ms), not aiortc's four."""
    ice.short_audio_jitter(like_a_browser=True)
    try:
        buffer = aiortc.rtcrtpreceiver.JitterBuffer(capacity=16, prefetch=4)
        assert feed(buffer, [10, 11, 12, 13]) == [None, b"opus-10", b"opus-11", b"opus-12"]
    finally:
        ice.short_audio_jitter()


async def test_a_timed_client_builds_its_receiver_with_the_browser_like_buffer() -> None:
    """Its receiver exists from addTrack in the constructor: the buffer must be
    chosen before it (the first timed call of a process once got aiortc's 4)."""
    from lab.call import TimedCallClient

    ice.short_audio_jitter()  # as a transceiver in this process would leave it
    try:
        client = TimedCallClient("http://127.0.0.1:9", "token", 5)
        receiver = client.pc.getTransceivers()[0].receiver
        buffers = [v for v in vars(receiver).values() if isinstance(v, JitterBuffer)]
        assert [type(b).__name__ for b in buffers] == ["_OneFrameAudioJitterBuffer"]
        await client.pc.close()
    finally:
        ice.short_audio_jitter()
