# SPDX-License-Identifier: Apache-2.0
"""[relay] blocked_source_prefixes: its defaults, its errors, and what the loader writes.

The kernel side (a blocked source opens nothing) is in tests/bpf/packet_table.py.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from orchestrator.bccmaps import BlockedBy, desired_blocked_sources
from voxrelay.config import (
    DEFAULT_BLOCKED_SOURCE_PREFIXES,
    ConfigError,
    RelayConfig,
    load_config,
)

# The lab's "internet" (RFC 5737) must stay reachable by default.
LAB_INTERNET = ("192.0.2.2", "198.51.100.2", "203.0.113.7")


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "voxrelay.toml"
    path.write_text(text)
    return path


def test_defaults_block_no_client_a_network_may_have() -> None:
    nets = [IPv4Network(p) for p in RelayConfig().blocked_source_prefixes]
    assert nets == [IPv4Network(p) for p in DEFAULT_BLOCKED_SOURCE_PREFIXES]
    for blocked in ("0.1.2.3", "127.0.0.1", "169.254.1.1", "224.0.0.1", "239.255.255.250",
                    "255.255.255.255", "240.0.0.1"):
        assert any(IPv4Address(blocked) in n for n in nets), blocked
    # Clients may come from private and carrier NAT ranges: not blocked unless told.
    for allowed in (*LAB_INTERNET, "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1",
                    "8.8.8.8"):
        assert not any(IPv4Address(allowed) in n for n in nets), allowed


def test_operator_list_is_read_from_toml(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, '[relay]\nblocked_source_prefixes = '
                                        '["192.168.0.0/16", "100.64.0.0/10", "1.2.3.4"]\n'))
    assert cfg.relay.blocked_source_prefixes == ["192.168.0.0/16", "100.64.0.0/10", "1.2.3.4"]
    cfg = load_config(_config(tmp_path, "[relay]\nblocked_source_prefixes = []\n"))
    assert cfg.relay.blocked_source_prefixes == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('["10.0.0.1/8"]', ("[relay] blocked_source_prefixes entry '10.0.0.1/8' has host bits "
                            "set; did you mean 10.0.0.0/8?")),
        ('["10.0.0.0/33"]', ("[relay] blocked_source_prefixes entry '10.0.0.0/33' is not an "
                             'IPv4 prefix like "10.0.0.0/8"')),
        ('["private"]', ("[relay] blocked_source_prefixes entry 'private' is not an IPv4 "
                         'prefix like "10.0.0.0/8"')),
        ('["fc00::/7"]', ("[relay] blocked_source_prefixes entry 'fc00::/7' is IPv6; the "
                          "relay's path is IPv4 only")),
        ("[10]", '[relay] blocked_source_prefixes entry 10 must be a string like "10.0.0.0/8"'),
        ('"10.0.0.0/8"', "[relay] blocked_source_prefixes must be list, got '10.0.0.0/8'"),
    ],
)
def test_bad_prefixes_are_refused_with_the_entry_named(tmp_path: Path, value: str,
                                                       message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, f"[relay]\nblocked_source_prefixes = {value}\n"))
    assert str(info.value) == message


def test_private_subnet_and_own_addresses_are_always_blocked() -> None:
    relay = RelayConfig(blocked_source_prefixes=[])  # the operator opted out of the defaults
    got = desired_blocked_sources(relay, public_addr="192.0.2.1", private_addr="10.77.0.1",
                                  private_networks=["10.77.0.1/24", "10.88.0.5/16"])
    assert got == {
        IPv4Network("10.77.0.0/24"): BlockedBy.PRIVATE_SUBNET,
        IPv4Network("10.88.0.0/16"): BlockedBy.PRIVATE_SUBNET,
        IPv4Network("192.0.2.1/32"): BlockedBy.RELAY_ADDRESS,
        IPv4Network("10.77.0.1/32"): BlockedBy.RELAY_ADDRESS,
    }


def test_a_prefix_named_twice_keeps_both_reasons() -> None:
    relay = RelayConfig(blocked_source_prefixes=["10.77.0.0/24", "10.0.0.0/8"])
    got = desired_blocked_sources(relay, public_addr="192.0.2.1", private_addr="10.77.0.1",
                                  private_networks=["10.77.0.1/24"])
    assert got[IPv4Network("10.77.0.0/24")] == BlockedBy.PRIVATE_SUBNET | BlockedBy.OPERATOR
    assert got[IPv4Network("10.0.0.0/8")] == BlockedBy.OPERATOR
    assert len(got) == 4
