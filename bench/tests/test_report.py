# SPDX-License-Identifier: Apache-2.0
"""Pure pieces of the bench: report maths and rendering, generator output
parsing, STUN/TURN message building."""

from __future__ import annotations

import struct

import pytest

from bench import report
from bench.tools import parse_gen_output
from bench.turn import (
    ALLOCATE,
    CHANNEL_BIND,
    allocate_request,
    channel_bind_request,
    channel_data,
    response_ok,
    xor_peer_address,
)
from lab.stun import MAGIC_COOKIE, binding_request, token_of


def test_percentile_nearest_rank() -> None:
    xs = list(range(1, 1001))  # 1..1000
    assert report.percentile(xs, 50) == 500
    assert report.percentile(xs, 99) == 990
    assert report.percentile(xs, 99.9) == 999
    assert report.percentile(xs, 100) == 1000
    assert report.percentile([7.0], 99.9) == 7.0


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="percentile of no samples"):
        report.percentile([], 50)
    with pytest.raises(ValueError, match="percentile 101 is outside 0..100"):
        report.percentile([1.0], 101)


def test_ratio_cost_and_loss() -> None:
    assert report.ratio(300.0, 100.0) == 3.0
    assert report.ratio(1.0, None) is None
    assert report.ratio(1.0, 0.0) is None
    # 250 kpps against a 400 kpps baseline: 4 us - 2.5 us = 1.5 us per packet
    assert report.cost_us(250_000, 400_000) == pytest.approx(1.5)
    assert report.cost_us(None, 400_000) is None
    assert report.loss(1000, 900) == pytest.approx(0.1)
    assert report.loss(0, 0) == 0.0
    assert report.loss(100, 120) == 0.0  # primer packets counted late: never negative


def test_median_skips_missing() -> None:
    assert report.median([3.0, 1.0, 2.0]) == 2.0
    assert report.median([]) is None
    assert report.median([float("nan"), 4.0]) == 4.0


def _results() -> dict:
    def runs(*pps: float) -> list[dict[str, float]]:
        return [{"sent": 400_000.0, "delivered": p} for p in pps]

    return {
        "env": {"kernel": "6.x", "cores": 2, "cpu": "test cpu", "date": "d", "loadavg": "0 0 0",
                "shared_note": "note"},
        "flows": [1, 10000], "runs": 3, "duration": 2.0, "payload": 200,
        "order": ["gen_only", "ceiling", "voxrelay", "nftables", "userspace", "coturn"],
        "labels": {"gen_only": "gen", "ceiling": "ceil", "voxrelay": "xdp",
                   "nftables": "nft", "userspace": "py", "coturn": "turn"},
        "throughput": {
            "gen_only": {"1": runs(400e3, 400e3, 400e3), "10000": runs(400e3, 400e3, 400e3)},
            "ceiling": {"1": runs(300e3, 300e3, 300e3), "10000": runs(300e3, 300e3, 300e3)},
            "voxrelay": {"1": runs(240e3, 250e3, 260e3), "10000": runs(200e3, 240e3, 900e3)},
            "nftables": {"1": runs(160e3, 160e3, 160e3), "10000": runs(120e3, 120e3, 120e3)},
            "userspace": {"1": runs(100e3, 100e3, 100e3), "10000": runs(80e3, 80e3, 80e3)},
        },
        "user_cpu": {"userspace": [9.0, 10.0, 11.0]},
        "latency": {
            "direct": [{"p50": 20.0, "p99": 30.0, "p99.9": 40.0, "lost": 0}],
            "voxrelay": [{"p50": 21.0, "p99": 33.0, "p99.9": 50.0, "lost": 0}],
        },
        "prog_test_run": {"known flow, cached next hop": 150.0},
        "notes": {"coturn": "failed: because"},
        "limits": {"voxrelay": "the shared core"},
    }


def test_main_table_ratios_use_medians_with_their_range() -> None:
    rows = {r[0]: r for r in report.main_table(_results(), 10000)}
    # voxrelay at 10k flows: 200k, 240k, 900k; its median is 240k. Round by round
    # against userspace's 80k: 2.5, 3.0, 11.25 (the outlier widens the range,
    # not the median); against the 300k ceiling 67%, 80%, 300%: that range
    # includes 100%, so the share is not separated from the ceiling.
    assert rows["xdp"] == ["xdp", "240 k", "3.00x (2.50 to 11.25, 3 rounds)",
                           "2.00x (1.67 to 7.50, 3 rounds)", "n/a",
                           "80% (67% to 300%, 3 rounds) **not separated**"]
    assert rows["nft"][3] == "—"  # no ratio against itself
    assert "gen" not in rows and "ceil" not in rows
    assert "turn" not in rows  # no throughput: not in the table


