# SPDX-License-Identifier: Apache-2.0
"""A transceiver that leaves the map leaves /metrics too (its probe gauges)."""

from __future__ import annotations

from prometheus_client import generate_latest

from tests.support import DIRECTORY_SECRET, until_async
from tests.unit.orch_fakes import FakeRelayView, embedded_orchestrator
from tests.unit.test_metrics_service import samples
from voxrelay.directory import TransceiverRecord, connect


def probe_labels(registry) -> set[tuple[str, str]]:
    got = samples(generate_latest(registry).decode())
    return {(name, dict(labels)["transceiver"]) for name, labels in got
            if name.startswith("voxrelay_probe_")}


async def test_removed_transceiver_probe_metrics_are_forgotten():
    view = FakeRelayView()
    async with embedded_orchestrator(view) as running:
        client = connect(f"http://127.0.0.1:{running.directory_port}", secret=DIRECTORY_SECRET)
        try:
            await client.announce(TransceiverRecord(5, "10.0.1.5", 3479))
            await client.announce(TransceiverRecord(6, "10.0.1.6", 3479))
            await until_async(lambda: {5, 6} <= set(view.txrs), what="5 and 6 in the map")
            running.metrics.record_probe(5, True, 1.5)
            running.metrics.record_probe(6, False, None)
            running.metrics.record_probe(6, True, 2.0)
            assert probe_labels(running.metrics.registry) == {
                ("voxrelay_probe_success", "5"), ("voxrelay_probe_rtt_seconds", "5"),
                ("voxrelay_probe_success", "6"), ("voxrelay_probe_rtt_seconds", "6")}

            assert await client.remove(5) is True
            await until_async(lambda: 5 not in view.txrs, what="5 to leave the map")
            assert probe_labels(running.metrics.registry) == {
                ("voxrelay_probe_success", "6"), ("voxrelay_probe_rtt_seconds", "6")}
        finally:
            await client.close()
