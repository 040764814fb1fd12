# SPDX-License-Identifier: Apache-2.0
"""Pure parts of the transceiver: offer checks, relay specs, ports, media, clock."""

from __future__ import annotations

import asyncio
import re
import time

import aiortc.rtcicetransport
import pytest
from aioice import Connection

from transceiver.ice import (
    PortPool,
    RelaySpec,
    RoutedConnection,
    RoutedIce,
    parse_relay,
    relay_candidates,
    routed_ice,
)
from transceiver.media import CHUNK_BYTES, ReplyTrack, split_chunks
from transceiver.model import voice_pb2
from transceiver.offer import parse_offer
from transceiver.sessions import SessionStore
from transceiver.turns import TurnClock
from voxrelay.directory import SessionRecord

FINGERPRINT = ("8D:6E:6B:34:C9:79:9A:79:8D:36:6A:30:22:1F:40:2F:"
               "69:38:D2:62:95:B0:68:47:F1:B0:1B:41:80:C4:84:09")
GOOD_OFFER = f"""v=0
o=- 1 1 IN IP4 0.0.0.0
s=-
t=0 0
a=group:BUNDLE 0 1
m=audio 9 UDP/TLS/RTP/SAVPF 96
c=IN IP4 0.0.0.0
a=mid:0
a=rtcp-mux
a=rtpmap:96 opus/48000/2
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=fingerprint:sha-256 {FINGERPRINT}
a=setup:actpass
m=application 9 UDP/DTLS/SCTP webrtc-datachannel
c=IN IP4 0.0.0.0
a=mid:1
a=sctp-port:5000
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=fingerprint:sha-256 {FINGERPRINT}
a=setup:actpass
"""


def test_good_offer_parses() -> None:
    offer = parse_offer(GOOD_OFFER)
    assert offer.ice_ufrag == "abcd"
    assert offer.kinds == ("audio", "application")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "SDP offer is empty"),
        ("   \n", "SDP offer is empty"),
        ("hello", "SDP offer must start with v=0"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "SDP offer has no m-line"),
        (GOOD_OFFER.split("m=audio", maxsplit=1)[0] + "m=application"
         + GOOD_OFFER.split("m=application")[1].replace("a=group:BUNDLE 0 1", ""),
         "SDP offer has no audio m-line"),
        (GOOD_OFFER.replace("a=ice-ufrag:abcd\n", "", 1),
         "SDP offer m-line 0 (audio) lacks ice-ufrag or ice-pwd"),
        (GOOD_OFFER.replace("a=rtcp-mux\n", ""), "SDP offer m-line 0 (audio) lacks a=rtcp-mux"),
        (GOOD_OFFER.replace("a=rtpmap:96 opus/48000/2", "a=rtpmap:96 PCMU/8000"),
         "SDP offer's audio m-line does not offer opus"),
        (GOOD_OFFER.replace("a=group:BUNDLE 0 1\n", ""),
         "SDP offer must BUNDLE all m-lines (a=group:BUNDLE)"),
    ],
)
def test_bad_offers_have_exact_messages(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=rf"\A{re.escape(message)}\Z"):
        parse_offer(text)


def test_unparseable_offer_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"^SDP offer does not parse: "):
        parse_offer("v=0\nm=audio notaport UDP/TLS/RTP/SAVPF 96\n")


def test_parse_relay() -> None:
    assert parse_relay("203.0.113.5:3478") == RelaySpec("203.0.113.5", 3478)
    assert parse_relay("203.0.113.5:3478 region=eu rtt_ms=12.5") == RelaySpec(
        "203.0.113.5", 3478, "eu", 12.5)
    # a dual-stack relay's IPv6 VIP is an entry of its own
    assert parse_relay("[2001:db8::5]:3478 region=eu") == RelaySpec(
        "2001:db8::5", 3478, "eu")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "relay spec is empty"),
        ("203.0.113.5", "relay '203.0.113.5' must be ADDR:PORT"),
        ("relay.example:3478", "relay address 'relay.example' is not an IP address"),
        ("203.0.113.5:0", "relay port '0' is not in 1..65535"),
        ("203.0.113.5:3478 region", "relay option 'region' must be key=value"),
        ("203.0.113.5:3478 rtt_ms=fast", "relay rtt_ms 'fast' is not a number"),
        ("203.0.113.5:3478 color=red", "relay option 'color' is unknown; known: region, rtt_ms, tcp"),
    ],
)
def test_parse_relay_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=rf"\A{re.escape(message)}\Z"):
        parse_relay(spec)


def test_dual_stack_relay_answers_a_tcp_candidate_per_vip() -> None:
    """The TCP front listens on both VIPs ([relay] public_address6): each entry
    with tcp= gets a passive TCP candidate, below every UDP one, in order."""
    relays = [parse_relay("198.51.100.1:3478 tcp=443"), parse_relay("[2001:db8::1]:3478 tcp=443")]
    candidates = relay_candidates(relays)
    assert [(c.host, c.port, c.transport, c.tcptype) for c in candidates] == [
        ("198.51.100.1", 3478, "udp", None), ("2001:db8::1", 3478, "udp", None),
        ("198.51.100.1", 443, "tcp", "passive"), ("2001:db8::1", 443, "tcp", "passive")]
    assert candidates[2].priority > candidates[3].priority


