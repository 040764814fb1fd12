# SPDX-License-Identifier: Apache-2.0
"""bench/voice.py: the statistics and the report (pure; no lab, no aiortc)."""

from __future__ import annotations

import pytest

from bench.voice import (
    CapacityStep,
    FramesRun,
    HostRun,
    SetupSample,
    StreamStats,
    TurnSample,
    VoiceResults,
    better_step,
    calls_per_core,
    frame_lateness_ms,
    render_frames_runs,
    render_markdown,
    results_json,
    rtp_audio_source_port,
    setup_summary,
    stream_stats,
)


def paced(n: int, start: float = 10.0, period: float = 0.020) -> list[float]:
    return [start + k * period for k in range(n)]


def test_steady_stream_has_no_lateness_whatever_its_delay() -> None:
    assert frame_lateness_ms(paced(50, start=3.0)) == pytest.approx([0.0] * 50, abs=1e-6)


def test_a_late_frame_is_late_against_its_slot_and_the_next_ones_recover() -> None:
    arrivals = paced(10)
    arrivals[4] += 0.015  # 15 ms late (still before frame 5), the next ones on time again
    late = frame_lateness_ms(arrivals)
    assert late[4] == pytest.approx(15.0)
    assert max(late[:4] + late[5:]) == pytest.approx(0.0, abs=1e-6)


def test_an_early_first_frame_does_not_make_the_rest_late_by_its_own_offset() -> None:
    # Anchored on the earliest frame, not the first one: here the first frame
    # is 5 ms late, so every other frame is 0 and the first one is 5.
    arrivals = paced(10)
    arrivals[0] += 0.005
    late = frame_lateness_ms(arrivals)
    assert late[0] == pytest.approx(5.0)
    assert late[1:] == pytest.approx([0.0] * 9, abs=1e-6)


def test_out_of_order_arrivals_are_refused() -> None:
    with pytest.raises(ValueError, match="^frame arrival times are not in order$"):
        frame_lateness_ms([1.0, 0.9])
    assert frame_lateness_ms([]) == []


def test_stream_stats_counts_missing_and_late_frames() -> None:
    good = paced(100)  # 2 s at 20 ms
    bad = paced(80)
    for k in range(40, 80):
        bad[k] += 0.050  # a 50 ms stall half-way, never caught up
    stats = stream_stats([good, bad], window_s=2.0)
    assert stats.expected == 200
    assert stats.frames == 180
    assert stats.missing_share == pytest.approx(0.10)
    assert stats.late_share == pytest.approx(40 / 180)
    assert stats.late_max_ms == pytest.approx(50.0)
    assert not stats.on_time
    assert stream_stats([good], window_s=2.0).on_time


def test_stream_stats_with_no_frames_is_not_on_time() -> None:
    stats = stream_stats([[], []], window_s=1.0)
    assert (stats.frames, stats.expected, stats.late_p99_ms) == (0, 100, None)
    assert not stats.on_time
    with pytest.raises(ValueError, match="^window must be positive, got 0$"):
        stream_stats([[]], window_s=0)


def test_setup_summary_percentiles() -> None:
    samples = [SetupSample(k, 2 * k, 3 * k, 4 * k) for k in range(1, 21)]
    s = setup_summary(samples)
    assert s["answer_ms"] == {"p50": 10, "p95": 19}
    assert s["first_audio_ms"] == {"p50": 40, "p95": 76}
    with pytest.raises(ValueError, match="^no call setup samples$"):
        setup_summary([])


def step(calls: int, connected: int, p99: float, cpu: float) -> CapacityStep:
    stream = StreamStats(frames=calls * 300, expected=calls * 300, late_p50_ms=1.0,
                         late_p99_ms=p99, late_max_ms=p99, late_share=0.0)
    received = StreamStats(frames=calls * 300, expected=calls * 300, late_p50_ms=2.0,
                           late_p99_ms=50.0, late_max_ms=60.0, late_share=0.02)
    return CapacityStep(calls, connected, 6.0, stream, received, cpu, 0.1, 0.2)


