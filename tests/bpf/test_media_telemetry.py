# SPDX-License-Identifier: Apache-2.0
"""Per-flow media telemetry in XDP (issue #16 item 2), through BPF_PROG_TEST_RUN.

The relay reads the clear RTP header of a known flow's SRTP and its STUN
consent checks (bpf/media.h). Rows here send RTP with chosen sequence numbers,
timestamps and SSRCs, in either direction, and check what the flow entry
holds against ``reference``, a plain-Python RFC 3550 A.1 model written from
the RFC, not from media.h. A property test draws random sequences (gaps,
reordering, duplicates, wraps, jumps, SSRC changes, RTCP, DTLS, runts) and
checks the counters against the model exactly. Jitter is checked against the
A.8 recurrence within a bound, because the arrival clock is the kernel's real
clock; consent round trips are timed across a sleep.
"""

from __future__ import annotations

import itertools
import os
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

pytestmark = pytest.mark.root

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab import stun
from lab.bpftest import XDP_DROP
from lab.packets import CLIENT, CLIENT_PORT, Context, from_transceiver, open_flow, to_relay
from lab.relaylab import ProgTestRelay
from orchestrator import abi
from orchestrator.media import MediaStats

SSRC = 0x1234ABCD
OPUS_PT = 111
FRAME_TICKS = 960  # 20 ms at Opus' 48 kHz RTP clock


