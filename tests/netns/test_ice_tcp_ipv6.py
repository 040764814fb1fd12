# SPDX-License-Identifier: Apache-2.0
"""ICE-TCP over IPv6 (#13): a caller whose network drops UDP and reaches the
relay only over IPv6.

The lab is dual stack (``StackOptions(ipv6=True, tcp_front=True)``): the TCP
front listens on relay 1's IPv4 and IPv6 VIPs, port 443, and the answer
carries a ``tcp 443 ... tcptype passive`` candidate for each. In the client
namespace nftables drops every UDP packet and every IPv4 connection to the
relay's 443, so headless Chromium has one way left: TCP to [IPv6 VIP]:443.
The front carries it to the IPv4 transceiver as UDP, and the model answers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from lab.browser import find_chromium, speech_wav
from lab.nftables import NO_V4_TCP_TABLE, drop_ipv4_tcp_to, drop_udp, dropped_packets

pytestmark = [pytest.mark.netns, pytest.mark.root]

SENTENCE = "what is the weather like today"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab():
    from lab.stack import StackOptions, start_stack

    if find_chromium() is None:
        pytest.fail("chromium is not installed; scripts/setup.sh installs it (apt: chromium)")
    async with start_stack(StackOptions(relays=1, tcp_front=True, ipv6=True)) as running:
        # As ``voxrelay demo --client chromium --transport tcp --ipv6`` does.
        with drop_udp(running.client_ns), \
                drop_ipv4_tcp_to(running.client_ns, running.relays[0].public_address, 443):
            yield running


@pytest.mark.asyncio(loop_scope="module")
async def test_chromium_calls_over_tcp_443_on_the_ipv6_vip(lab, tmp_path: Path) -> None:
    from lab.demo import browser_demo_call

    relay = lab.relays[0]
    assert relay.public_address6, "the dual-stack lab gives relay 1 an IPv6 VIP"
    wav = speech_wav(SENTENCE, tmp_path / "mic.wav")
    # Raises unless the pair is TCP to the IPv6 VIP's 443 and the model answered.
    got = await browser_demo_call(lab, wav, 40, "tcp", ipv6=True,
                                  udp_dropped=lambda: dropped_packets(lab.client_ns))

    remote, local = got.pair["remote"], got.pair["local"]
    assert isinstance(remote, dict) and isinstance(local, dict)
    assert (remote["protocol"], remote["tcp_type"], remote["port"]) == ("tcp", "passive", 443)
    assert remote["address"].strip("[]") == relay.public_address6, got.pair
    assert (local["protocol"], local["tcp_type"]) == ("tcp", "active"), got.pair
    assert got.reply and got.reply_packets > 0 and got.reply_audio_energy > 0, got
    # Both other ways were tried and died in the client's namespace.
    assert got.udp_dropped > 0, got
    assert dropped_packets(lab.client_ns, NO_V4_TCP_TABLE) > 0
    # Through the front, both ways; the XDP program made no UDP flow for it.
    assert got.tcpfront.get("established", 0) >= 1, got.tcpfront
    assert got.tcpfront.get("frames_to_transceiver", 0) > 50, got.tcpfront
    assert got.tcpfront.get("frames_to_client", 0) > 50, got.tcpfront
    assert got.relay_counters.get("fwd_new_flow", 0) == 0, got.relay_counters
    assert got.relay_counters.get("fwd_new_flow6", 0) == 0, got.relay_counters