def test_calls_per_core_takes_the_largest_on_time_step() -> None:
    steps = [step(1, 1, 2.0, 0.05), step(10, 10, 5.0, 0.40), step(20, 20, 35.0, 0.90)]
    assert calls_per_core(steps) == (pytest.approx(25.0), 10)
    # A step where not every call connected does not count, even if on time.
    assert calls_per_core([step(1, 1, 2.0, 0.05), step(5, 4, 2.0, 0.2)]) == (pytest.approx(20.0), 1)
    assert calls_per_core([step(1, 1, 30.0, 0.05)]) == (None, None)


def test_a_step_whose_clients_fell_behind_does_not_count() -> None:
    """40 calls, the transceiver's frames on time, but the clients decoded 80% of
    them: they were out of CPU and sent less audio, so the transceiver had less
    to do than 40 calls. The step is n/a, and the capacity is the step below."""
    behind = step(40, 40, 13.0, 0.64)
    behind.received = StreamStats(frames=9600, expected=12000, late_p50_ms=530.0,
                                  late_p99_ms=1167.0, late_max_ms=1203.0, late_share=0.96)
    assert behind.sent.on_time and not behind.clients_kept_up
    assert not behind.on_time and behind.verdict == "n/a (clients behind)"
    steps = [step(10, 10, 4.0, 0.45), step(20, 20, 9.7, 0.67), behind]
    assert calls_per_core(steps) == (pytest.approx(20 / 0.67), 20)
    assert HostRun(2, steps).calls == 20
    assert step(20, 20, 25.0, 0.6).verdict == "no"


def test_report_has_each_table_and_the_derived_figures() -> None:
    res = VoiceResults(
        env={"kernel": "6.18", "cores": 2, "xdp_mode": "native"},
        setup={"relay": [SetupSample(10, 40, 45, 150)] * 3, "direct": [SetupSample(8, 30, 35, 120)] * 3},
        setup_failures={"relay": [], "direct": ["timed out"]},
        capacity=[step(1, 1, 2.0, 0.05), step(5, 5, 4.0, 0.25)],
        turns=[TurnSample(900.0, 200.0), TurnSample(1000.0, 250.0), TurnSample(950.0, 100.0)],
        vad_silence_ms=500.0,
        notes=["shared machine"],
    )
    md = render_markdown(res)
    assert "| relay | 3 | 10.0 / 10.0 | 40.0 / 40.0 | 45.0 / 45.0 | 150.0 / 150.0 |" in md
    assert "| direct | 3 (1 failed) |" in md
    assert "Relay minus direct, first audio: p50 30.0 ms, p95 30.0 ms." in md
    assert "| 5 | 5 | 1500 / 1500 | 1.0 / 4.0 / 4.0 | 2.0 / 50.0 | 25% | 5.0% | 0.00 | 10% | 20% | yes |" in md
    assert "**Calls per transceiver core: 20** (at 5 concurrent calls" in md
    assert "**Median overhead: 750.0 ms** over 3 turns" in md
    assert "- shared machine" in md
    raw = results_json(res)
    assert raw["calls_per_core"] == pytest.approx(20.0)
    assert raw["overhead_median_ms"] == pytest.approx(750.0)
    assert raw["capacity"][1]["sent"]["on_time"] is True
    # The clients' lateness (50 ms p99 here) does not decide: the transceiver's own pacing does.
    assert raw["capacity"][1]["received"]["on_time"] is False


def test_report_without_samples_says_so() -> None:
    md = render_markdown(VoiceResults(setup_failures={"relay": ["x", "y"]}))
    assert "| relay | 0 (2 failed) | n/a | n/a | n/a | n/a |" in md
    assert "Calls per core: n/a" in md
    assert "No turn completed." in md


SRC = bytes([10, 77, 0, 2])


