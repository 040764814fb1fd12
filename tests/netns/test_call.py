# SPDX-License-Identifier: Apache-2.0
"""Whole chain: an aiortc call from the client namespace, through the XDP relay.

One lab (lab.stack: topology, two relays, orchestrator, transceiver, model)
is shared by the tests of this module; each test places its own call.

* test_call_through_relay: the demo's call. The model's transcript has the
  sentence's key words, the reply audio is not silence, the relay's XDP
  counters show the media forwarded both ways, and AF_PACKET taps on the
  relay's interfaces (which XDP-handled packets never reach) see no UDP.
* test_address_change_ice_restart: the client's address changes mid-call (a
  NAT in front of it starts using a new address and port). The client then does
  an ICE restart over signaling (PATCH /v1/calls/<id>); media resumes on the
  same transceiver and call within 1 s of the restart. (Without a PATCH the
  transceiver also follows the new address, at the client's next consent
  check: tests/netns/test_robust.py, test_nat_rebinding_without_a_restart.)
* test_relay_failover: the answer lists both relays. Relay 1 (the nominated
  path) goes down; the client notices the media stop and restarts ICE; the call
  goes on through relay 2 within FAILOVER_SECONDS of relay 1 going down.
* test_no_path_around_relay: nothing sent from the client namespace to the
  transceiver's own address (ICMP, UDP to every port the transceiver has open,
  TCP to its signaling port) arrives there.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from pathlib import Path

import pytest
import pytest_asyncio

from tests.netns.stackwatch import IpTap, UdpTap

pytestmark = [pytest.mark.netns, pytest.mark.root]

SENTENCE = "what is the weather like today"
# The grammar phrase "what is the weather [like] [today | tomorrow]": its
# fixed part; the optional tail is sometimes lost after an ICE restart.
KEY_WORDS = ("what is the weather",)
RESUME_SECONDS = 1.0
FAILOVER_SECONDS = 5.0
ARTIFACTS = Path("artifacts")


@pytest.fixture(scope="module")
def speech_pcm(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from lab.client import read_wav_pcm
    from lab.demo import speak

    wav = speak(SENTENCE, tmp_path_factory.mktemp("speech") / "sentence.wav")
    return read_wav_pcm(wav)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab():
    from lab.stack import StackOptions, start_stack

    async with start_stack(StackOptions(relays=2)) as running:
        yield running


def _stat(stats: dict[str, int], name: str) -> int:
    return int(stats.get(name, 0))


async def call_status(client) -> dict:
    """GET /v1/calls/<id> through the client's own signaling session."""
    assert client._session is not None
    response = await client._session.get(client.location.lstrip("/"))
    assert response.status == 200, await response.text()
    return await response.json()


async def wait_media(client, after_chunks: int, timeout: float) -> float:
    """Seconds until the client has received reply-track audio beyond ``after_chunks``."""
    started = time.monotonic()
    while client.chunks_received <= after_chunks:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"no media from the transceiver within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.mark.asyncio(loop_scope="module")
async def test_call_through_relay(lab, speech_pcm: bytes) -> None:
    from lab.call import TimedCallClient, speak_turn
    from lab.demo import write_wav

    relay = lab.relays[0]
    before = lab.relay_stats(0)

    async def call() -> tuple:
        async with TimedCallClient(lab.signaling_url, lab.api_key, timeout=30) as client:
            await client.wait_event("model", state="connected")
            turn = await speak_turn(client, speech_pcm, timeout=30)
            status = await call_status(client)
            return turn, bytes(client.reply), status, client.answer_sdp

    with UdpTap(relay.netns, [relay.public_if, relay.private_if]) as tap:
        turn, reply_pcm, status, answer = await lab.client_call(call)
    after = lab.relay_stats(0)

    write_wav(ARTIFACTS / "test-call-reply.wav", reply_pcm, 16000)
    for word in KEY_WORDS:
        assert word in turn.transcript.lower(), f"{word!r} not in transcript {turn.transcript!r}"
    assert turn.reply, "the model sent no reply text"
    assert turn.first_reply_audio_at is not None, "no audible reply audio reached the client"

    # The answer advertises relays only, never the transceiver's own address.
    assert lab.transceiver_address not in answer
    assert f"{relay.public_address} {relay.public_port}" in answer
    # The transceiver saw the call through relay 0's private side.
    assert status["remote"][0] == relay.private_address, status

    to_txr = _stat(after, "fwd_to_transceiver") - _stat(before, "fwd_to_transceiver")
    to_client = _stat(after, "fwd_to_client") - _stat(before, "fwd_to_client")
    new_flows = _stat(after, "fwd_new_flow") - _stat(before, "fwd_new_flow")
    # ~2 s of speech plus the reply at 50 packets/s each way.
    assert new_flows >= 1
    assert to_txr > 100, (before, after)
    assert to_client > 100, (before, after)
    assert _stat(after, "pass_no_neigh") == _stat(before, "pass_no_neigh")
    # XDP handled all of it: the relay's stack (AF_PACKET taps) saw no UDP.
    assert tap.udp_total() == 0, tap.udp.most_common(5)