def test_render_has_every_section() -> None:
    md = report.render(_results(), {"throughput": "docs/bench/throughput.png"})
    assert "| candidate | pps | vs userspace | vs nftables | vs coturn | share of ceiling |" in md
    assert "![throughput vs flows](docs/bench/throughput.png)" in md
    assert "| known flow, cached next hop | 150 |" in md
    # added latency against the direct path: 21 - 20 = 1.0 us at p50
    assert "| xdp | 21.0 | 33.0 | 50.0 | 1.0 | 3.0 | 10.0 |" in md
    assert "- **turn**: failed: because" in md
    assert "test cpu" in md
    # cost per packet on the shared core at 1 flow: 1e6/250e3 - 1e6/400e3 = 1.5 us
    assert "| xdp | 1.50 µs |" in md
    assert "| py | 7.50 µs | 10.00 µs | 10.00 µs |" in md


def test_parse_gen_output() -> None:
    g = parse_gen_output('warming up\n{"sent": 10, "errors": 1, "elapsed": 2.0, "pps": 5.0}\n')
    assert (g.sent, g.errors, g.elapsed, g.pps) == (10, 1, 2.0, 5.0)
    with pytest.raises(ValueError, match="no JSON result in generator output"):
        parse_gen_output("sendmmsg: oops\n")


