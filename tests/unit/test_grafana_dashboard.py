# SPDX-License-Identifier: Apache-2.0
"""The shipped dashboard parses and only queries metrics the exporter serves."""

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from orchestrator.metrics import OrchestratorMetrics
from tests.unit.orch_fakes import FakeRelayView

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "voxrelay.json"


def test_dashboard_queries_exported_metrics():
    dash = json.loads(DASHBOARD.read_text())
    view = FakeRelayView()
    view.counters = {"rx_total": 2, "fwd_new_flow": 1, "drop_not_stun": 1}
    m = OrchestratorMetrics(view)
    m.record_probe(1, True, 1.0)
    m.sync_lag.observe(0.01)
    exported = set(re.findall(r"^(voxrelay_\w+)", generate_latest(m.registry).decode(), re.MULTILINE))
    used = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"voxrelay_\w+", target["expr"]))
    assert used, "dashboard has no queries"
    assert used <= exported, f"dashboard queries unknown metrics: {sorted(used - exported)}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