def test_dual_stack_relay_answers_both_udp_candidates() -> None:
    relays = [parse_relay("198.51.100.1:3478 tcp=443"), parse_relay("[2001:db8::1]:3478")]
    candidates = relay_candidates(relays)
    assert [(c.host, c.port, c.transport) for c in candidates] == [
        ("198.51.100.1", 3478, "udp"), ("2001:db8::1", 3478, "udp"),
        ("198.51.100.1", 443, "tcp")]
    assert candidates[0].foundation != candidates[1].foundation
    assert candidates[0].priority > candidates[1].priority > candidates[2].priority


def test_relay_candidates_ordered_by_region_then_rtt() -> None:
    relays = [
        RelaySpec("198.51.100.1", 3478, "us", 5.0),
        RelaySpec("198.51.100.2", 3478, "eu", 40.0),
        RelaySpec("198.51.100.3", 3478, "eu", 10.0),
        RelaySpec("198.51.100.4", 3478),
    ]
    candidates = relay_candidates(relays, region="eu")
    assert [c.host for c in candidates] == [
        "198.51.100.3", "198.51.100.2", "198.51.100.1", "198.51.100.4"]
    priorities = [c.priority for c in candidates]
    assert priorities == sorted(priorities, reverse=True)
    assert len(set(priorities)) == 4
    assert all(c.type == "host" and c.component == 1 for c in candidates)
    with pytest.raises(ValueError, match="at least one relay"):
        relay_candidates([])


def test_port_pool_binds_distinct_ports_and_releases() -> None:
    pool = PortPool("127.0.0.1", 47100, 47102)
    socks = [pool.bind() for _ in range(3)]
    try:
        ports = {s.getsockname()[1] for s in socks}
        assert ports == {47100, 47101, 47102} == set(pool.in_use)
        with pytest.raises(OSError, match=re.escape("no free UDP port in 47100..47102")):
            pool.bind()
        socks[0].close()
        pool.release(socks[0].getsockname()[1] if socks[0].fileno() != -1 else 47100)
    finally:
        for s in socks:
            s.close()


async def test_routed_ice_only_inside_the_context() -> None:
    pool = PortPool("127.0.0.1", 47110, 47119)
    sock = pool.bind()
    routed = RoutedIce(sock, "A" * 32, "p" * 24, relay_candidates([RelaySpec("203.0.113.9", 3478)]))
    with routed_ice(routed):
        inside = aiortc.rtcicetransport.Connection(ice_controlling=False)
    outside = aiortc.rtcicetransport.Connection(ice_controlling=False)
    assert isinstance(inside, RoutedConnection)
    assert inside.local_username == "A" * 32
    assert type(outside) is Connection
    # Not gathered yet: nothing to advertise (aiortc would start ICE early).
    assert inside.local_candidates == []
    await inside.gather_candidates()
    assert [(c.host, c.port) for c in inside.local_candidates] == [("203.0.113.9", 3478)]
    assert inside.bound_address == sock.getsockname()
    # The client's own candidates are never paired (that path bypasses the relay).
    from aioice import Candidate
    await inside.add_remote_candidate(Candidate("x", 1, "udp", 1, "192.0.2.1", 9, "host"))
    await inside.add_remote_candidate(None)
    assert inside.remote_candidates == []
    assert inside.ignored_remote_candidates == 1
    await inside.close()
    assert sock.fileno() == -1


def test_split_chunks() -> None:
    chunks = split_chunks(b"\x01\x00" * 330)
    assert [len(c) for c in chunks] == [CHUNK_BYTES, CHUNK_BYTES]
    assert chunks[1][20:] == bytes(CHUNK_BYTES - 20)
    with pytest.raises(ValueError, match="whole 16-bit samples, got 3 bytes"):
        split_chunks(b"abc")


async def test_reply_track_plays_queue_then_silence_and_flushes() -> None:
    starts: list[float] = []
    track = ReplyTrack(on_segment_start=starts.append)
    track.push(b"\x10\x00" * 640)  # 2 chunks
    track.end_segment()
    frames = [await track.recv() for _ in range(4)]
    pcm = [bytes(f.planes[0])[:CHUNK_BYTES] for f in frames]
    assert pcm[0] == pcm[1] == b"\x10\x00" * 320
    assert pcm[2] == pcm[3] == bytes(CHUNK_BYTES)
    assert [f.pts for f in frames] == [0, 320, 640, 960]
    assert len(starts) == 1
    assert not track.playing
    track.push(b"\x10\x00" * 3200)
    assert track.playing
    assert track.flush() == 10
    assert not track.playing
    track.stop()


