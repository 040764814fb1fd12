# SPDX-License-Identifier: Apache-2.0
"""[relay] blocked_source_prefixes: its defaults, its errors, and what the loader writes.

The kernel side (a blocked source opens nothing) is in tests/bpf/packet_table.py.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
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
    nets = [ip_network(p) for p in RelayConfig().blocked_source_prefixes]
    assert nets == [ip_network(p) for p in DEFAULT_BLOCKED_SOURCE_PREFIXES]
    for blocked in ("0.1.2.3", "127.0.0.1", "169.254.1.1", "224.0.0.1", "239.255.255.250",
                    "255.255.255.255", "240.0.0.1",
                    "::", "::1", "::ffff:203.0.113.7", "fe80::1", "ff02::1"):
        assert any(ip_address(blocked) in n for n in nets), blocked
    # Clients may come from private and carrier NAT ranges (and IPv6 ULAs,
    # global unicast): not blocked unless told.
    for allowed in (*LAB_INTERNET, "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1",
                    "8.8.8.8", "2001:db8::7", "2a00:1450::1", "fd00::1"):
        assert not any(ip_address(allowed) in n for n in nets), allowed


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
                             'IP prefix like "10.0.0.0/8" or "2001:db8::/32"')),
        ('["private"]', ("[relay] blocked_source_prefixes entry 'private' is not an IP "
                         'prefix like "10.0.0.0/8" or "2001:db8::/32"')),
        ('["fc00::1/7"]', ("[relay] blocked_source_prefixes entry 'fc00::1/7' has host bits "
                           "set; did you mean fc00::/7?")),
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


def test_ipv6_prefixes_and_addresses_are_blocked_beside_ipv4() -> None:
    relay = RelayConfig(blocked_source_prefixes=["fc00::/7"])
    got = desired_blocked_sources(relay, public_addr="192.0.2.1", private_addr="10.77.0.1",
                                  private_networks=["10.77.0.1/24", "fd00:77::1/64"],
                                  relay_addresses=["2001:db8:100::10", "fd00:77::1"])
    assert got[IPv6Network("fd00:77::/64")] == BlockedBy.PRIVATE_SUBNET
    assert got[IPv6Network("2001:db8:100::10/128")] == BlockedBy.RELAY_ADDRESS
    assert got[IPv6Network("fd00:77::1/128")] == BlockedBy.RELAY_ADDRESS
    assert got[IPv6Network("fc00::/7")] == BlockedBy.OPERATOR
    assert len(got) == 7


def test_a_prefix_named_twice_keeps_both_reasons() -> None:
    relay = RelayConfig(blocked_source_prefixes=["10.77.0.0/24", "10.0.0.0/8"])
    got = desired_blocked_sources(relay, public_addr="192.0.2.1", private_addr="10.77.0.1",
                                  private_networks=["10.77.0.1/24"])
    assert got[IPv4Network("10.77.0.0/24")] == BlockedBy.PRIVATE_SUBNET | BlockedBy.OPERATOR
    assert got[IPv4Network("10.0.0.0/8")] == BlockedBy.OPERATOR
    assert len(got) == 4
