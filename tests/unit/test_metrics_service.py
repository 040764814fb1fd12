# SPDX-License-Identifier: Apache-2.0
"""/metrics and `orchestrator run` as a library, with fake maps."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.media import ConsentRtt, FlowMedia, MediaStats
from orchestrator.metrics import OrchestratorMetrics, split_stat
from orchestrator.relay import FlowEntry
from orchestrator.service import run_orchestrator
from orchestrator.sync import MapTransceiver
from tests.support import DIRECTORY_SECRET, until_async
from tests.unit.orch_fakes import FakeRelayView, embedded_orchestrator
from voxrelay.config import Config
from voxrelay.directory import TransceiverRecord, connect


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_split_stat():
    assert split_stat("drop_token_bad_mac") == ("drop", "token_bad_mac")
    assert split_stat("fwd_to_client") == ("fwd", "to_client")
    assert split_stat("rx_total") is None


def test_collector_reports_the_maps():
    from prometheus_client import generate_latest

    view = FakeRelayView()
    view.counters = {"rx_total": 9, "fwd_new_flow": 1, "drop_not_stun": 8}
    view.txrs = {1: MapTransceiver("10.0.0.1", "active"), 2: MapTransceiver("10.0.0.2", "draining"),
                 3: MapTransceiver("10.0.0.3", "draining")}
    view.key_slots = {1: bytes(16)}
    view.flow_rows = [FlowEntry("198.51.100.7:5000", 1, "10.0.0.1:40000", 20001, 3.0, 0.5),
                      FlowEntry("198.51.100.8:6000", 2, "10.0.0.2:40002", 20002, 9.0, 1.5)]
    m = OrchestratorMetrics(view)
    m.record_probe(1, True, 2.5)
    m.record_probe(2, False, None)
    got = samples(generate_latest(m.registry).decode())
    assert got[("voxrelay_packets_received_total", ())] == 9
    assert got[("voxrelay_packets_total", (("reason", "new_flow"), ("verdict", "fwd")))] == 1
    assert got[("voxrelay_packets_total", (("reason", "not_stun"), ("verdict", "drop")))] == 8
    assert got[("voxrelay_flows", ())] == 2 and got[("voxrelay_flows_capacity", ())] == 1024
    assert got[("voxrelay_transceivers", (("status", "draining"),))] == 2
    assert got[("voxrelay_transceivers", (("status", "active"),))] == 1
    assert got[("voxrelay_token_keys_active", ())] == 1
    assert got[("voxrelay_probe_success", (("transceiver", "1"),))] == 1
    assert got[("voxrelay_probe_success", (("transceiver", "2"),))] == 0
    assert got[("voxrelay_probe_rtt_seconds", (("transceiver", "1"),))] == 0.0025
    # No label anywhere carries an address.
    assert not any("10.0.0" in str(labels) for _, labels in got)
    # Flow counting is rate-limited (it walks the whole map).
    generate_latest(m.registry)
    assert view.flow_count_calls == 1


async def test_orchestrator_run_embedded_end_to_end():
    view = FakeRelayView()
    view.key_slots = {7: bytes(range(16))}  # as left by a previous orchestrator
    view.txrs = {3: MapTransceiver("10.0.1.3", "active")}
    async with embedded_orchestrator(view, heartbeat_grace_seconds=30) as running:
        client = connect(f"http://127.0.0.1:{running.directory_port}", secret=DIRECTORY_SECRET)
        # The restarted embedded directory kept the map's key: old tokens stay valid.
        ring = await client.keyring()
        assert ring.current == 7
        assert ring.active_keys() == view.key_slots
        await client.announce(TransceiverRecord(4, "10.0.1.4", 3479))
        await until_async(lambda: 4 in view.txrs, what="transceiver 4 in the map")
        assert view.txrs[4] == MapTransceiver("10.0.1.4", "active")
        # Transceiver 3 is in its hold period (it may be about to re-announce).
        assert 3 in view.txrs
        await client.close()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{running.metrics_port}/metrics") as resp,
        ):
            text = await resp.text()
        got = samples(text)
        assert got[("voxrelay_directory_connected", ())] == 1
        assert got[("voxrelay_maps_in_sync", ())] == 1
        assert got[("voxrelay_sync_lag_seconds_count", ())] == 1
        assert got[("voxrelay_transceivers", (("status", "active"),))] == 2
    assert 4 in view.txrs  # stopping leaves the maps as they are


class RecordingUpkeep:
    """service.Upkeep that records what the orchestrator asked of it."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.primed: list[str] = []
        self.clock_refreshes = 0

    async def start(self) -> None:
        self.events.append("start")

    async def stop(self) -> None:
        self.events.append("stop")

    def prime(self, addresses) -> None:
        self.primed.extend(addresses)

    def refresh_clock(self) -> int | None:
        self.clock_refreshes += 1
        return 0


