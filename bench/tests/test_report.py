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


def test_main_table_ratios_use_medians() -> None:
    rows = {r[0]: r for r in report.main_table(_results(), 10000)}
    # voxrelay median at 10k flows is 240k (the 900k outlier does not count)
    assert rows["xdp"] == ["xdp", "240 k", "3.00x", "2.00x", "n/a", "80%"]
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
    assert "| xdp | 1,600 k | n/a | 4.00x |" in text
