# SPDX-License-Identifier: Apache-2.0
"""bench/bench_sync.py's pure parts: flow keys and the markdown section."""

from __future__ import annotations

from bench.bench_sync import (
    FLOW_KEY,
    BackendResult,
    CapacityResult,
    LiveFlowsResult,
    SyncBench,
    _live_layout,
    flow_keys,
    markdown,
)


def test_flow_keys_are_distinct_and_laid_out_as_struct_flow_key():
    raw = flow_keys(65534, 4)
    keys = [raw[i:i + FLOW_KEY.size] for i in range(0, len(raw), FLOW_KEY.size)]
    assert FLOW_KEY.size == 20 and len(set(keys)) == 4
    # Address 10.0.0.0 + (i >> 16) big-endian, then 12 zero bytes, port BE, family AF_INET.
    assert keys[0] == bytes([10, 0, 0, 0]) + bytes(12) + (65534).to_bytes(2, "big") + b"\x02\x00"
    assert keys[2] == bytes([10, 0, 0, 1]) + bytes(12) + (0).to_bytes(2, "big") + b"\x02\x00"


def test_markdown_reports_both_backends_and_capacity():
    r = SyncBench(env={"host": "h", "kernel": "6.1", "cpus": "2", "date": "2026-01-01"})
    r.backends = [BackendResult("embedded", 200, 1.234, 5.678, 9.0, 1.0),
                  BackendResult("redis", 200, 2.5, 6.5, 7.0, 1.0)]
    r.capacity = CapacityResult(1 << 20, 1 << 20, 1_000_000, 160 << 20, 0.9, 160.0)
    text = markdown(r)
    assert "| embedded | 200 | 1.23 | 5.68 | 9.00 |" in text
    assert "| redis | 200 | 2.50 | 6.50 | 7.00 |" in text
    assert "| 1,048,576 | 1,048,576 | 1,000,000 | 160.0 MiB | 160 B | 0.9 s |" in text
    assert "reverse_key" in text and "extra_private_addresses" in text
    assert "Live flows" not in text  # no live rows, no live section


def test_markdown_reports_live_flows_side_by_side():
    r = SyncBench(env={})
    r.live = [LiveFlowsResult(10_000, 1, 1179648, 1048576, 380 << 20, 0.1, 10_000, 10_000,
                              100.0, 80.0),
              LiveFlowsResult(1_000_000, 25, 1179648, 1048576, 380 << 20, 9.0, 1_000_000,
                              1_000_000, 250.0, 200.0)]
    text = markdown(r)
    assert ("| 1,000,000 | 25 | 1,179,648 / 1,048,576 | 380 MiB | 1,000,000 / 1,000,000 "
            "| 250 | 200 |") in text
    assert "costs 2.50x in and 2.50x out" in text


def test_live_layout_gives_every_flow_its_own_client_and_relay_pair():
    n = 200_000
    rows = [_live_layout(i, 5, 20000, 40000) for i in range(n)]
    assert len({(a, p) for a, p, _, _ in rows}) == n
    assert len({(a, p) for _, _, a, p in rows}) == n
    assert {a for _, _, a, _ in rows} == set(range(5))
    assert all(20000 <= p <= 59999 for _, _, _, p in rows)
