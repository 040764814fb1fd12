# SPDX-License-Identifier: Apache-2.0
"""The shipped dashboard parses and only queries metrics the exporter serves."""

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from orchestrator.media import ConsentRtt, FlowMedia, MediaStats
from orchestrator.metrics import OrchestratorMetrics
from orchestrator.relay import FlowEntry
from tests.unit.orch_fakes import FakeRelayView

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "voxrelay.json"


def test_dashboard_queries_exported_metrics():
    dash = json.loads(DASHBOARD.read_text())
    view = FakeRelayView()
    view.counters = {"rx_total": 2, "fwd_new_flow": 1, "drop_not_stun": 1}
    media = FlowMedia(
        to_transceiver=MediaStats(packets=9, expected=10, reordered=0, duplicates=0, resyncs=0,
                                  jitter_ms=2.0),
        client_rtt=ConsentRtt(samples=1, last_ms=30.0, mean_ms=30.0, max_ms=30.0))
    view.flow_rows = [FlowEntry("198.51.100.7:5000", 1, "10.0.0.1:40000", 20001, 3.0, 0.5,
                                media=media)]
    m = OrchestratorMetrics(view)
    m.record_probe(1, True, 1.0)
    m.sync_lag.observe(0.01)
    exported = set(re.findall(r"^(voxrelay_\w+)", generate_latest(m.registry).decode(), re.MULTILINE))
    assert "voxrelay_flow_jitter_seconds_bucket" in exported
    used = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"voxrelay_\w+", target["expr"]))
    assert used, "dashboard has no queries"
    assert used <= exported, f"dashboard queries unknown metrics: {sorted(used - exported)}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
