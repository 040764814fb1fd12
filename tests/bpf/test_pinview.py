# SPDX-License-Identifier: Apache-2.0
"""orchestrator/pinview.py against a pinned relay: the same readings as bcc, without a compile."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from click.testing import CliRunner

from lab.relaylab import LAB_LIMITS, PRIVATE, VIP, lab_relay_config
from orchestrator import abi, bpfprog, pins
from orchestrator.bccmaps import (
    RelayMaps,
    TransceiverStatus,
    be16_of,
    be32_of,
    desired_blocked_sources,
)
from orchestrator.bccview import open_relay
from orchestrator.errors import MapLayoutError
from orchestrator.pinview import open_pinview
from orchestrator.sync import MapTransceiver
from orchestrator.verdicts import metric_label
from voxrelay.cli import cli

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def pinned() -> Iterator[tuple[str, Any]]:
    """(relay name, the compiling bcc.BPF) with config, keys, transceivers, flows and counters."""
    name = f"vxpv-{secrets.token_hex(4)}"
    pin_dir = pins.pin_dir_for(name)
    bpf = bpfprog.compile_relay(LAB_LIMITS, pin_dir)
    try:
        maps = RelayMaps(bpf)
        maps.write_config(lab_relay_config(), public_addr=VIP, private_addr=PRIVATE,
                          public_ifindex=1, private_ifindex=2)
        maps.set_key(1, bytes(range(16)))
        maps.set_key(2, bytes(range(16, 32)))
        maps.retire_key(2)
        maps.set_key(3, bytes(range(32, 48)))
        maps.set_transceiver(7, "10.77.0.21")
        maps.set_transceiver(8, "10.77.0.22", TransceiverStatus.DRAINING)
        maps.write_blocked_sources(desired_blocked_sources(
            replace(lab_relay_config(), blocked_source_prefixes=["203.0.113.0/24", "10.77.0.0/24"]),
            public_addr=VIP, private_addr=PRIVATE, private_networks=["10.77.0.0/24"],
            relay_addresses=["2001:db8:1::1"]))
        # Counters on every CPU, different per CPU, so that only a sum over all agrees.
        stats = bpf["stats"]
        for index in (abi.Stat.STAT_RX_TOTAL, abi.Stat.STAT_FWD_NEW_FLOW, abi.Stat.STAT_DROP_IPV6):
            leaf = stats.Leaf()
            for cpu in range(len(leaf)):
                leaf[cpu] = 1000 * int(index) + cpu + 1
            stats[stats.Key(int(index))] = leaf
        flows = bpf["flows"]
        now = time.monotonic_ns()
        for n in range(3):
            key = flows.Key()
            key.addr.addr[0] = be32_of(f"198.51.100.{7 + n}")
            key.port = be16_of(5000 + n)
            key.family = 2
            value = flows.Leaf()
            value.txr_addr.addr[0] = be32_of("10.77.0.21")
            value.txr_port = be16_of(40000 + n)
            value.relay_port = be16_of(20001 + n)
            value.relay_addr.addr[0] = be32_of(PRIVATE)
            value.transceiver_id = 7
            value.created_ns = now - 3_000_000_000
            value.last_seen_ns = now - 500_000_000
            flows[key] = value
        yield name, bpf
    finally:
        bpf.cleanup()
        pins.unpin_maps(pin_dir)


def test_maps_stats_through_pinview_equals_the_bcc_reading(pinned: tuple[str, Any]) -> None:
    name, bpf = pinned
    out = CliRunner().invoke(cli, ["maps", "stats", "--json", "--name", name])
    assert out.exit_code == 0, out.output
    via_cli = json.loads(out.output)
    kernel = RelayMaps(bpf)  # bcc's own tables: table.sum() over CPUs, bcc's key walk
    expected = {"counters": {metric_label(n): v for n, v in kernel.stats().items()},
                "flows": len(kernel.flows()), "flow_capacity": int(bpf["flows"].max_entries),
                "tcpfront": None}  # no ICE-TCP front runs beside this relay
    assert via_cli == expected
    cpus = len(bpf["stats"].Leaf())
    assert via_cli["counters"]["rx_total"] == sum(cpu + 1 for cpu in range(cpus))
    assert via_cli["counters"]["drop_ipv6"] == sum(26_000 + cpu + 1 for cpu in range(cpus))
    assert (via_cli["flows"], via_cli["flow_capacity"]) == (3, LAB_LIMITS["MAX_FLOWS"])


def test_every_reading_equals_bcc(pinned: tuple[str, Any]) -> None:
    name, bpf = pinned
    kernel = RelayMaps(bpf)
    bcc_view = open_relay(name)  # the sync's view: its reads come from a PinView too
    try:
        with open_pinview(name) as view:
            # bcc's own tables, decoded by bcc's ctypes, against the raw reads.
            assert view.transceivers() == {
                i: MapTransceiver(str(e.addr), e.status.name.lower())
                for i, e in kernel.transceivers().items()}
            assert view.keys() == {
                int(k.value): int(v.k0).to_bytes(8, "little") + int(v.k1).to_bytes(8, "little")
                for k, v in bpf["keys"].items() if v.active}
            assert sorted(view.keys()) == [1, 3]
            assert bcc_view.transceivers() == view.transceivers()
            assert bcc_view.keys() == view.keys()
            assert view.stats() == {metric_label(n): v for n, v in kernel.stats().items()}
            assert view.flow_count() == len(kernel.flows()) == 3
            # age and idle move with the clock; their difference does not
            got = sorted((f.client, f.transceiver_id, f.transceiver, f.relay_port,
                          round(f.age_s - f.idle_s, 3)) for f in view.flows())
            want = sorted((f"{f.client_addr}:{f.client_port}", f.transceiver_id,
                           f"{f.transceiver_addr}:{f.transceiver_port}", f.relay_port,
                           round((f.last_seen_ns - f.created_ns) / 1e9, 3))
                          for f in kernel.flows())
            assert got == want
            assert got[0] == ("198.51.100.7:5000", 7, "10.77.0.21:40000", 20001, 2.5)
    finally:
        bcc_view.close()


def test_maps_blocked_lists_every_prefix_and_why(pinned: tuple[str, Any]) -> None:
    name, bpf = pinned
    out = CliRunner().invoke(cli, ["maps", "blocked", "--json", "--name", name])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == [
        {"prefix": "10.77.0.0/24", "why": ["private_subnet", "operator"]},
        {"prefix": f"{PRIVATE}/32", "why": ["relay_address"]},
        {"prefix": f"{VIP}/32", "why": ["relay_address"]},
        {"prefix": "203.0.113.0/24", "why": ["operator"]},
        {"prefix": "2001:db8:1::1/128", "why": ["relay_address"]},
    ]
    with open_pinview(name) as view:
        assert view.blocked_sources() == RelayMaps(bpf).blocked_sources()
    text = CliRunner().invoke(cli, ["maps", "blocked", "--name", name]).output
    assert "PREFIX" in text and "private_subnet, operator" in text


def test_a_pin_of_another_layout_is_refused(tmp_path: Any) -> None:
    import bcc

    name = f"vxpv-{secrets.token_hex(4)}"
    pin_dir = pins.pin_dir_for(name)
    bpf = bpfprog.compile_relay(LAB_LIMITS, pin_dir)
    bpf.cleanup()
    try:
        (pin_dir / "keys").unlink()
        other = bcc.BPF(text=f'BPF_TABLE_PINNED("array", u32, u64, keys, 4, "{pin_dir}/keys");'
                        "\nint f(void *c) { return 0; }")
        other.cleanup()
        with pytest.raises(MapLayoutError) as info:
            open_pinview(name)
        assert str(info.value) == (
            f"relay {name!r}: map keys: kernel has type 2, key 4 B, value 8 B; this build "
            "expects type 2, key 4 B, value 24 B (a pin from another build?). Unload the relay "
            "(which removes the pins and the flows in them) and load again."
        )
        out = CliRunner().invoke(cli, ["maps", "keys", "--name", name])
        assert out.exit_code == 1 and out.output.startswith(f"Error: relay {name!r}: map keys:")
    finally:
        pins.unpin_maps(pin_dir)
