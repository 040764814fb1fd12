# SPDX-License-Identifier: Apache-2.0
"""A real call's media telemetry at the relay, with loss at a known rate (issue #16).

The client namespace drops every 10th RTP packet it sends to the relay (nft,
counted; STUN, DTLS and RTCP untouched). The relay sees only the clear RTP
headers of SRTP, yet its flow entry must show that loss: the packets it
counts missing by sequence number are the packets nft dropped (give or take
the call's last packet in flight), none the other way, a jitter well below a
frame on these veths, and consent round trips of both legs once aiortc's
consent checks (every ~5 s, each side) have run. `voxrelay maps flows
--json` shows the same numbers, and /metrics' histograms count the flow.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import pytest_asyncio
from click.testing import CliRunner

pytestmark = [pytest.mark.netns, pytest.mark.root]

DROP_EVERY = 10
CONSENT_WAIT_S = 15.0
"""aioice checks consent every 5 s (+-20%) from each side: two rounds fit."""
MIN_CALL_S = 6.0
"""~300 RTP packets each way at 50 packets/s: ~30 drops to count."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab():
    from lab.stack import StackOptions, start_stack

    async with start_stack(StackOptions(relays=1)) as running:
        yield running


def _our_flow(lab):  # type: ignore[no-untyped-def]
    flows = [f for f in lab.relay_flows(0) if f.media.to_transceiver is not None]
    assert len(flows) == 1, flows
    return flows[0]


@pytest.mark.asyncio(loop_scope="module")
async def test_relay_counts_the_loss_it_did_not_cause(lab) -> None:
    from lab.call import TimedCallClient
    from lab.nftables import drop_every_nth_rtp

    relay = lab.relays[0]

    async def call() -> None:
        async with TimedCallClient(lab.signaling_url, lab.api_key, timeout=30) as client:
            await client.wait_event("model", state="connected")
            # Media both ways (the client's silence track up, the transceiver's
            # down) until both consent legs have a sample, bounded.
            started = time.monotonic()
            while time.monotonic() < started + CONSENT_WAIT_S:
                await asyncio.sleep(0.5)
                if time.monotonic() < started + MIN_CALL_S:
                    continue
                flows = [f for f in lab.relay_flows(0) if f.media.to_transceiver is not None]
                if flows and flows[0].media.client_rtt and flows[0].media.transceiver_rtt:
                    break

    with drop_every_nth_rtp(lab.client_ns, relay.public_port, DROP_EVERY) as dropped:
        await lab.client_call(call)
        drops = dropped()
    flow = _our_flow(lab)
    up, down = flow.media.to_transceiver, flow.media.to_client
    print(f"nft dropped {drops}; relay saw {flow.media}")  # pytest -s shows the numbers
    assert up is not None and down is not None
    assert drops > 20, f"nft dropped only {drops} RTP packets: the call carried too little"
    # Every drop is a sequence gap at the relay, except one after the last
    # packet the relay saw (a gap shows only when a later packet arrives).
    assert drops - 1 <= up.lost <= drops, (drops, up)
    assert up.loss_ratio == pytest.approx(1 / DROP_EVERY, abs=0.02), up
    assert up.packets > 200 and up.reordered == 0 and up.resyncs == 0, up
    assert down.lost == 0 and down.packets > 200, down
    # veths add next to nothing: the jitter is the senders' own pacing (a
    # Python event loop each, on a shared 2-core host: a few ms to ~15 ms
    # here), measured, and below a few frames.
    assert 0 < up.jitter_ms < 60 and down.jitter_ms < 60, (up, down)
    client_rtt, txr_rtt = flow.media.client_rtt, flow.media.transceiver_rtt
    assert client_rtt is not None and txr_rtt is not None, flow.media
    assert 0 <= client_rtt.last_ms < 200 and 0 <= txr_rtt.last_ms < 200, flow.media

    # The CLI shows the same flow and numbers.
    from voxrelay.cli import cli

    out = CliRunner().invoke(cli, ["maps", "flows", "--json", "--name", relay.name])
    assert out.exit_code == 0, out.output
    [row] = [r for r in json.loads(out.output) if r["client"] == flow.client]
    assert row["media"]["to_transceiver"]["lost"] == up.lost
    assert row["media"]["client_rtt"]["samples"] >= 1

    # /metrics: the flow is one observation in its transceiver's histograms.
    from prometheus_client import generate_latest

    from orchestrator.metrics import OrchestratorMetrics
    from orchestrator.pinview import open_pinview

    with open_pinview(relay.name) as view:
        text = generate_latest(OrchestratorMetrics(view).registry).decode()
    want = (f'voxrelay_flow_loss_ratio_count{{direction="to_transceiver",'
            f'transceiver="{flow.transceiver_id}"}} 1.0')
    assert want in text, [line for line in text.splitlines() if "flow_loss" in line]
