# SPDX-License-Identifier: Apache-2.0
"""``[relay] extra_private_addresses``: more private addresses for more live flows (#16)."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from voxrelay.config import (
    MAX_EXTRA_PRIVATE_ADDRESSES,
    ConfigError,
    RelayConfig,
    load_config,
    parse_extra_private_addresses,
)


def _config(tmp_path: Path, relay_lines: str) -> Path:
    path = tmp_path / "voxrelay.toml"
    path.write_text(f'[relay]\nprivate_address = "10.0.0.1"\n{relay_lines}\n')
    return path


def test_none_by_default() -> None:
    assert RelayConfig().extra_private_addresses == []
    assert parse_extra_private_addresses(RelayConfig()) == []


def test_read_from_the_file_in_order(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, 'extra_private_addresses = ["10.0.0.3", "10.0.0.2"]'))
    assert parse_extra_private_addresses(config.relay) == [IPv4Address("10.0.0.3"),
                                                           IPv4Address("10.0.0.2")]


@pytest.mark.parametrize(("value", "message"), [
    ('["10.0.0.300"]', "'10.0.0.300' is not an IPv4 address"),
    ('["fd00::1"]', "'fd00::1' is not an IPv4 address"),
    ('["0.0.0.0"]', "'0.0.0.0' cannot be one"),
    ('["224.0.0.1"]', "'224.0.0.1' cannot be one"),
    ('["10.0.0.1"]', "'10.0.0.1' cannot be one (unspecified, multicast, or private_address"),
    ('["10.0.0.2", "10.0.0.2"]', "'10.0.0.2' is listed twice"),
])
def test_a_bad_entry_is_named(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, f"extra_private_addresses = {value}"))
    assert f"[relay] extra_private_addresses: {message}" in str(err.value)


def test_at_most_what_the_map_holds(tmp_path: Path) -> None:
    many = [f"10.0.1.{n}" for n in range(MAX_EXTRA_PRIVATE_ADDRESSES + 1)]
    with pytest.raises(ConfigError,
                       match=f"{len(many)} given, at most {MAX_EXTRA_PRIVATE_ADDRESSES}"):
        load_config(_config(tmp_path, f"extra_private_addresses = {many!r}".replace("'", '"')))
    assert len(parse_extra_private_addresses(
        RelayConfig(extra_private_addresses=many[:-1]))) == MAX_EXTRA_PRIVATE_ADDRESSES


def test_the_limit_is_the_bpf_slots_less_one() -> None:
    from orchestrator import abi

    assert MAX_EXTRA_PRIVATE_ADDRESSES == abi.MAX_PRIVATE_ADDRS - 1