def udp_packet(payload: bytes, src: bytes = SRC, sport: int = 40123, proto: int = 17) -> bytes:
    ip = bytes([0x45, 0]) + (20 + 8 + len(payload)).to_bytes(2, "big") + bytes(5) + bytes([proto])
    ip += bytes(2) + src + bytes([192, 0, 2, 2])
    udp = sport.to_bytes(2, "big") + (5000).to_bytes(2, "big") + (8 + len(payload)).to_bytes(2, "big") + bytes(2)
    return ip + udp + payload


def test_rtp_audio_source_port_keeps_rtp_from_the_transceiver_only() -> None:
    rtp = bytes([0x80, 111]) + bytes(10) + b"opus"
    assert rtp_audio_source_port(udp_packet(rtp), SRC) == 40123
    assert rtp_audio_source_port(udp_packet(bytes([0x80, 0x80 | 111]) + bytes(14)), SRC) == 40123  # marker bit
    assert rtp_audio_source_port(udp_packet(bytes([0x80, 200]) + bytes(14)), SRC) is None  # RTCP SR
    assert rtp_audio_source_port(udp_packet(bytes([0x00, 0x01]) + bytes(18)), SRC) is None  # STUN
    assert rtp_audio_source_port(udp_packet(bytes([22, 0xFE]) + bytes(14)), SRC) is None  # DTLS
    assert rtp_audio_source_port(udp_packet(rtp, src=bytes([10, 77, 0, 1])), SRC) is None
    assert rtp_audio_source_port(udp_packet(rtp, proto=6), SRC) is None
    assert rtp_audio_source_port(bytes([0x60]) + bytes(60), SRC) is None  # IPv6
    assert rtp_audio_source_port(udp_packet(bytes([0x80, 111])), SRC) is None  # too short for RTP


def test_report_names_why_calls_did_not_connect() -> None:
    failed = step(40, 34, 3000.0, 0.55)
    failed.failures = ["POST /v1/calls: 503 at capacity"]
    md = render_markdown(VoiceResults(capacity=[step(1, 1, 2.0, 0.05), failed]))
    assert "40 calls: 6 did not connect: POST /v1/calls: 503 at capacity" in md
    assert "**Calls per transceiver core: 20** (at 1 concurrent calls" in md


def test_better_step_prefers_on_time_then_connected_then_lower_lateness() -> None:
    late, on_time = step(10, 10, 60.0, 0.5), step(10, 10, 5.0, 0.5)
    assert better_step(late, on_time) is on_time
    assert better_step(on_time, late) is on_time
    fewer = step(10, 8, 900.0, 0.5)
    assert better_step(fewer, late) is late
    assert better_step(step(10, 10, 300.0, 0.5), late) is late


def test_frames_runs_compare_per_call_cpu_against_stock_in_the_same_window() -> None:
    """--model-audio-frames: each run's ratio comes from its own largest on-time
    step (transceiver CPU per call over the clients' in that window)."""
    one = FramesRun(1, [step(5, 5, 3.0, 0.35), step(10, 10, 40.0, 0.80)])
    for st in one.steps:
        st.client_cpu = 0.60
    two = FramesRun(2, [step(5, 5, 3.0, 0.28), step(10, 10, 6.0, 0.50)])
    for st in two.steps:
        st.client_cpu = 1.10
    late = FramesRun(2, [step(5, 5, 40.0, 0.30)])
    assert one.per_call_ratio() == pytest.approx(0.35 / 0.60)  # the 5-call step
    assert two.per_call_ratio() == pytest.approx(0.50 / 1.10)  # the 10-call step
    assert late.per_call_ratio() is None
    md = "\n".join(render_frames_runs([one, two, late]))
    assert "| 1 | 1 | 5 | 7.0% | 12.0% | 0.58 | 14 / 8 = **1.71x** |" in md
    assert "| 2 | 2 | 10 | 5.0% | 11.0% | 0.45 | 20 / 9 = **2.20x** |" in md
    assert "| 3 | 2 | none (5: no) | n/a | n/a | n/a | n/a |" in md
    assert "### Frames per gRPC message" in render_markdown(VoiceResults(frames_runs=[two]))