def _nft(netns: str, script: str) -> None:
    subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", "--", "nft", "-f", "-"],
        input=script.encode(), check=True, capture_output=True, timeout=10,
    )


REBIND_PORT = 45000


def rebind_client(lab, new_address: str) -> None:
    """Make the client's traffic to relay 1 leave from ``new_address``:REBIND_PORT,
    as a NAT in front of it would after losing its mapping.

    nftables in the client namespace: a source NAT for UDP to the relay (its
    conntrack entry maps the answers back to the client's socket), and a drop,
    ahead of conntrack, of anything still sent to the old address, which the
    lost mapping no longer forwards. On relay 1, the new address gets the same
    neighbour entry as the old one: in the lab the client is on-link, where
    on the internet both addresses sit behind the same upstream router.
    """
    from lab.netns import ensure_address, ensure_neighbour

    relay = lab.relays[0]
    ensure_address(lab.client_if, f"{new_address}/24", lab.client_ns)
    ensure_neighbour(relay.public_if, new_address, lab.client_mac, netns=relay.netns)
    old = lab.client_address
    _nft(lab.client_ns, f"""
table ip voxrelay_rebind {{
  chain out {{
    type nat hook postrouting priority 100; policy accept;
    ip saddr {old} ip daddr {relay.public_address} udp dport {relay.public_port} snat to {new_address}:{REBIND_PORT}
  }}
  chain pre {{
    type filter hook prerouting priority -300; policy accept;
    ip daddr {old} ip saddr {relay.public_address} udp sport {relay.public_port} drop
  }}
}}
""")


def unrebind_client(lab) -> None:
    _nft(lab.client_ns, "delete table ip voxrelay_rebind\n")


@pytest.mark.asyncio(loop_scope="module")
async def test_address_change_ice_restart(lab, speech_pcm: bytes) -> None:
    from lab.call import TimedCallClient, speak_turn

    new_address = lab.client_rebind_address

    async def call() -> dict:
        async with TimedCallClient(lab.signaling_url, lab.api_key, timeout=30) as client:
            await client.wait_event("model", state="connected")
            first = await speak_turn(client, speech_pcm, timeout=30)
            before = await call_status(client)
            await asyncio.to_thread(rebind_client, lab, new_address)
            try:
                # The old mapping is gone: the transceiver's media no longer arrives.
                await asyncio.sleep(0.2)
                chunks = client.chunks_received
                await asyncio.sleep(0.3)
                stalled = client.chunks_received <= chunks + 2
                restarted = time.monotonic()
                await client.restart_ice()
                # Seconds from the restart's start until the client hears the transceiver again.
                await wait_media(client, client.chunks_received + 5, timeout=5)
                resume_s = time.monotonic() - restarted
                after = await call_status(client)
                status_chunks = after["chunks_in"]
                await asyncio.sleep(0.5)
                later = await call_status(client)
                second = await speak_turn(client, speech_pcm, timeout=30)
            finally:
                await asyncio.to_thread(unrebind_client, lab)
            return {
                "first": first, "second": second, "before": before, "after": after,
                "later": later, "status_chunks": status_chunks,
                "resume_s": resume_s, "stalled": stalled,
            }

    out = await lab.client_call(call)
    assert out["stalled"], "media kept arriving at the old address: the address change did not happen"
    # Same call, same transceiver, a new relay-side port (a new flow).
    assert out["after"]["id"] == out["before"]["id"]
    assert out["after"]["remote"] != out["before"]["remote"], out
    assert out["after"]["remote"][0] == lab.relays[0].private_address
    # Media both ways again: client hears the transceiver, transceiver hears the client.
    assert out["resume_s"] <= RESUME_SECONDS, f"media resumed after {out['resume_s']:.2f} s"
    assert out["later"]["chunks_in"] > out["status_chunks"]
    for word in KEY_WORDS:
        assert word in out["second"].transcript.lower(), out["second"].transcript


def set_link_state(netns: str, ifname: str, up: bool) -> None:
    from orchestrator.netlink import iproute

    with iproute(netns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=idx, state="up" if up else "down")


