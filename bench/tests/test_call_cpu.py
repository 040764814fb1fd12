# SPDX-License-Identifier: Apache-2.0
"""bench/call_cpu.py: the report's rows and the timer (the measuring is the bench)."""

from __future__ import annotations

from bench.call_cpu import per_frame_us, render_markdown, speech_chunks


def test_report_has_a_row_per_work_with_its_ratio() -> None:
    text = render_markdown([("outbound silence (encode)", 300.0, 3.0), ("x", 1.0, 0.0)], 500)
    assert "| outbound silence (encode) | 300.0 | 3.0 | 100x |" in text
    assert "| x | 1.0 | 0.0 | n/a |" in text
    assert "500 frames" in text


def test_timer_counts_this_threads_cpu_per_call() -> None:
    assert per_frame_us(lambda i: sum(range(20000)), 20) > per_frame_us(lambda i: None, 20)


def test_speech_chunks_are_20_ms_and_not_silent() -> None:
    chunks = speech_chunks(3)
    assert [len(c) for c in chunks] == [640, 640, 640]
    assert any(chunks[0])