def rtp(seq: int, ts: int = 0, ssrc: int = SSRC, pt: int = OPUS_PT, marker: bool = False,
        payload: bytes = b"\x00" * 40) -> bytes:
    """An RTP packet (RFC 3550 5.1), as SRTP leaves its header: in clear."""
    return struct.pack(">BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                       ts & 0xFFFFFFFF, ssrc) + payload


@dataclass
class Reference:
    """RFC 3550 A.1's counters for one direction, the way the RFC words them."""

    ssrc: int | None = None
    max_seq: int = 0
    expected: int = 0
    received: int = 0
    reordered: int = 0
    duplicates: int = 0
    resyncs: int = 0

    def packet(self, seq: int, ssrc: int) -> None:
        if self.ssrc != ssrc:
            if self.ssrc is not None:
                self.resyncs += 1
            self.ssrc = ssrc
            self._restart(seq)
            return
        delta = (seq - self.max_seq) % 65536
        if delta == 0:
            self.duplicates += 1
        elif delta < 3000:                 # MAX_DROPOUT
            self.expected += delta
            self.received += 1
            self.max_seq = seq
        elif delta > 65536 - 100:          # MAX_MISORDER: late
            self.reordered += 1
            self.received += 1
        else:                              # the sender restarted
            self.resyncs += 1
            self._restart(seq)

    def _restart(self, seq: int) -> None:
        self.max_seq = seq
        self.expected += 1
        self.received += 1

    def stats(self) -> tuple[int, int, int, int, int]:
        return (self.received, self.expected, self.reordered, self.duplicates, self.resyncs)


def reference(packets: Sequence[tuple[int, int]]) -> Reference:
    ref = Reference()
    for seq, ssrc in packets:
        ref.packet(seq, ssrc)
    return ref


def counters(m: MediaStats | None) -> tuple[int, int, int, int, int]:
    if m is None:
        return (0, 0, 0, 0, 0)
    return (m.packets, m.expected, m.reordered, m.duplicates, m.resyncs)


@pytest.fixture(scope="module")
def lab() -> Iterator[ProgTestRelay]:
    with ProgTestRelay() as relay:
        yield relay


@pytest.fixture
def flow(lab: ProgTestRelay) -> tuple[Context, int]:
    lab.reset()
    ctx = Context(lab)
    return ctx, open_flow(ctx)


def up(ctx: Context, payload: bytes) -> None:
    res = ctx.lab.run(bytes(to_relay(payload)), "vpub")
    assert res.stat == "STAT_FWD_TO_TRANSCEIVER", res.stat


def down(ctx: Context, relay_port: int, payload: bytes) -> None:
    res = ctx.lab.run(bytes(from_transceiver(payload, relay_port)), "vpriv")
    assert res.stat == "STAT_FWD_TO_CLIENT", res.stat


def up_stats(ctx: Context) -> MediaStats | None:
    f = ctx.lab.maps.flow(CLIENT, CLIENT_PORT)
    assert f is not None
    return f.rtp


def down_stats(ctx: Context, relay_port: int) -> MediaStats | None:
    [r] = [r for r in ctx.lab.maps.reverse_entries() if r.relay_port == relay_port]
    return r.rtp


# (name, RTP packets as (seq, ssrc)): each checked against the reference model.
ROWS = [
    ("in order", [(s, SSRC) for s in range(100, 110)]),
    ("two missing", [(1, SSRC), (2, SSRC), (5, SSRC), (6, SSRC)]),
    ("one late: not lost, reordered", [(1, SSRC), (3, SSRC), (2, SSRC), (4, SSRC)]),
    ("a duplicate", [(1, SSRC), (2, SSRC), (2, SSRC), (3, SSRC)]),
    ("sequence wraps at 65535", [(65533, SSRC), (65534, SSRC), (65535, SSRC), (0, SSRC), (2, SSRC)]),
    ("a new SSRC restarts, totals go on", [(1, SSRC), (2, SSRC), (900, 7), (901, 7)]),
    ("a jump beyond MAX_DROPOUT restarts", [(10, SSRC), (11, SSRC), (20000, SSRC), (20001, SSRC)]),
    ("far behind (not within MAX_MISORDER) restarts", [(5000, SSRC), (4000, SSRC), (4001, SSRC)]),
]


@pytest.mark.parametrize(("name", "packets"), ROWS, ids=[r[0] for r in ROWS])
def test_rtp_sequence_accounting_matches_rfc3550(flow: tuple[Context, int], name: str,
                                                 packets: list[tuple[int, int]]) -> None:
    ctx, relay_port = flow
    for seq, ssrc in packets:
        up(ctx, rtp(seq, ssrc=ssrc))
        down(ctx, relay_port, rtp(seq, ssrc=ssrc))
    want = reference(packets).stats()
    assert counters(up_stats(ctx)) == want
    assert counters(down_stats(ctx, relay_port)) == want


def test_loss_is_expected_minus_received(flow: tuple[Context, int]) -> None:
    ctx, relay_port = flow
    for seq in (1, 2, 3, 7, 8, 10):  # 4, 5, 6 and 9 never come
        up(ctx, rtp(seq))
    m = up_stats(ctx)
    assert m is not None
    assert (m.expected, m.packets, m.lost) == (10, 6, 4)
    assert m.loss_ratio == pytest.approx(0.4)
    assert down_stats(ctx, relay_port) is None, "the other direction carried no RTP"


@pytest.mark.parametrize(("name", "payload"), [
    ("RTCP receiver report (PT 201)", struct.pack(">BBHI", 0x81, 201, 7, SSRC) + b"\x00" * 24),
    ("RTCP sender report (PT 200)", struct.pack(">BBHI", 0x80, 200, 6, SSRC) + b"\x00" * 20),
    ("DTLS record (first byte 22)", b"\x16\xfe\xfd" + b"\x00" * 40),
    ("runt: an RTP first byte, 11 bytes", rtp(5)[:11]),
    ("TURN ChannelData (first byte 64)", b"\x40\x00\x00\x10" + b"\x00" * 16),
], ids=lambda v: v if isinstance(v, str) else "")
def test_what_is_not_rtp_is_forwarded_and_not_counted(flow: tuple[Context, int], name: str,
                                                      payload: bytes) -> None:
    ctx, relay_port = flow
    up(ctx, rtp(1))
    up(ctx, payload)  # forwarded all the same: the relay counts media, it does not police it
    down(ctx, relay_port, payload)
    assert counters(up_stats(ctx)) == (1, 1, 0, 0, 0)
    assert down_stats(ctx, relay_port) is None


def test_rtp_with_the_marker_bit_and_a_high_payload_type_is_rtp(flow: tuple[Context, int]) -> None:
    ctx, _ = flow
    # PT 127 with the marker set reads 255 as a byte: above RTCP's 192..223.
    up(ctx, rtp(1, pt=127, marker=True))
    up(ctx, rtp(2, pt=96, marker=True))  # 224: just above RTCP's range
    assert counters(up_stats(ctx)) == (2, 2, 0, 0, 0)


def jitter_reference(transit: Sequence[float]) -> float:
    """RFC 3550 A.8 in floating point over the sampled packets' transits (in
    RTP ticks): J += (|D| - J) / 16, D the change since the previous one."""
    j = 0.0
    for before, after in itertools.pairwise(transit):
        j += (abs(after - before) - j) / 16
    return j


def sampled(seq: int, first: int = 0) -> bool:
    """Is this packet one the relay times (MEDIA_JITTER_SAMPLE, bpf/consts.h)?
    Not the source's first: that one only starts the accounting."""
    return seq != first and seq % abi.MEDIA_JITTER_SAMPLE == 0


def test_jitter_follows_rfc3550_a8(flow: tuple[Context, int]) -> None:
    """Packets sent back to back whose timestamps say 20 ms apart: between
    two timed packets the transit changes by their timestamps' distance less
    the real time between the two runs, and J climbs as A.8 says. The
    arrival clock is the kernel's, so the reference takes each run's start
    from the same clock (CLOCK_MONOTONIC) and the bound allows the few
    microseconds between it and the program's own read."""
    ctx, _ = flow
    count = 21 * abi.MEDIA_JITTER_SAMPLE + 1
    ts = [5000 + n * FRAME_TICKS for n in range(count)]
    frames = [bytes(to_relay(rtp(seq, t))) for seq, t in enumerate(ts)]  # built before timing
    arrivals = []
    for frame in frames:
        arrivals.append(time.monotonic_ns())
        ctx.lab.run_raw(frame, "vpub")
    transit = [a * 48_000 / 1e9 - t for seq, (a, t) in enumerate(zip(arrivals, ts, strict=True))
               if sampled(seq)]
    want_ms = jitter_reference(transit) / 48
    m = up_stats(ctx)
    assert m is not None and m.packets == count
    assert m.jitter_ms == pytest.approx(want_ms, rel=0.05)
    assert want_ms > 5


def test_only_sampled_packets_move_the_jitter(flow: tuple[Context, int]) -> None:
    """A timestamp step on packets the relay does not time changes nothing;
    on a timed one it does."""
    ctx, _ = flow
    n = abi.MEDIA_JITTER_SAMPLE
    if n == 1:
        pytest.fail("this build times every packet: the test needs MEDIA_JITTER_SAMPLE > 1")
    for seq in range(n + 1):
        up(ctx, rtp(seq, 0))                # n is timed: the first transit
    for seq in range(n + 1, 2 * n):
        up(ctx, rtp(seq, 480_000))          # not timed: a 10 s step, ignored
    m = up_stats(ctx)
    assert m is not None and m.jitter_ms == 0
    up(ctx, rtp(2 * n, 480_000))            # timed: the step shows
    m = up_stats(ctx)
    assert m is not None and m.jitter_ms == pytest.approx(10_000 / 16, rel=0.01)


def test_steady_media_reads_no_jitter(flow: tuple[Context, int]) -> None:
    """Timestamps that advance exactly with arrival time: no jitter. Each
    packet is sent when its timestamp says (20 ms apart, by the wall clock)."""
    ctx, _ = flow
    start = time.monotonic()
    for seq in range(3 * abi.MEDIA_JITTER_SAMPLE + 1):
        while time.monotonic() < start + seq * 0.020:
            time.sleep(0.001)
        up(ctx, rtp(seq, seq * FRAME_TICKS))
    m = up_stats(ctx)
    assert m is not None
    # Only the scheduler's wake-up slop (well under a few ms) is left,
    # against the hundreds of ms the back-to-back test reads.
    assert m.jitter_ms < 3.0


def test_consent_round_trip_of_each_leg(flow: tuple[Context, int]) -> None:
    ctx, relay_port = flow
    # The client's check, answered by the transceiver: the transceiver leg.
    tid = os.urandom(12)
    up(ctx, stun.message(msg_type=stun.BINDING_REQUEST, txid=tid))
    time.sleep(0.030)
    down(ctx, relay_port, stun.message(msg_type=stun.BINDING_SUCCESS, txid=os.urandom(12)))  # another answer
    down(ctx, relay_port, stun.message(msg_type=stun.BINDING_SUCCESS, txid=tid))
    [r] = [r for r in ctx.lab.maps.reverse_entries() if r.relay_port == relay_port]
    assert r.transceiver_rtt is not None and r.transceiver_rtt.samples == 1
    assert 30 <= r.transceiver_rtt.last_ms < 1000
    # The same response again is no second sample: the request was answered.
    down(ctx, relay_port, stun.message(msg_type=stun.BINDING_SUCCESS, txid=tid))
    # The transceiver's check, answered by the client: the client leg.
    tid2 = os.urandom(12)
    down(ctx, relay_port, stun.message(msg_type=stun.BINDING_REQUEST, txid=tid2))
    time.sleep(0.010)
    up(ctx, stun.message(msg_type=stun.BINDING_SUCCESS, txid=tid2))
    f = ctx.lab.maps.flow(CLIENT, CLIENT_PORT)
    assert f is not None and f.client_rtt is not None
    assert f.client_rtt.samples == 1 and 10 <= f.client_rtt.last_ms < 1000
    [r] = [r for r in ctx.lab.maps.reverse_entries() if r.relay_port == relay_port]
    assert r.transceiver_rtt is not None and r.transceiver_rtt.samples == 1
    assert f.rtp is None, "STUN is not RTP"


def test_unknown_media_opens_nothing_and_counts_nothing(lab: ProgTestRelay) -> None:
    """RTP from a client without a flow is dropped as before: telemetry is
    only for flows the relay already holds."""
    lab.reset()
    res = lab.run(bytes(to_relay(rtp(1))), "vpub")
    assert res.action == XDP_DROP and res.stat.startswith("STAT_DROP_")
    assert lab.maps.flows() == []


# Random sequences: mostly small steps, with jumps, late packets, duplicates,
# SSRC changes and packets that are not RTP mixed in.
_step = st.one_of(st.integers(1, 3), st.integers(-120, -1), st.just(0),
                  st.integers(2900, 3100), st.integers(30000, 40000))
_event = st.tuples(_step, st.sampled_from([SSRC, SSRC, SSRC, SSRC, 0xBEEF]),
                   st.sampled_from(["rtp", "rtp", "rtp", "rtp", "rtcp", "dtls", "runt"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.integers(0, 65535), events=st.lists(_event, min_size=1, max_size=40))
def test_random_sequences_match_the_reference(flow: tuple[Context, int], start: int,
                                              events: list[tuple[int, int, str]]) -> None:
    ctx, _ = flow
    ctx.lab.reset()
    open_flow(ctx)
    seq = start
    sent: list[tuple[int, int]] = []
    for step, ssrc, kind in events:
        seq = (seq + step) % 65536
        if kind == "rtp":
            up(ctx, rtp(seq, ssrc=ssrc))
            sent.append((seq, ssrc))
        elif kind == "rtcp":
            up(ctx, struct.pack(">BBHI", 0x81, 201, 7, ssrc) + b"\x00" * 24)
        elif kind == "dtls":
            up(ctx, b"\x17\xfe\xfd" + struct.pack(">H", seq) + b"\x00" * 30)
        else:
            up(ctx, rtp(seq, ssrc=ssrc)[:11])
    assert counters(up_stats(ctx)) == reference(sent).stats()
