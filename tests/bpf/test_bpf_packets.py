# SPDX-License-Identifier: Apache-2.0
"""The packet table (packet_table.py) through BPF_PROG_TEST_RUN.

One relay program is loaded in a private network namespace (lab/relaylab.py);
before each row the maps go back to the lab defaults, then the row's setup
runs, then its packet. Each row asserts the XDP action, the one counter that
moved (ProgTestRelay.run also checks that exactly one did, besides rx_total), and
the output bytes.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.root

from scapy.layers.l2 import Ether

from lab import stun
from lab.bpftest import XDP_DROP, XDP_PASS, XDP_REDIRECT, prog_test_run
from lab.packets import Context, mint, open_flow, to_relay, username
from lab.relaylab import ProgTestRelay
from orchestrator.verdicts import VERDICT_VALUES, verdict_names
from tests.bpf.packet_table import DTLS, ROWS, Row, to_txr


def _diff(got: bytes, want: bytes) -> str:
    return (f"\n got: {Ether(got).summary()}\n{got.hex()}\n"
            f"want: {Ether(want).summary()}\n{want.hex()}")


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_row(lab: ProgTestRelay, row: Row) -> None:
    lab.reset()
    ctx = Context(lab)
    if row.setup is not None:
        row.setup(ctx)
    pkt: Any = row.packet(ctx)
    data = pkt if row.raw else bytes(pkt)
    res = lab.run(data, row.ingress)
    assert (res.action, res.stat) == (row.action, row.stat)
    if row.expect is not None:
        want = row.expect(ctx, pkt)
        assert res.data_out == want, _diff(res.data_out, want)
    elif row.action != XDP_DROP:
        assert res.data_out == data, "a packet passed without a rewrite must be untouched"
    if row.check is not None:
        row.check(ctx, pkt)


# Reasons no BPF_PROG_TEST_RUN packet can reach, and why.
UNREACHABLE_IN_TEST_RUN = {
    # bpf_xdp_adjust_head fails only without 20 bytes of headroom; a test run
    # always gives XDP_PACKET_HEADROOM (256), as every XDP driver does.
    "STAT_DROP_HEADROOM",
}


def test_table_covers_every_verdict() -> None:
    covered = {r.stat for r in ROWS}
    missing = set(verdict_names()) - covered - {"STAT_RX_TOTAL"} - UNREACHABLE_IN_TEST_RUN
    assert not missing, f"no row reaches {sorted(missing)}"
    assert covered <= set(VERDICT_VALUES)


def test_flow_uses_cached_next_hop_until_generation_changes(lab: ProgTestRelay) -> None:
    lab.reset()
    ctx = Context(lab)
    open_flow(ctx)
    flow = lab.maps.flow(*_client())
    assert flow is not None and flow.next_hop is not None
    generation = flow.next_hop.generation
    # Poison the cached MAC: the next packet must use the cache, not the fib.
    table = lab.maps.table("flows")
    key = next(iter(table.keys()))
    value = table[key]
    value.nh.dmac[:] = list(bytes.fromhex("02deadbeef01"))
    table[key] = value
    res = lab.run(bytes(to_relay(DTLS)))
    assert res.stat == "STAT_FWD_TO_TRANSCEIVER"
    assert res.data_out[:6] == bytes.fromhex("02deadbeef01")
    # A new generation drops the cache: the fib's answer comes back.
    assert lab.maps.bump_nh_generation() == generation + 1
    pkt = to_relay(DTLS)
    res = lab.run(bytes(pkt))
    assert res.data_out == to_txr(ctx, pkt)
    refreshed = lab.maps.flow(*_client())
    assert refreshed is not None and refreshed.next_hop is not None
    assert refreshed.next_hop.generation == generation + 1


def test_new_flow_next_hop_follows_a_neighbour_change_after_a_bump(lab: ProgTestRelay) -> None:
    """The per-CPU next-hop cache (relay.c resolve_next_hop) lets a second new
    flow to a transceiver skip the fib, but a generation bump (what the
    orchestrator does on a neighbour change) makes new flows ask again."""
    from pyroute2 import IPRoute

    from lab.relaylab import TRANSCEIVERS

    addr, mac, _ = TRANSCEIVERS[7]
    moved_mac = "02:00:00:00:07:77"
    lab.reset()
    ctx = Context(lab)
    open_flow(ctx, sport=1111)
    first = lab.maps.flow(_client()[0], 1111)
    assert first is not None and first.next_hop is not None
    assert first.next_hop.dmac == mac
    with IPRoute() as ipr:  # the lab's namespace: ProgTestRelay entered it
        idx = lab.ifindex["vpriv"]
        ipr.neigh("replace", dst=str(addr), lladdr=moved_mac, ifindex=idx, state=0x80)
        try:
            lab.maps.bump_nh_generation()
            open_flow(ctx, sport=2222)
            second = lab.maps.flow(_client()[0], 2222)
            assert second is not None and second.next_hop is not None
            assert second.next_hop.dmac == moved_mac
            # ...and the older flow's cached next hop is stale too: refreshed.
            res = lab.run(bytes(to_relay(DTLS, sport=1111)))
            assert res.stat == "STAT_FWD_TO_TRANSCEIVER"
            assert res.data_out[:6] == bytes.fromhex(moved_mac.replace(":", ""))
        finally:
            ipr.neigh("replace", dst=str(addr), lladdr=mac, ifindex=idx, state=0x80)


def test_two_way_exchange_keeps_one_flow(lab: ProgTestRelay) -> None:
    """A call's first packets, both ways, through one flow and one port."""
    from lab.packets import from_transceiver

    lab.reset()
    ctx = Context(lab)
    relay_port = open_flow(ctx)
    for i in range(20):
        up = lab.run(bytes(to_relay(DTLS)))
        down = lab.run(bytes(from_transceiver(DTLS, relay_port)), "vpriv")
        assert (up.action, up.stat) == (XDP_REDIRECT, "STAT_FWD_TO_TRANSCEIVER")
        assert (down.action, down.stat) == (XDP_REDIRECT, "STAT_FWD_TO_CLIENT")
    stats = lab.maps.stats()
    assert stats["STAT_FWD_TO_TRANSCEIVER"] == stats["STAT_FWD_TO_CLIENT"] == 20
    assert stats["STAT_RX_TOTAL"] == 41
    assert len(lab.maps.flows()) == len(lab.maps.reverse_entries()) == 1


