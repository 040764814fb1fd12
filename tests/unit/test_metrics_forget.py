# SPDX-License-Identifier: Apache-2.0
"""A transceiver that leaves the map leaves /metrics too (its probe gauges)."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest

from orchestrator.service import run_orchestrator
from tests.unit.orch_fakes import FakeRelayView
from tests.unit.test_metrics_service import samples
from voxrelay.config import Config
from voxrelay.directory import TransceiverRecord, connect


def probe_labels(registry) -> set[tuple[str, str]]:
    got = samples(generate_latest(registry).decode())
    return {(name, dict(labels)["transceiver"]) for name, labels in got
            if name.startswith("voxrelay_probe_")}


async def test_removed_transceiver_probe_metrics_are_forgotten():
    view = FakeRelayView()
    config = Config()
    config.orchestrator.listen = "127.0.0.1:0"
    config.orchestrator.metrics_listen = "127.0.0.1:0"
    stop = asyncio.Event()
    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_orchestrator(config, view, stop, poll=0.05,
                                                on_ready=lambda r: ready.set_result(r)))
    try:
        running = await asyncio.wait_for(ready, 5)
        client = connect(f"http://127.0.0.1:{running.directory_port}")
        try:
            await client.announce(TransceiverRecord(5, "10.0.1.5", 3479))
            await client.announce(TransceiverRecord(6, "10.0.1.6", 3479))
            for _ in range(250):
                if {5, 6} <= set(view.txrs):
                    break
                await asyncio.sleep(0.02)
            assert {5, 6} <= set(view.txrs)
            running.metrics.record_probe(5, True, 1.5)
            running.metrics.record_probe(6, False, None)
            running.metrics.record_probe(6, True, 2.0)
            assert probe_labels(running.metrics.registry) == {
                ("voxrelay_probe_success", "5"), ("voxrelay_probe_rtt_seconds", "5"),
                ("voxrelay_probe_success", "6"), ("voxrelay_probe_rtt_seconds", "6")}

            assert await client.remove(5) is True
            for _ in range(250):
                if 5 not in view.txrs:
                    break
                await asyncio.sleep(0.02)
            assert 5 not in view.txrs
            assert probe_labels(running.metrics.registry) == {
                ("voxrelay_probe_success", "6"), ("voxrelay_probe_rtt_seconds", "6")}
        finally:
            await client.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
