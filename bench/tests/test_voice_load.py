# SPDX-License-Identifier: Apache-2.0
"""bench/voice.py, turns under load with the model included: the verdicts and the report (pure)."""

from __future__ import annotations

from bench.voice import (
    MODEL_BUDGET_MS,
    TURN_BUDGET_MS,
    LoadTurnStep,
    StreamStats,
    VoiceResults,
    capacity_with_model,
    first_late_step,
    render_markdown,
    results_json,
)

ON_TIME = StreamStats(frames=500, expected=500, late_p50_ms=0.1, late_p99_ms=2.0,
                      late_max_ms=5.0, late_share=0.0)
LATE = StreamStats(frames=500, expected=500, late_p50_ms=5.0, late_p99_ms=45.0,
                   late_max_ms=90.0, late_share=0.2)


def step(calls: int, latencies: list[float], processing: list[float] | None = None,
         sent: StreamStats = ON_TIME, connected: int | None = None) -> LoadTurnStep:
    return LoadTurnStep(calls=calls, connected=calls if connected is None else connected,
                        latencies_ms=latencies, processing_ms=processing or [150.0] * len(latencies),
                        sent=sent, window_s=10.0, transceiver_cpu=0.2, model_cpu=0.5)


def test_capacity_is_the_last_step_before_the_first_out_of_budget() -> None:
    steps = [step(1, [900.0]), step(5, [950.0] * 5), step(10, [1000.0] * 9 + [TURN_BUDGET_MS + 1]),
             step(20, [900.0] * 20)]
    # At 10, the p95 (nearest rank) of 10 samples is the largest: over budget.
    assert [s.within_capacity for s in steps] == [True, True, False, True]
    assert capacity_with_model(steps) == 5  # a later good step does not count
    assert capacity_with_model([step(1, [])]) is None  # no reply at all


def test_the_first_late_step_names_who_was_late() -> None:
    slow_model = [MODEL_BUDGET_MS + 500] * 10
    steps = [step(1, [900.0]), step(5, [1200.0] * 5, sent=LATE),
             step(10, [2500.0] * 10, processing=slow_model)]
    assert first_late_step(steps) == (5, ["transceiver"])
    assert first_late_step(steps[2:]) == (10, ["model"])
    # A call that got no reply is the model's lateness too.
    assert first_late_step([step(5, [900.0] * 4)]) == (5, ["model"])
    assert first_late_step(steps[:1]) == (None, [])


def test_report_has_the_table_capacity_and_first_late_step() -> None:
    res = VoiceResults(load_turns=[step(1, [800.0]), step(5, [900.0, 1000.0, 1100.0, 1200.0,
                                                              1300.0]),
                                   step(10, [3000.0] * 10, sent=LATE)])
    text = render_markdown(res)
    assert "### Turns under load, model included" in text
    assert "| 5 | 5 | 5 | 1100 / 1300 | 150 / 150 | 2.0 | 20% | 50% | no |" in text
    assert "| 10 | 10 | 10 | 3000 / 3000 | 150 / 150 | 45.0 | 20% | 50% | transceiver |" in text
    assert "**Capacity with the model: 5 concurrent calls**" in text
    assert "First late step: 10 calls (transceiver late)." in text
    data = results_json(res)
    assert data["capacity_with_model"] == 5 and data["first_late_step"] == 10
    assert data["load_turns"][1]["latency_p95_ms"] == 1300.0
