# SPDX-License-Identifier: Apache-2.0
"""Sync, takeover and /metrics against the real BPF maps (root), with real Redis.

One relay is compiled, its maps pinned under a unique name, and its program
loaded (not attached) for BPF_PROG_TEST_RUN. The orchestrator side reopens
the maps from the pins, exactly as ``voxrelay orchestrator run`` does, and
an independent handle (the compiling one) checks what the kernel holds.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
from ipaddress import IPv4Address

import pytest
from prometheus_client import generate_latest

from lab import bpftest, stun
from lab.pinned_relay import pinned_relay
from orchestrator import bpfprog
from orchestrator.metrics import OrchestratorMetrics
from orchestrator.sync import Syncer, keyring_from_map
from tests.support import until_async
from tests.unit.test_metrics_service import samples
from voxrelay import token as tk
from voxrelay.config import RelayConfig
from voxrelay.directory import TransceiverRecord
from voxrelay.directory.memory import MemoryDirectory
from voxrelay.directory.redis import RedisDirectory

pytestmark = pytest.mark.root

VIP = "198.51.100.10"
PRIVATE = "10.77.0.1"
LIMITS = {"MAX_FLOWS": 4096, "MAX_RATE_SOURCES": 1024, "MAX_TOKENS_TRACKED": 1024,
          "MAX_RELAY_PORTS": 4096}


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def relay():
    """(kernel-side RelayMaps, prog fd, orchestrator-side view from the pins)."""
    with pinned_relay(LIMITS, prefix="vxo") as pinned:
        fd = bpfprog.load_relay_fn(pinned.bpf).fd
        yield pinned.kernel, fd, pinned.view
    assert not pinned.pin_dir.exists()


@pytest.fixture
def clean(relay):
    kernel, _fd, _view = relay
    for key_id in kernel.active_keys():
        kernel.retire_key(key_id)
    for txr_id in list(kernel.transceivers()):
        kernel.delete_transceiver(txr_id)
    kernel.clear_flow_state()
    kernel.reset_stats()
    return relay


def kernel_txrs(kernel) -> dict[int, tuple[str, str]]:
    return {i: (str(e.addr), e.status.name) for i, e in kernel.transceivers().items()}


@pytest.fixture(params=["memory", "redis"])
def make_directory(request):
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None

    def make(clock, grace=10.0):
        if server is None:
            return MemoryDirectory(grace=grace, clock=clock)
        return RedisDirectory(server.url, grace=grace, clock=clock, prefix="b:")

    return make


async def test_add_drain_remove_expire_rotate_into_real_maps(clean, make_directory):
    kernel, _, view = clean
    clock = Clock()
    directory = make_directory(clock)
    sync = Syncer(directory, view, hold=0.0, clock=clock)
    try:
        ring = await directory.ensure_keyring()
        await directory.announce(TransceiverRecord(7, "10.77.0.21", 3479))
        await directory.announce(TransceiverRecord(8, "10.77.0.22", 3479))
        await sync.reconcile()
        assert kernel_txrs(kernel) == {7: ("10.77.0.21", "ACTIVE"), 8: ("10.77.0.22", "ACTIVE")}
        assert kernel.active_keys() == [ring.current]
        assert view.keys() == ring.active_keys()  # key material read back from the kernel

        await directory.drain(8)
        await sync.reconcile()
        assert kernel_txrs(kernel)[8] == ("10.77.0.22", "DRAINING")

        await directory.remove(7)
        await sync.reconcile()
        assert set(kernel_txrs(kernel)) == {8}

        clock.now += 11  # 8 misses its heartbeats past the grace
        await sync.reconcile()
        assert kernel_txrs(kernel) == {}

        second = await directory.rotate_keys()
        await sync.reconcile()
        assert kernel.active_keys() == sorted(second.active)
        third = await directory.rotate_keys()
        await sync.reconcile()
        assert kernel.active_keys() == sorted(third.active)
        assert ring.current not in kernel.active_keys()
        assert view.keys() == third.active_keys()
    finally:
        await directory.close()


async def test_redis_restart_keeps_real_maps_then_resyncs(clean, redis_server):
    kernel, _, view = clean
    directory = RedisDirectory(redis_server.url, prefix="r:", timeout=0.5)
    sync = Syncer(directory, view, poll=0.05, hold=0.0, backoff_min=0.05, backoff_max=0.2,
                  ensure_keys=True)
    stop = asyncio.Event()
    await directory.announce(TransceiverRecord(7, "10.77.0.21", 3479))
    task = asyncio.create_task(sync.run(stop))
    try:
        await until_async(lambda: 7 in kernel.transceivers() and kernel.active_keys())
        before = (kernel_txrs(kernel), view.keys())
        redis_server.stop()
        await until_async(lambda: not sync.connected)
        await asyncio.sleep(0.3)  # a few failed reconnects
        assert (kernel_txrs(kernel), view.keys()) == before
        redis_server.start()
        await until_async(lambda: sync.connected and sync.in_sync)
        assert (kernel_txrs(kernel), view.keys()) == before
        await directory.announce(TransceiverRecord(9, "10.77.0.29", 3479))
        await until_async(lambda: 9 in kernel.transceivers())
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await directory.close()


async def test_restarted_embedded_orchestrator_changes_nothing(clean):
    """A new orchestrator (empty embedded directory) takes over the pinned maps:
    keys are recovered from the map, transceivers held until they re-announce."""
    kernel, _, view = clean
    first = MemoryDirectory()
    await Syncer(first, view, hold=0.0).reconcile()  # nothing yet
    await first.ensure_keyring()
    await first.rotate_keys()
    await first.announce(TransceiverRecord(7, "10.77.0.21", 3479))
    await Syncer(first, view, hold=0.0).reconcile()
    before = (kernel_txrs(kernel), view.keys())

    second = MemoryDirectory()
    second.restore_keyring(keyring_from_map(view.keys()))
    assert (await second.keyring()) == (await first.keyring())
    sync = Syncer(second, view, poll=0.05, hold=5.0, ensure_keys=True)
    stop = asyncio.Event()
    task = asyncio.create_task(sync.run(stop))
    try:
        await until_async(lambda: sync.in_sync)
        assert (kernel_txrs(kernel), view.keys()) == before
        await second.announce(TransceiverRecord(7, "10.77.0.21", 3479))  # the re-announce
        await asyncio.sleep(0.2)
        assert (kernel_txrs(kernel), view.keys()) == before
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def udp_packet(dst: str, dport: int, payload: bytes, src: str = "203.0.113.5", sport: int = 50000) -> bytes:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload)


def test_metrics_equal_map_counters_after_known_traffic(clean):
    kernel, fd, view = clean
    relay = RelayConfig(public_port=3478, port_min=40000, port_max=40999,
                        new_flows_per_sec=0, max_flows_per_token=0)
    kernel.write_config(relay, public_addr=VIP, private_addr=PRIVATE,
                        public_ifindex=1, private_ifindex=1)
    key = bytes(range(16))
    kernel.set_key(1, key)
    kernel.set_transceiver(7, "10.77.0.21")
    traffic = {
        "drop_not_stun": [udp_packet(VIP, 3478, b"hello, not stun", sport=50000 + i) for i in range(3)],
        "drop_token_bad_mac": [stun.binding_request(tk.mint(bytes(16), key_id=1, transceiver_id=7, port=40000))
                               for _ in range(2)],
        "drop_transceiver_unknown": [stun.binding_request(tk.mint(key, key_id=1, transceiver_id=99, port=40000))],
        "pass_not_relay": [udp_packet(VIP, 53, b"dns?") for _ in range(4)],
    }
    for reason, packets in traffic.items():
        for packet in packets:
            if reason.startswith(("drop_token", "drop_transceiver")):
                packet = udp_packet(VIP, 3478, packet)
            bpftest.prog_test_run(fd, packet)
    stats = view.stats()
    expected = {reason: len(p) for reason, p in traffic.items()}
    assert {k: v for k, v in stats.items() if v and k != "rx_total"} == expected
    assert stats["rx_total"] == sum(expected.values())

    got = samples(generate_latest(OrchestratorMetrics(view).registry).decode())
    assert got[("voxrelay_packets_received_total", ())] == stats["rx_total"]
    for name, value in stats.items():
        if name == "rx_total":
            continue
        verdict, _, reason = name.partition("_")
        assert got[("voxrelay_packets_total", (("reason", reason), ("verdict", verdict)))] == value
    assert got[("voxrelay_transceivers", (("status", "active"),))] == 1
    assert got[("voxrelay_flows_capacity", ())] == LIMITS["MAX_FLOWS"]
    assert got[("voxrelay_flows", ())] == 0


def test_flows_view_after_a_new_flow(clean):
    """A valid token through PROG_TEST_RUN creates a flow the CLI view shows
    (the forward may end in fib failure on loopback; the flow exists either way
    only when the program created it, so check the verdict first)."""
    kernel, fd, view = clean
    relay = RelayConfig(public_port=3478, port_min=40000, port_max=40999,
                        new_flows_per_sec=0, max_flows_per_token=0)
    kernel.write_config(relay, public_addr=VIP, private_addr=PRIVATE, public_ifindex=1, private_ifindex=1)
    key = bytes(range(16))
    kernel.set_key(1, key)
    kernel.set_transceiver(7, "10.77.0.21")
    ufrag = tk.mint(key, key_id=1, transceiver_id=7, port=40123)
    bpftest.prog_test_run(fd, udp_packet(VIP, 3478, stun.binding_request(ufrag), src="203.0.113.9", sport=41000))
    flows = view.flows()
    if not flows:
        pytest.fail(f"no flow created; counters: { {k: v for k, v in view.stats().items() if v} }")
    (flow,) = flows
    assert (flow.client, flow.transceiver_id, flow.transceiver) == ("203.0.113.9:41000", 7, "10.77.0.21:40123")
    assert 40000 <= flow.relay_port <= 40999
    assert view.flow_count() == 1


def test_open_pinned_relay_errors():
    from orchestrator.bccview import open_relay as open_pinned_relay
    from orchestrator.relay import RelayUnavailable

    with pytest.raises(RelayUnavailable) as exc:
        open_pinned_relay(f"absent-{secrets.token_hex(3)}")
    assert str(exc.value).startswith("no relay 'absent-")
    assert "run `voxrelay relay load` first" in str(exc.value)
    assert IPv4Address(VIP)  # keep the import honest
    _ = struct