def test_prog_test_run_does_not_reset_between_repeats(lab: ProgTestRelay) -> None:
    """The trap the bench must know: repeat N runs on the previous output."""
    lab.reset()
    ctx = Context(lab)
    open_flow(ctx)
    res = prog_test_run(lab.fd, bytes(to_relay(DTLS)), repeat=3,
                        ingress_ifindex=lab.ifindex["vpub"])
    assert res.retval == XDP_PASS  # the last repetition's verdict
    stats = lab.maps.stats()
    # first run: known flow; the rewritten packet (to the transceiver, not
    # for the relay) then passes twice
    assert stats["STAT_FWD_TO_TRANSCEIVER"] == 1
    assert stats["STAT_PASS_NOT_RELAY"] == 2


def _client() -> tuple[str, int]:
    from lab.packets import CLIENT, CLIENT_PORT

    return str(CLIENT), CLIENT_PORT


def test_rate_window_reopens_after_a_second(lab: ProgTestRelay) -> None:
    from lab.relaylab import lab_relay_config

    lab.reset(lab_relay_config(new_flows_per_sec=1))
    ctx = Context(lab)
    open_flow(ctx, sport=2000)
    res = lab.run(bytes(to_relay(stun.ice_binding_request(username(mint())), sport=2001)))
    assert res.stat == "STAT_DROP_RATE_LIMITED"
    table = lab.maps.table("rate")
    for k, v in list(table.items()):
        v.window_start_ns -= 2_000_000_000
        table[k] = v
    res = lab.run(bytes(to_relay(stun.ice_binding_request(username(mint())), sport=2001)))
    assert res.stat == "STAT_FWD_NEW_FLOW"


def test_steady_rows_repeat_with_the_same_verdict(lab: ProgTestRelay) -> None:
    """The table's repeat-N run: each copy gets the row's verdict."""
    from tests.bpf.packet_table import repeat_row, steady_rows

    rows = steady_rows()
    assert len(rows) >= 0.8 * len(ROWS)  # most rows are steady: the repeat run means something
    for row in rows:
        repeat_row(lab, row, 50)  # raises if any copy got another verdict
