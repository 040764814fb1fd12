# SPDX-License-Identifier: Apache-2.0
"""[relay] public_address6 / private_address6: the relay's IPv6 VIP and private address (#13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import hostnet
from voxrelay.config import ConfigError, RelayConfig, load_config


def _load(tmp_path: Path, text: str) -> RelayConfig:
    path = tmp_path / "voxrelay.toml"
    path.write_text(text)
    return load_config(path).relay


def test_ipv6_is_off_by_default() -> None:
    relay = RelayConfig()
    assert (relay.public_address6, relay.private_address6) == ("", "")
    assert hostnet.resolve_address6(relay.public_address6, "eth0", None) is None


def test_ipv6_addresses_are_read(tmp_path: Path) -> None:
    relay = _load(tmp_path, '[relay]\npublic_address6 = "2001:db8::10"\n'
                            'private_address6 = "::"\n')
    assert relay.public_address6 == "2001:db8::10"
    assert relay.private_address6 == "::"  # the private interface's first global address
    assert hostnet.resolve_address6("2001:db8::10", "eth0", None) == "2001:db8::10"


@pytest.mark.parametrize(("key", "value", "message"), [
    ("public_address6", "198.51.100.1",
     ("[relay] public_address6 '198.51.100.1' is not an IPv6 address "
     '("" for none, "::" for the interface\'s first)')),
    ("public_address6", "ff02::1",
     ("[relay] public_address6 'ff02::1' is not a unicast IPv6 address a client or "
     "transceiver can reach")),
    ("private_address6", "::1",
     ("[relay] private_address6 '::1' is not a unicast IPv6 address a client or "
     "transceiver can reach")),
    ("public_address6", "::ffff:198.51.100.1",
     ("[relay] public_address6 '::ffff:198.51.100.1' is not a unicast IPv6 address a client "
     "or transceiver can reach")),
])
def test_bad_ipv6_addresses_are_refused(tmp_path: Path, key: str, value: str,
                                        message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, f'[relay]\n{key} = "{value}"\n')
    assert str(info.value) == message
