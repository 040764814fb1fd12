# SPDX-License-Identifier: Apache-2.0
"""Whole chain over IPv6 (#13): a call from an IPv6 client address through the
relay's IPv6 VIP to the IPv4 transceiver, and the model answers.

The lab is dual stack on the client side (``StackOptions(ipv6=True)``); the
private side stays IPv4, so the relay translates every packet both ways
(bpf/relay.c translate_6to4 / translate_4to6). The client namespace drops
its own IPv4 UDP (``Lab.drop_ipv4_udp``), so the call cannot take the
relay's IPv4 candidate; signaling (TCP) stays on IPv4. Checked: the answer
lists both UDP candidates, the transcript, the reply audio, and the relay's
counters for IPv6 clients (new flow, both directions) with no IPv4 client
forward during the call; the client really dropped IPv4 UDP (its counter).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

pytestmark = [pytest.mark.netns, pytest.mark.root]

SENTENCE = "what is the weather like today"
KEY_WORDS = ("what is the weather",)


@pytest.fixture(scope="module")
def speech_pcm(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from lab.client import read_wav_pcm
    from lab.demo import speak

    wav = speak(SENTENCE, tmp_path_factory.mktemp("speech") / "sentence.wav")
    return read_wav_pcm(wav)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab() -> AsyncIterator[Any]:
    from lab.stack import StackOptions, start_stack

    async with start_stack(StackOptions(relays=1, ipv6=True)) as running:
        yield running


def _moved(before: dict[str, int], after: dict[str, int], name: str) -> int:
    return int(after.get(name, 0)) - int(before.get(name, 0))


@pytest.mark.asyncio(loop_scope="module")
async def test_call_from_an_ipv6_client_through_the_ipv6_vip(lab: Any, speech_pcm: bytes) -> None:
    import asyncio

    from lab.call import TimedCallClient, speak_turn

    relay = lab.relays[0]
    topo = lab.topology
    assert relay.public_address6, "the dual-stack lab gives relay 1 an IPv6 VIP"
    await asyncio.to_thread(topo.drop_ipv4_udp, lab.client_ns)
    before = lab.relay_stats(0)

    async def call() -> tuple[Any, bytes, str]:
        async with TimedCallClient(lab.signaling_url, lab.api_key, timeout=30) as client:
            await client.wait_event("model", state="connected")
            turn = await speak_turn(client, speech_pcm, timeout=30)
            return turn, bytes(client.reply), client.answer_sdp

    turn, reply_pcm, answer = await lab.client_call(call)
    after = lab.relay_stats(0)

    for word in KEY_WORDS:
        assert word in turn.transcript.lower(), f"{word!r} not in transcript {turn.transcript!r}"
    assert turn.reply, "the model sent no reply text"
    assert turn.first_reply_audio_at is not None, "no audible reply audio reached the client"
    assert len(reply_pcm) > 16000, "under half a second of reply audio"

    # Both UDP candidates of the dual-stack relay are in the answer.
    assert f"{relay.public_address} {relay.public_port} typ host" in answer
    assert f"{relay.public_address6} {relay.public_port} typ host" in answer
    # The media went over IPv6 on the client side, translated by the relay.
    assert _moved(before, after, "fwd_new_flow6") >= 1, (before, after)
    assert _moved(before, after, "fwd_to_transceiver6") > 100, (before, after)
    assert (_moved(before, after, "fwd_to_client6")
            + _moved(before, after, "fwd_to_client6_learnt_nh")) > 100, (before, after)
    # ...and never over IPv4: the client's IPv4 checks died in its own namespace.
    for name in ("fwd_new_flow", "fwd_to_transceiver", "fwd_to_client"):
        assert _moved(before, after, name) == 0, (name, before, after)
    assert await asyncio.to_thread(topo.ipv4_udp_dropped, lab.client_ns) > 0
    for name in ("drop_udp6_zero_csum", "drop_no_csum_to_ipv6", "drop_ipv6_ext_hdr",
                 "drop_bad_length", "drop_fib_fail", "pass_no_neigh"):
        assert _moved(before, after, name) == 0, (name, before, after)