def test_stun_binding_request_round_trip() -> None:
    msg = binding_request("T" * 32, "cli", txid=b"\x01" * 12)
    mtype, length, cookie = struct.unpack_from(">HHI", msg)
    assert (mtype, cookie) == (0x0001, MAGIC_COOKIE)
    assert length == len(msg) - 20 and length % 4 == 0
    assert token_of(msg) == "T" * 32


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80" + b"\x00" * 30, "not_stun: too short or top bits set"),
        (b"\x00\x01\x00\x00" + b"\x00" * 16, "not_stun: bad magic cookie"),
        (struct.pack(">HHI12s", 0x0101, 0, MAGIC_COOKIE, b"x" * 12),
         "not_binding: message type 0x0101"),
        (struct.pack(">HHI12s", 0x0001, 0, MAGIC_COOKIE, b"x" * 12),
         "no_username: Binding Request without USERNAME"),
        (struct.pack(">HHI12s", 0x0001, 8, MAGIC_COOKIE, b"x" * 12),
         "not_stun: length runs past the datagram"),
    ],
)
def test_stun_token_of_rejects(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        token_of(data)


def test_turn_messages() -> None:
    tid = b"\x02" * 12
    alloc = allocate_request(tid)
    assert struct.unpack_from(">H", alloc)[0] == ALLOCATE
    assert b"\x00\x19\x00\x04\x11\x00\x00\x00" in alloc  # REQUESTED-TRANSPORT UDP
    bind = channel_bind_request(tid, ("10.77.2.2", 5004))
    assert struct.unpack_from(">H", bind)[0] == CHANNEL_BIND
    assert b"\x00\x0c\x00\x04\x40\x00\x00\x00" in bind  # CHANNEL-NUMBER 0x4000
    # XOR-PEER-ADDRESS: port ^ 0x2112, address ^ magic cookie
    assert xor_peer_address("10.77.2.2", 5004) == struct.pack(
        ">BBHI", 0, 1, 5004 ^ 0x2112, 0x0A4D0202 ^ MAGIC_COOKIE)
    assert channel_data(b"abc") == b"\x40\x00\x00\x03abc"
    with pytest.raises(ValueError, match="TURN channel must be in 0x4000..0x4FFF"):
        channel_bind_request(tid, ("10.0.0.1", 1), channel=0x3FFF)
    ok = struct.pack(">HHI12s", ALLOCATE | 0x0100, 0, MAGIC_COOKIE, tid)
    err = struct.pack(">HHI12s", ALLOCATE | 0x0110, 0, MAGIC_COOKIE, tid)
    assert response_ok(ok, ALLOCATE, tid) is True
    assert response_ok(err, ALLOCATE, tid) is False
    with pytest.raises(ValueError, match="TURN response for another transaction"):
        response_ok(ok, ALLOCATE, b"\x03" * 12)


def test_paired_cost_pairs_rounds_and_ratios() -> None:
    res = _results()
    # Round 3 of the baseline was slow (background load): pairing by round
    # cancels it, where the cost of the medians would not.
    res["throughput"]["gen_only"]["10000"] = [
        {"sent": 4e5, "delivered": p} for p in (400e3, 400e3, 200e3)]
    res["throughput"]["voxrelay"]["10000"] = [
        {"sent": 4e5, "delivered": p} for p in (250e3, 250e3, 150e3)]
    res["throughput"]["nftables"]["10000"] = [
        {"sent": 4e5, "delivered": p} for p in (160e3, 160e3, 120e3)]
    # per round: 4 - 2.5 = 1.5, 1.5, 6.667 - 5 = 1.667 -> median 1.5
    assert report.paired_cost_us(res, "voxrelay", 10000) == pytest.approx(1.5)
    # unpaired (different run counts): the cost of the medians
    res["throughput"]["ceiling"]["10000"] = [{"sent": 4e5, "delivered": 300e3}]
    assert report.paired_cost_us(res, "ceiling", 10000) == pytest.approx(1e6 / 300e3 - 2.5)
    section = "\n".join(report.cost_ratio_section(res))
    # nftables: 6.25 - 2.5 = 3.75 µs per round 1..2 -> 3.75 / 1.5 = 2.50x
    assert "| nftables | " in section and "2.50x" in section


def test_xdp_load_section_uses_its_own_runs() -> None:
    res = _results()
    assert report.xdp_load_section(res) == []  # no XDP-native runs: no section
    res["throughput_xdp"] = {
        "gen_only": {"10000": [{"sent": 2e6, "delivered": 2e6}]},
        "voxrelay": {"10000": [{"sent": 1.6e6, "delivered": 1.6e6}]},
        "nftables": {"10000": [{"sent": 4e5, "delivered": 4e5}]},
    }
    text = "\n".join(report.xdp_load_section(res))
    # 1e6/1.6e6 - 1e6/2e6 = 0.125 µs; nftables 2.5 - 0.5 = 2.0 µs -> 16.00x
    assert "0.125 µs" in text and "16.00x" in text
    assert "| xdp | 1,600 k | n/a | 4.00x (1 round, no range) |" in text


def test_spread_median_range_and_count() -> None:
    s = report.spread([3.0, None, 1.5, float("nan"), 2.0])
    assert s == report.Spread(median=2.0, lo=1.5, hi=3.0, n=3)
    assert report.spread([]) is None
    assert report.spread([None]) is None


@pytest.mark.parametrize(
    ("values", "separated"),
    [
        ([1.2, 1.5, 3.0], True),     # every round: the first is faster
        ([0.5, 0.7, 0.9], True),     # every round: the first is slower
        ([0.9, 1.1, 1.3], False),    # rounds disagree: the range crosses 1.0
        ([1.0, 1.2, 1.4], False),    # one round was even: not told apart
        ([0.8, 1.0], False),
        ([0.65, 0.8, 0.998], False),  # printed "0.65 to 1.00": marked as it reads
        ([0.65, 0.8, 0.994], True),   # printed "0.65 to 0.99"
        ([4.0], True),               # one round: no range, a point clear of 1
        ([1.0], False),
    ],
)
def test_spread_separated_when_the_range_excludes_one(values: list[float], separated: bool) -> None:
    s = report.spread(values)
    assert s is not None and s.separated is separated
    assert (report.NOT_SEPARATED in report.fmt_spread(s)) is not separated


def test_fmt_spread() -> None:
    assert report.fmt_spread(None) == "n/a"
    assert report.fmt_spread(report.spread([4.0, 3.5, 4.6])) == "4.00x (3.50 to 4.60, 3 rounds)"
    assert report.fmt_spread(report.spread([0.9, 1.06, 1.2])) == (
        "1.06x (0.90 to 1.20, 3 rounds) **not separated**")
    assert report.fmt_spread(report.spread([2.0])) == "2.00x (1 round, no range)"
    assert report.fmt_spread(report.spread([0.72, 0.7, 0.8]), percent=True) == (
        "72% (70% to 80%, 3 rounds)")


def test_round_ratios_pair_by_round_and_keep_the_rounds_both_have() -> None:
    # Run i against run i, not medians; the candidate cut short by the budget
    # lost its last round, so its two runs pair with the first two of the other.
    assert report.round_ratios([300.0, 200.0], [100.0, 200.0, 50.0]) == [3.0, 1.0]
    assert report.round_ratios([1.0], [0.0]) == [None]


def test_ratio_spread_counts_the_rounds_it_has() -> None:
    res = _results()
    res["throughput"]["nftables"]["1"] = res["throughput"]["nftables"]["1"][:2]
    s = report.ratio_spread(res, "voxrelay", "nftables", 1)
    # 240/160, 250/160 (round 3 has no nftables run)
    assert s == report.Spread(median=pytest.approx(1.53125), lo=1.5, hi=pytest.approx(1.5625), n=2)
    assert report.ratio_spread(res, "voxrelay", "coturn", 1) is None


def test_cost_ratio_spread_leaves_out_rounds_without_a_cost() -> None:
    res = _results()
    base = {"sent": 4e5, "delivered": 400e3}
    res["throughput"]["gen_only"]["10000"] = [base, base, base]
    # relay: 1.5 µs, 1.5 µs, then faster than the baseline (cost below zero: noise)
    res["throughput"]["voxrelay"]["10000"] = [
        {"sent": 4e5, "delivered": p} for p in (250e3, 250e3, 500e3)]
    # nftables: 3.75, 5.0, 3.75 µs
    res["throughput"]["nftables"]["10000"] = [
        {"sent": 4e5, "delivered": p} for p in (160e3, 1e6 / 7.5, 160e3)]
    s = report.cost_ratio_spread(res, "voxrelay", "nftables", 10000)
    assert s is not None and s.n == 2
    assert (s.lo, s.hi) == (pytest.approx(2.5), pytest.approx(5.0 / 1.5))
    section = "\n".join(report.cost_ratio_section(res))
    assert "2.92x (2.50 to 3.33, 2 rounds)" in section
    # the reference's cost within the noise in round 1 (faster than the baseline)
    res["throughput"]["nftables"]["10000"][0] = {"sent": 4e5, "delivered": 500e3}
    s = report.cost_ratio_spread(res, "voxrelay", "nftables", 10000)
    assert s == report.Spread(median=pytest.approx(5.0 / 1.5), lo=pytest.approx(5.0 / 1.5),
                              hi=pytest.approx(5.0 / 1.5), n=1)


def test_render_says_rounds_and_marks_ratios_not_separated() -> None:
    res = _results()
    # nftables and the relay trade places round by round at 1 flow
    res["throughput"]["nftables"]["1"] = [
        {"sent": 4e5, "delivered": p} for p in (260e3, 240e3, 255e3)]
    md = report.render(res, {})
    assert "median of 3 runs" in md
    assert "`make bench` rewrites this file" in md and "--smoke" in md  # how to run it
    assert "(min to max) and the number of rounds" in md
    rows = {r[0]: r for r in report.main_table(res, 1)}
    # 240/260, 250/240, 260/255: 0.92, 1.04, 1.02
    assert rows["xdp"][3] == "1.02x (0.92 to 1.04, 3 rounds) **not separated**"
    # the report's tables are at the largest flow count: there the relay's share
    # of the ceiling (67%, 80%, 300%) is the ratio whose range crosses 1
    assert "| 80% (67% to 300%, 3 rounds) **not separated** |" in md
    assert rows["xdp"][2].endswith("3 rounds)")  # against userspace: 2.40x to 2.60x, clear


def test_render_keeps_the_hand_run_sections() -> None:
    """`make bench` rewrites BENCHMARKS.md: the sections measured by hand
    (bench/hand_runs/) come back in their places, not lost."""
    res = _results()
    res["voice_md"] = "## Control and media plane (bench/voice.py)\n\nvoice body"
    md = report.render(res, {})
    telemetry = (report.HAND_RUNS / "telemetry_cost.md").read_text().strip()
    scale = (report.HAND_RUNS / "transceiver_scale.md").read_text().strip()
    assert telemetry in md and scale in md
    assert md.index("### The program alone") < md.index(telemetry) < md.index(
        "### Optimisation history")
    assert md.index("voice body") < md.index(scale)
