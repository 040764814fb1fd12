# SPDX-License-Identifier: Apache-2.0
"""NAT rebinding with Chromium (issue #11, "the same with Chromium").

Mid-call, the client's source port changes, as a NAT in front of it would
after losing its mapping: nftables in the client namespace source-NATs the
browser's UDP to the relay onto a new port (REBIND_PORT), and drops, ahead of
conntrack, whatever the relay still sends to the old mapping. No PATCH, no
ICE restart: the browser's next connectivity check from the new port opens
a new flow on the relay, and Chromium's checks carry USE-CANDIDATE (it is
the controlling agent), so the transceiver moves its media to the new pair.

Asserted: reply audio arrives again within REBIND_SECONDS (the issue's bound)
of the change (inbound packetsReceived growing, and only the new mapping can
deliver); the relay's flows map has a flow from the new source port; the
transceiver still has the same call id, now on a new relay-side port.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import pytest_asyncio

from lab.browser import find_chromium, open_browser_call, speech_wav

pytestmark = [pytest.mark.netns, pytest.mark.root]

SENTENCE = "what is the weather like today"
REBIND_PORT = 45001
REBIND_SECONDS = 2.0
RESUMED_PACKETS = 10
"""Reply packets after the change that count as "audio keeps arriving" (20 ms each)."""
NFT_TABLE = "voxrelay_browser_rebind"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab():
    from lab.stack import StackOptions, start_stack

    if find_chromium() is None:
        pytest.fail("chromium is not installed; scripts/setup.sh installs it (apt: chromium)")
    async with start_stack(StackOptions(relays=1)) as running:
        yield running


def _nft(netns: str, script: str) -> None:
    subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "--", "nft", "-f", "-"],
                   input=script.encode(), check=True, capture_output=True, timeout=10)


def rebind_port(lab, port: int) -> None:
    """The browser's UDP to relay 1 leaves from ``port`` from now on.

    The NAT table is the first user of conntrack in the client namespace, so
    the live flow gets its conntrack entry (and the SNAT) with its next
    outgoing packet. The drop runs before conntrack (priority -300): answers
    to the new port are still addressed to it there (they are mapped back to
    the browser's socket later), everything else from the relay is the old
    mapping, which the NAT no longer forwards.
    """
    relay = lab.relays[0]
    client = lab.client_address
    _nft(lab.client_ns, f"""
table ip {NFT_TABLE} {{
  chain out {{
    type nat hook postrouting priority 100; policy accept;
    ip saddr {client} ip daddr {relay.public_address} udp dport {relay.public_port} snat to {client}:{port}
  }}
  chain pre {{
    type filter hook prerouting priority -300; policy accept;
    ip daddr {client} ip saddr {relay.public_address} udp sport {relay.public_port} udp dport != {port} counter drop
  }}
}}
""")


def old_mapping_drops(lab) -> int:
    """Packets the relay still sent to the old mapping (the drop rule's counter)."""
    out = subprocess.run(["nsenter", f"--net=/run/netns/{lab.client_ns}", "--", "nft", "-j",
                          "list", "table", "ip", NFT_TABLE],
                         check=True, capture_output=True, timeout=10).stdout
    for item in json.loads(out)["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    raise AssertionError(f"no counter in table {NFT_TABLE}: {out!r}")


def unrebind(lab) -> None:
    _nft(lab.client_ns, f"delete table ip {NFT_TABLE}\n")


def client_flow_ports(lab) -> set[int]:
    """Source ports of the client's flows in relay 1's flows map."""
    from orchestrator.pinview import open_pinview

    with open_pinview(lab.relays[0].name) as view:
        return {int(f.client.rsplit(":", 1)[1]) for f in view.flows()
                if f.client.rsplit(":", 1)[0] == lab.client_address}


def call_status(lab, call_id: str) -> dict:
    def get() -> dict:
        request = urllib.request.Request(f"{lab.signaling_url}/v1/calls/{call_id}",
                                         headers={"Authorization": f"Bearer {lab.api_key}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    return lab.run_in_client(get)


@pytest.mark.asyncio(loop_scope="module")
async def test_browser_keeps_call_across_source_port_change(lab, tmp_path: Path) -> None:
    wav = speech_wav(SENTENCE, tmp_path / "mic.wav")
    secret = await lab.client_secret()
    async with open_browser_call(lab.client_ns, lab.signaling_url + "/", audio_wav=wav,
                                 bearer=secret["value"]) as call:
        result = call.result
        assert result.connected, result.describe() + "\n" + lab.logs()
        assert result.call_id is not None
        assert await call.wait_until(lambda r: r.inbound.packets > 50, timeout=10,
                                     what="reply audio before the change"), result.describe()
        ports_before = await asyncio.to_thread(client_flow_ports, lab)
        before = await asyncio.to_thread(call_status, lab, result.call_id)

        await asyncio.to_thread(rebind_port, lab, REBIND_PORT)
        changed = time.monotonic()
        try:
            at_change = (await call.poll()).inbound.packets
            resumed = await call.wait_until(
                lambda r: r.inbound.packets >= at_change + RESUMED_PACKETS,
                timeout=REBIND_SECONDS + 3, poll=0.1, what="reply audio after the change")
            resumed_s = time.monotonic() - changed
            ports_after = await asyncio.to_thread(client_flow_ports, lab)
            after = await asyncio.to_thread(call_status, lab, result.call_id)
            # And it goes on arriving over the new mapping, not a burst.
            settled = (await call.poll()).inbound.packets
            await call.hold(1.0)
            later = result.inbound.packets
            dropped = await asyncio.to_thread(old_mapping_drops, lab)
        finally:
            await asyncio.to_thread(unrebind, lab)
        hangup = await call.hangup()

    timeline = [(round(s.at, 2), s.inbound.packets, s.connection_state) for s in result.samples[-30:]]
    assert REBIND_PORT not in ports_before, ports_before
    # The old mapping was really cut: the relay went on sending to it for a while.
    assert dropped > 0, "nothing was sent to the old mapping: the change did not happen"
    assert resumed, f"no reply audio after the port change; stats {timeline}\n{result.describe()}"
    assert resumed_s <= REBIND_SECONDS, f"reply audio resumed after {resumed_s:.2f} s; {timeline}"
    assert REBIND_PORT in ports_after, f"no flow from the new port: {ports_after}"
    assert later > settled, timeline
    # Same call at the transceiver, its media now from a new relay-side port.
    assert after["id"] == before["id"] == result.call_id
    assert after["remote"][0] == before["remote"][0] == lab.relays[0].private_address, (before, after)
    assert after["remote"] != before["remote"], (before, after)
    assert hangup == 204
