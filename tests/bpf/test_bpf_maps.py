# SPDX-License-Identifier: Apache-2.0
"""orchestrator/bccmaps.py over a real relay program, and pinned-map reuse."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

from lab.packets import CLIENT, CLIENT_PORT, Context, from_transceiver, open_flow, to_relay
from lab.pinned_relay import fresh_pin_dir
from lab.relaylab import (
    LAB_LIMITS,
    PRIVATE,
    PRIVATE6_NET,
    VIP,
    VIP6,
    ProgTestRelay,
    lab_relay_config,
)
from orchestrator import abi, bpfprog
from orchestrator.bccmaps import BlockedBy, RelayMaps, TransceiverStatus, desired_blocked_sources
from orchestrator.bpfsys import map_info
from orchestrator.errors import MapLayoutError
from orchestrator.verdicts import verdict_names
from tests.bpf.packet_table import DTLS
from voxrelay.config import DEFAULT_BLOCKED_SOURCE_PREFIXES, ConfigError, RelayConfig


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    with fresh_pin_dir("test") as path:
        yield path
    assert not path.exists(), f"pins left behind in {path}"


def test_config_round_trip(lab: ProgTestRelay) -> None:
    relay = RelayConfig(public_port=3479, port_min=30000, port_max=30999, new_flows_per_sec=7,
                        max_flows_per_token=3, flow_idle_seconds=45)
    before = lab.maps.read_config()
    assert before is not None
    entry = lab.maps.write_config(relay, public_addr=VIP, private_addr=PRIVATE,
                                  public_ifindex=11, private_ifindex=12,
                                  clock_offset_ns=123)
    assert entry.public_addr == VIP and entry.private_addr == PRIVATE
    assert (entry.public_port, entry.port_min, entry.port_max) == (3479, 30000, 30999)
    assert (entry.public_ifindex, entry.private_ifindex) == (11, 12)
    assert (entry.new_flows_per_sec, entry.max_flows_per_token) == (7, 3)
    assert entry.flow_idle_ns == 45_000_000_000 and entry.clock_offset_ns == 123
    assert entry.nh_generation == before.nh_generation + 1
    assert lab.maps.bump_nh_generation() == entry.nh_generation + 1
    # the kernel sees network order: the raw bytes of public_port are 0x0d97
    raw = lab.maps.table("config")[lab.maps.table("config").Key(0)]
    assert bytes(raw)[32:34] == (3479).to_bytes(2, "big")
    assert bytes(raw)[0:4] == VIP.packed
    lab.maps.clear_config()
    assert lab.maps.read_config() is None


@pytest.mark.parametrize(
    ("changes", "addrs", "message"),
    [
        ({}, ("0.0.0.0", str(PRIVATE)), "public address must be resolved, got 0.0.0.0"),
        ({"port_min": 50000, "port_max": 40000}, None, "port range 50000..40000 is not valid"),
        ({"public_port": 40500}, None, "public_port 40500 lies inside the flow port range"),
        ({"new_flows_per_sec": -1}, None, "new_flows_per_sec -1 is outside 0..4294967295"),
    ],
)
def test_config_errors(lab: ProgTestRelay, changes: dict, addrs: tuple | None, message: str) -> None:
    pub, priv = addrs or (str(VIP), str(PRIVATE))
    with pytest.raises(ValueError) as info:
        lab.maps.write_config(lab_relay_config(**changes), public_addr=pub, private_addr=priv,
                              public_ifindex=1, private_ifindex=2)
    assert str(info.value) == message


def test_transceivers_and_keys(lab: ProgTestRelay) -> None:
    m = lab.maps
    lab.reset()
    m.set_transceiver(42, "10.9.8.7")
    m.set_transceiver(42, "10.9.8.7", TransceiverStatus.DRAINING)  # idempotent update
    entry = m.transceivers()[42]
    assert (entry.addr, entry.status) == (IPv4Address("10.9.8.7"), TransceiverStatus.DRAINING)
    assert m.delete_transceiver(42) is True
    assert m.delete_transceiver(42) is False
    assert 42 not in m.transceivers()
    # dual stack: an IPv6 transceiver reads back as one
    m.set_transceiver(43, "fd00:77::43")
    assert m.transceivers()[43].addr == IPv6Address("fd00:77::43")
    assert m.table("transceivers")[m.table("transceivers").Key(43)].family == 10
    assert m.delete_transceiver(43) is True
    with pytest.raises(ValueError, match="transceiver address ff02::1 is not a unicast address"):
        m.set_transceiver(44, "ff02::1")

    assert m.active_keys() == [1, 2]
    m.set_key(200, bytes(16))
    assert m.active_keys() == [1, 2, 200]
    m.retire_key(200)
    assert m.active_keys() == [1, 2]
    with pytest.raises(ValueError, match="token key must be 16 bytes, got 15"):
        m.set_key(3, bytes(15))
    with pytest.raises(ValueError, match=r"key id 256 is outside 0..255"):
        m.set_key(256, bytes(16))


def test_flows_stats_and_delete(lab: ProgTestRelay) -> None:
    lab.reset()
    ctx = Context(lab)
    port = open_flow(ctx)
    lab.run(bytes(to_relay(DTLS)))
    lab.run(bytes(from_transceiver(DTLS, port)), "vpriv")

    stats = lab.maps.stats()
    assert list(stats) == verdict_names()
    assert stats["STAT_RX_TOTAL"] == 3
    assert (stats["STAT_FWD_NEW_FLOW"], stats["STAT_FWD_TO_TRANSCEIVER"],
            stats["STAT_FWD_TO_CLIENT"]) == (1, 1, 1)
    assert lab.maps.stat("STAT_FWD_TO_CLIENT") == 1

    [flow] = lab.maps.flows()
    assert (flow.client_addr, flow.client_port, flow.relay_port) == (CLIENT, CLIENT_PORT, port)
    assert flow.transceiver_id == 7 and flow.next_hop is not None
    [rev] = lab.maps.reverse_entries()
    assert (rev.relay_port, rev.client_addr, rev.client_port) == (port, CLIENT, CLIENT_PORT)
    assert rev.next_hop is not None and rev.next_hop.dmac == "02:00:00:00:01:01"
    assert lab.maps.flow_counts() == {"flows": 1, "reverse": 1, "rate": 0, "token_flows": 0}

    assert lab.maps.delete_flow(CLIENT, CLIENT_PORT) is True
    assert lab.maps.delete_flow(CLIENT, CLIENT_PORT) is False
    assert lab.maps.flows() == [] and lab.maps.reverse_entries() == []
    res = lab.run(bytes(from_transceiver(DTLS, port)), "vpriv")
    assert res.stat == "STAT_DROP_NO_REVERSE"
    lab.maps.reset_stats()
    assert set(lab.maps.stats().values()) == {0}


def test_pinned_maps_survive_a_new_compile(pin_dir: Path) -> None:
    first = bpfprog.compile_relay(LAB_LIMITS, pin_dir)
    try:
        assert sorted(p.name for p in pin_dir.iterdir()) == sorted(abi.MAP_NAMES)
        maps = RelayMaps(first)
        maps.write_config(lab_relay_config(), public_addr=VIP, private_addr=PRIVATE,
                          public_ifindex=1, private_ifindex=2, nh_generation=5)
        maps.set_transceiver(7, "10.77.0.21")
        maps.set_key(1, bytes(range(16)))
        second = bpfprog.compile_relay(LAB_LIMITS, pin_dir)
        try:
            again = RelayMaps(second)
            config = again.read_config()
            assert config is not None and config.nh_generation == 5
            assert list(again.transceivers()) == [7]
            assert again.active_keys() == [1]
            # the same kernel map, not a copy
            for name in abi.MAP_NAMES:
                assert map_info(first[name].get_fd()).id == \
                    map_info(second[name].get_fd()).id, name
            # scratch is per program, never pinned
            assert map_info(first["scratch"].get_fd()).id != \
                map_info(second["scratch"].get_fd()).id
            bpfprog.load_relay_fn(second)  # the verifier accepts it over reused maps
        finally:
            second.cleanup()
    finally:
        first.cleanup()


def test_pin_with_another_layout_is_refused(pin_dir: Path) -> None:
    import bcc

    pin_dir.mkdir(parents=True)
    other = bcc.BPF(text=f'BPF_TABLE_PINNED("array", u32, u64, config, 1, "{pin_dir}/config");'
                    "\nint f(void *c) { return 0; }")
    other.cleanup()
    with pytest.raises(MapLayoutError) as info:
        bpfprog.compile_relay(LAB_LIMITS, pin_dir)
    assert str(info.value) == (
        "map config: kernel has type 2, key 4 B, value 8 B; this build expects type 2, "
        "key 4 B, value 112 B (a pin from another build?)"
    )


def test_raised_limits_still_verify() -> None:
    """Loops are bounded by consts.h limits; the verifier has headroom above the defaults."""
    bpf = bpfprog.compile_relay({"MAX_STUN_ATTRS": 64, "PORT_ALLOC_TRIES": 32, "MAX_FLOWS": 1024})
    try:
        assert bpfprog.load_relay_fn(bpf).fd >= 0
    finally:
        bpf.cleanup()


def test_blocked_sources_are_written_as_a_delta(lab: ProgTestRelay) -> None:
    lab.reset()
    m = lab.maps
    # What the lab (like the loader) writes: the private subnet, the relay's
    # own two addresses (the private one is also in its subnet) and the defaults.
    current = m.blocked_sources()
    assert current[IPv4Network("10.77.0.0/24")] == BlockedBy.PRIVATE_SUBNET
    assert current[IPv4Network(f"{VIP}/32")] == BlockedBy.RELAY_ADDRESS
    assert current[IPv4Network(f"{PRIVATE}/32")] == BlockedBy.RELAY_ADDRESS
    assert {ip_network(p) for p in DEFAULT_BLOCKED_SOURCE_PREFIXES} <= set(current)
    # dual stack: the lab's IPv6 VIP, private IPv6 address and subnet too
    assert current[IPv6Network(f"{VIP6}/128")] == BlockedBy.RELAY_ADDRESS
    assert current[PRIVATE6_NET] == BlockedBy.PRIVATE_SUBNET
    assert m.write_blocked_sources(current) == (0, 0)  # idempotent: nothing to write

    # The operator drops the defaults for one RFC 1918 range, which is also the
    # private subnet's supernet: one prefix carries both reasons.
    relay = lab_relay_config(blocked_source_prefixes=["10.0.0.0/8", "10.77.0.0/24"])
    desired = desired_blocked_sources(relay, public_addr=VIP, private_addr=PRIVATE,
                                      private_networks=["10.77.0.1/24"])
    assert desired[IPv4Network("10.77.0.0/24")] == BlockedBy.PRIVATE_SUBNET | BlockedBy.OPERATOR
    written, deleted = m.write_blocked_sources(desired)
    # deleted: the defaults and the lab's three IPv6 entries
    assert (written, deleted) == (2, len(DEFAULT_BLOCKED_SOURCE_PREFIXES) + 3)
    assert m.blocked_sources() == desired
    lab.reset()
    assert m.blocked_sources() == current


def test_blocked_source_errors(lab: ProgTestRelay) -> None:
    lab.reset()
    relay = lab_relay_config(blocked_source_prefixes=["10.0.0.1/8"])
    with pytest.raises(ConfigError) as info:
        desired_blocked_sources(relay, public_addr=VIP, private_addr=PRIVATE,
                                private_networks=[])
    assert str(info.value) == ("[relay] blocked_source_prefixes entry '10.0.0.1/8' has host "
                               "bits set; did you mean 10.0.0.0/8?")
    before = lab.maps.blocked_sources()
    room = lab.maps.table("blocked_sources").max_entries
    too_many = {IPv4Network((0x0B000000 + (i << 8), 24)): BlockedBy.OPERATOR
                for i in range(room + 1)}
    with pytest.raises(ValueError, match=f"{room + 1} blocked source prefixes do not fit"):
        lab.maps.write_blocked_sources(too_many)
    assert lab.maps.blocked_sources() == before  # refused before writing anything