@pytest.mark.asyncio(loop_scope="module")
async def test_relay_failover(lab, speech_pcm: bytes) -> None:
    from lab.call import TimedCallClient, speak_turn

    first_relay, second_relay = lab.relays[0], lab.relays[1]

    async def call() -> dict:
        async with TimedCallClient(lab.signaling_url, lab.api_key, timeout=30) as client:
            await client.wait_event("model", state="connected")
            answer = client.answer_sdp
            before = await call_status(client)
            # Relay 1 fails: its public side goes dark.
            await asyncio.to_thread(set_link_state, first_relay.netns, first_relay.public_if, False)
            down_at = time.monotonic()
            try:
                # The client notices: no packet from the transceiver for 300 ms.
                chunks = client.chunks_received
                await asyncio.sleep(0.3)
                stalled = client.chunks_received <= chunks + 2
                await client.restart_ice()
                await wait_media(client, client.chunks_received + 5, timeout=FAILOVER_SECONDS)
                recovered_s = time.monotonic() - down_at
                after = await call_status(client)
                turn = await speak_turn(client, speech_pcm, timeout=30)
            finally:
                await asyncio.to_thread(set_link_state, first_relay.netns, first_relay.public_if, True)
            return {"answer": answer, "before": before, "after": after, "stalled": stalled,
                    "recovered_s": recovered_s, "turn": turn}

    out = await lab.client_call(call)
    # The answer listed both relays, nearest (relay 1) first.
    answer = out["answer"]
    first_at = answer.find(f"{first_relay.public_address} {first_relay.public_port}")
    second_at = answer.find(f"{second_relay.public_address} {second_relay.public_port}")
    assert 0 <= first_at < second_at, answer
    assert out["before"]["remote"][0] == first_relay.private_address
    assert out["stalled"], "media kept flowing with relay 1 down: the call was not on relay 1"
    assert out["after"]["id"] == out["before"]["id"]
    assert out["after"]["remote"][0] == second_relay.private_address, out["after"]
    assert out["recovered_s"] <= FAILOVER_SECONDS
    for word in KEY_WORDS:
        assert word in out["turn"].transcript.lower(), out["turn"].transcript


def transceiver_udp_ports(lab) -> list[int]:
    """UDP ports bound in the transceiver namespace (from its /proc view)."""
    from orchestrator.netlink import run_in_netns

    def read() -> list[int]:
        ports = set()
        with open("/proc/thread-self/net/udp") as f:
            for line in f.readlines()[1:]:
                local = line.split()[1]
                ports.add(int(local.split(":")[1], 16))
        return sorted(ports)

    return run_in_netns(lab.transceiver_ns, read)


def route_private_via_relay(lab, add: bool) -> None:
    from orchestrator.netlink import iproute

    relay = lab.relays[0]
    with iproute(lab.client_ns) as ipr:
        ipr.route("add" if add else "del", dst=f"{lab.transceiver_address}/32",
                  gateway=relay.public_address)


@pytest.mark.asyncio(loop_scope="module")
async def test_no_path_around_relay(lab, speech_pcm: bytes) -> None:
    from lab.call import TimedCallClient, icmp_rtt_ms

    target = lab.transceiver_address
    signaling_port = int(lab.transceiver_signaling_port)

    async def call_then_probe() -> dict:
        # A live call, so that its media port is open while we probe it.
        async with TimedCallClient(lab.signaling_url, lab.api_key, timeout=30) as client:
            await client.wait_event("model", state="connected")
            ports = await asyncio.to_thread(transceiver_udp_ports, lab)
            assert ports, "the transceiver has no UDP socket during a call"
            errors = {}
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for port in ports:
                    try:
                        s.sendto(b"around-the-relay", (target, port))
                    except OSError as exc:
                        errors[port] = exc.errno
            tcp_ok = True
            try:
                with socket.create_connection((target, signaling_port), timeout=1):
                    pass
            except OSError:
                tcp_ok = False
            rtt = icmp_rtt_ms(target, count=2, timeout=0.5)
            await asyncio.sleep(0.5)
            return {"ports": ports, "errors": errors, "tcp_ok": tcp_ok, "rtt": rtt}

    # The client namespace has no route to the private network at all; give
    # it one, through relay 1, as an attacker next to the relay would have:
    # the relay must still not carry anything from it to the transceiver.
    await asyncio.to_thread(route_private_via_relay, lab, True)
    try:
        with IpTap(lab.transceiver_ns, source=lab.client_address) as tap:
            out = await lab.client_call(call_then_probe)
    finally:
        await asyncio.to_thread(route_private_via_relay, lab, False)
    assert not out["errors"], f"sends failed (no route?): {out['errors']}"
    assert not out["tcp_ok"], "TCP to the transceiver's own address connected from the client"
    assert out["rtt"] is None, "the transceiver's own address answered ICMP from the client"
    assert tap.count == 0, f"{tap.count} packets from the client reached the transceiver"
