# SPDX-License-Identifier: Apache-2.0
"""``voxrelay maps flows`` on a pinned relay: each flow's state (active, idle,
expired against the relay's flow_idle_seconds), expired ones hidden unless --all.

Issue #11: `maps flows` listed flows long after flow_idle_seconds, so "wait
until the calls end" never finished. The XDP program deletes an expired flow
only when it reuses its slot, so the view labels it instead.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from lab.relaylab import LAB_LIMITS, PRIVATE, VIP, lab_relay_config
from orchestrator import bpfprog, pins
from orchestrator.bccmaps import RelayMaps, be16_of, be32_of
from voxrelay.cli import cli

pytestmark = pytest.mark.root

IDLE_LIMIT_S = 120
# relay port -> (seconds since the client's last packet, since the transceiver's or None)
FLOWS = {
    20001: (0.5, None),     # a live call
    20002: (60.0, None),    # idle, not yet expired
    20003: (300.0, None),   # expired
    20004: (300.0, 2.0),    # the client is quiet, the transceiver still sends: active
}


@pytest.fixture(scope="module")
def relay_name() -> Iterator[str]:
    name = f"vxfs-{secrets.token_hex(4)}"
    pin_dir = pins.pin_dir_for(name)
    bpf = bpfprog.compile_relay(LAB_LIMITS, pin_dir)
    try:
        RelayMaps(bpf).write_config(lab_relay_config(flow_idle_seconds=IDLE_LIMIT_S),
                                    public_addr=VIP, private_addr=PRIVATE,
                                    public_ifindex=1, private_ifindex=2)
        flows, reverse = bpf["flows"], bpf["reverse"]
        now = time.monotonic_ns()
        for n, (port, (client_idle, txr_idle)) in enumerate(FLOWS.items()):
            key = flows.Key()
            key.addr.addr[0] = be32_of(f"198.51.100.{7 + n}")
            key.port = be16_of(5000)
            key.family = 2
            value = flows.Leaf()
            value.txr_addr.addr[0] = be32_of("10.77.0.21")
            value.txr_port = be16_of(40000 + n)
            value.relay_port = be16_of(port)
            value.relay_addr.addr[0] = be32_of(PRIVATE)
            value.transceiver_id = 7
            value.created_ns = now - 400_000_000_000
            value.last_seen_ns = now - int(client_idle * 1e9)
            flows[key] = value
            if txr_idle is not None:
                rkey = reverse.Key(relay_port=be16_of(port))
                rkey.addr.addr[0] = be32_of(PRIVATE)
                rvalue = reverse.Leaf()
                rvalue.client.addr.addr[0] = key.addr.addr[0]
                rvalue.client.port = key.port
                rvalue.client.family = key.family
                rvalue.txr_addr.addr[0] = be32_of("10.77.0.21")
                rvalue.txr_port = be16_of(40000 + n)
                rvalue.transceiver_id = 7
                rvalue.last_seen_ns = now - int(txr_idle * 1e9)
                reverse[rkey] = rvalue
        yield name
    finally:
        bpf.cleanup()
        pins.unpin_maps(pin_dir)


def _flows(name: str, *args: str) -> dict[int, tuple[str, float]]:
    out = CliRunner().invoke(cli, ["maps", "flows", "--json", "--name", name, *args])
    assert out.exit_code == 0, out.output
    return {r["relay_port"]: (r["state"], r["idle_limit_s"]) for r in json.loads(out.output)}


def test_flows_show_their_state_and_hide_expired_ones(relay_name: str) -> None:
    assert _flows(relay_name) == {20001: ("active", 120.0), 20002: ("idle", 120.0),
                                  20004: ("active", 120.0)}
    assert _flows(relay_name, "--all")[20003] == ("expired", 120.0)
    out = CliRunner().invoke(cli, ["maps", "flows", "--name", relay_name])
    assert out.output.splitlines()[-1] == "(1 expired not shown; --all shows them)"