async def test_orchestrator_run_primes_added_transceivers_and_refreshes_the_clock():
    view = FakeRelayView()
    view.txrs = {3: MapTransceiver("10.0.1.3", "active")}
    config = Config()
    config.orchestrator.listen = "127.0.0.1:0"
    config.orchestrator.metrics_listen = "127.0.0.1:0"
    upkeep = RecordingUpkeep()
    stop = asyncio.Event()
    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_orchestrator(
        config, view, stop, poll=0.05, upkeep=upkeep, upkeep_interval=0.05,
        on_ready=lambda r: ready.set_result(r)))
    try:
        running = await asyncio.wait_for(ready, 5)
        assert upkeep.events == ["start"]
        client = connect(f"http://127.0.0.1:{running.directory_port}", secret=DIRECTORY_SECRET)
        await client.announce(TransceiverRecord(4, "10.0.1.4", 3479))
        for _ in range(250):
            if "10.0.1.4" in upkeep.primed and upkeep.clock_refreshes >= 3:
                break
            await asyncio.sleep(0.02)
        await client.close()
        assert view.txrs[4] == MapTransceiver("10.0.1.4", "active")
        # Primed when the sync wrote it, and the one already in the map by the periodic pass.
        assert "10.0.1.4" in upkeep.primed and "10.0.1.3" in upkeep.primed
        assert upkeep.clock_refreshes >= 3
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert upkeep.events == ["start", "stop"]


def _media_flow(client: str, txr: int, jitter_ms: float, lost: int, rtt_ms: float | None,
                idle_s: float = 0.5) -> FlowEntry:
    up = MediaStats(packets=1000 - lost, expected=1000, reordered=2, duplicates=1, resyncs=0,
                    jitter_ms=jitter_ms)
    down = MediaStats(packets=500, expected=500, reordered=0, duplicates=0, resyncs=0,
                      jitter_ms=1.0)
    rtt = None if rtt_ms is None else ConsentRtt(samples=3, last_ms=rtt_ms, mean_ms=rtt_ms,
                                                 max_ms=rtt_ms)
    return FlowEntry(client, txr, "10.0.0.1:40000", 20001, 30.0, idle_s, 120.0,
                     media=FlowMedia(to_transceiver=up, to_client=down, client_rtt=rtt))


def test_flow_media_histograms_per_transceiver_and_direction():
    """Each live flow is one observation; expired flows are left out; no
    label carries an address; the flow walk is rate-limited."""
    from prometheus_client import generate_latest

    view = FakeRelayView()
    view.flow_rows = [
        _media_flow("198.51.100.7:5000", 1, jitter_ms=1.5, lost=0, rtt_ms=40.0),
        _media_flow("198.51.100.8:6000", 1, jitter_ms=40.0, lost=30, rtt_ms=None),
        _media_flow("198.51.100.9:7000", 2, jitter_ms=4.0, lost=10, rtt_ms=120.0),
        _media_flow("198.51.100.10:7000", 2, jitter_ms=90.0, lost=900, rtt_ms=900.0,
                    idle_s=300.0),  # expired: not a live call
    ]
    got = samples(generate_latest(OrchestratorMetrics(view).registry).decode())
    up1 = (("direction", "to_transceiver"), ("transceiver", "1"))
    assert got[("voxrelay_flow_jitter_seconds_count", up1)] == 2
    assert got[("voxrelay_flow_jitter_seconds_bucket", (("direction", "to_transceiver"),
                ("le", "0.002"), ("transceiver", "1")))] == 1
    assert got[("voxrelay_flow_jitter_seconds_sum", up1)] == 0.0415
    assert got[("voxrelay_flow_loss_ratio_bucket", (("direction", "to_transceiver"),
                ("le", "0.02"), ("transceiver", "1")))] == 1   # 0 and 3%: one within 2%
    up2 = (("direction", "to_transceiver"), ("transceiver", "2"))
    assert got[("voxrelay_flow_loss_ratio_count", up2)] == 1, "the expired flow is not counted"
    assert got[("voxrelay_flow_consent_rtt_seconds_count",
                (("leg", "client"), ("transceiver", "1")))] == 1
    assert got[("voxrelay_flow_rtp_packets", (("direction", "to_transceiver"), ("kind", "lost"),
                ("transceiver", "1")))] == 30
    assert got[("voxrelay_flow_rtp_packets", (("direction", "to_client"), ("kind", "received"),
                ("transceiver", "2")))] == 500
    assert not any("198.51.100" in str(labels) or "10.0.0" in str(labels) for _, labels in got)