async def test_reply_track_is_paced_on_an_absolute_clock() -> None:
    track = ReplyTrack()
    await track.recv()
    began = time.monotonic()
    await asyncio.sleep(0.1)  # a late consumer: the next frames catch up, no drift
    for _ in range(10):
        await track.recv()
    # 10 frames after the first are due at 200 ms, whatever the consumer did.
    assert time.monotonic() - began >= 0.2 - 0.005
    track.stop()


async def test_pcm_chunks_reads_a_track_until_it_ends() -> None:
    from transceiver.media import pcm_chunks

    track = ReplyTrack()
    track.push(b"\x10\x00" * 640)  # 2 chunks, then silence
    got: list[tuple[float, bytes]] = []
    async for arrived_at, chunk in pcm_chunks(track):
        got.append((arrived_at, chunk))
        if len(got) == 4:
            track.stop()  # the reader ends with the track, no error
    assert [len(c) for _, c in got] == [CHUNK_BYTES] * 4
    assert got[1][1] == b"\x10\x00" * 320
    assert got[3][1] == bytes(CHUNK_BYTES)
    assert [t for t, _ in got] == sorted(t for t, _ in got)

    frames: list[float] = []
    track = ReplyTrack()

    def count(arrived_at: float) -> bool:
        frames.append(arrived_at)
        if len(frames) == 3:
            track.stop()
        return False  # only timing frames: nothing is decoded

    assert [c async for c in pcm_chunks(track, on_frame=count)] == []
    assert len(frames) == 3


def test_turn_clock_pairs_speech_end_and_first_audio() -> None:
    clock = TurnClock()
    for seq in range(100):
        clock.chunk_sent(seq, 10.0 + seq * 0.02)
    assert clock.turn_closed(1, 1000.0) is None  # the turn's last chunk, seq 49, arrived at 10.98
    assert clock.segment_started(11.25) == (1, pytest.approx(270.0))
    # Audio before timings: paired when the timings arrive.
    assert clock.segment_started(12.5) is None
    assert clock.turn_closed(2, 1600.0) == pytest.approx(920.0)  # seq 79 arrived at 11.58


async def test_turns_barge_in_drops_the_reply_until_the_next_final_transcript() -> None:
    from transceiver.turns import Turns

    events: list[dict] = []
    told: list[int] = []
    track = ReplyTrack()
    turns = Turns(track, events.append, lambda: told.append(1), vad_mode=2, barge_in_frames=8)
    audio = voice_pb2.ServerMessage(audio=voice_pb2.AudioChunk(pcm=b"\x10\x00" * 3200))
    turns.on_model_message(audio)
    assert track.playing
    turns.heard(bytes(CHUNK_BYTES))  # silence over the reply: no barge-in
    assert not events
    partial = voice_pb2.ServerMessage(transcript=voice_pb2.Transcript(text="wait", final=False))
    turns.on_model_message(partial)  # the caller talks over the reply
    assert [e["type"] for e in events] == ["barge_in", "transcript"]
    assert events[0] == {"type": "barge_in", "source": "transcript", "dropped_ms": 200}
    assert not track.playing
    assert told == [1]
    assert turns.barge_ins == 1
    turns.on_model_message(audio)  # the rest of the interrupted reply is dropped
    assert not track.playing
    final = voice_pb2.ServerMessage(transcript=voice_pb2.Transcript(text="wait", final=True))
    turns.on_model_message(final)
    turns.on_model_message(audio)  # the next turn's reply plays
    assert track.playing
    track.stop()


def test_session_store_ttl() -> None:
    store = SessionStore(10)
    store.put(SessionRecord("a", 7, 40000), expires=100.0)
    assert store.get("a", now=50.0) is not None
    assert store.expire(now=200.0) == ["a"]
    assert len(store) == 0


def test_proto_round_trip() -> None:
    message = voice_pb2.ServerMessage(
        timings=voice_pb2.TurnTimings(turn=3, speech_end_ms=1200.0, processing_ms=85.5))
    parsed = voice_pb2.ServerMessage.FromString(message.SerializeToString())
    assert parsed.WhichOneof("kind") == "timings"
    assert parsed.timings.processing_ms == 85.5
    client = voice_pb2.ClientMessage(audio=voice_pb2.AudioChunk(pcm=b"\x01" * 640,
                                                                sample_rate=16000, seq=9))
    assert voice_pb2.ClientMessage.FromString(client.SerializeToString()) == client


def test_an_offer_aiortc_cannot_parse_names_the_reason_even_without_a_message(monkeypatch):
    from aiortc import sdp

    def trip(text: str) -> None:
        raise AssertionError  # what aiortc's parser raises on some inputs: no message

    monkeypatch.setattr(sdp.SessionDescription, "parse", staticmethod(trip))
    with pytest.raises(ValueError, match=r"^SDP offer does not parse: AssertionError$"):
        parse_offer("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n")
