# SPDX-License-Identifier: Apache-2.0
"""Issue #11 through the XDP relay: hang-ups under a stalled model, admission
that pending calls cannot starve, NAT rebinding without a restart, consent.

One lab (lab.stack, one relay) is shared by the tests of this module, in
this order (the last one stops the transceiver):

* test_twenty_hang_ups_with_the_model_stalled: 20 calls, then the model
  process is stopped (SIGSTOP: the worst a slow model can do, it reads
  nothing, so every call's bounded audio queue fills), then all 20 hang up.
  Every DELETE is 204 within 1 s; afterwards no call port is bound, no
  session record is in the directory, no flow of theirs carries a packet,
  and, the model resumed, every one of its streams is free again.
* test_thirty_pending_posts_then_a_real_call: 30 POSTs that never start ICE
  (more than the model's 24 streams here), then a real call: it connects,
  and the model answers it.
* test_nat_rebinding_without_a_restart: the client's source port changes
  mid-call (SNAT in its namespace), no PATCH: reply audio reaches the new
  address within 2 s, same transceiver, same call id.
* test_consent_expires_thirty_seconds_after_the_last_response: the client's
  network goes away; the call closes 30 s after the transceiver's last
  consent response (RFC 7675), measured against the transceiver's own clock.
* test_sigterm_exits_within_the_drain_grace: after all of that, SIGTERM
  stops the transceiver within its drain grace.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest
import pytest_asyncio

from tests.netns.test_call import (
    KEY_WORDS,
    SENTENCE,
    call_status,
    rebind_client,
    transceiver_udp_ports,
    unrebind_client,
    wait_media,
)

pytestmark = [pytest.mark.netns, pytest.mark.root]

CALLS = 20
MODEL_STREAMS = 24  # the model's --max-streams and the transceiver's model_streams
DELETE_SECONDS = 1.0
REBIND_SECONDS = 2.0
CONSENT_TIMEOUT = 30.0  # the transceiver's default (RFC 7675)
DRAIN_GRACE = 1.0  # lab.stack's drain_grace_seconds


@pytest.fixture(scope="module")
def speech_pcm(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from lab.client import read_wav_pcm
    from lab.demo import speak

    wav = speak(SENTENCE, tmp_path_factory.mktemp("speech") / "sentence.wav")
    return read_wav_pcm(wav)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab():
    from lab.stack import StackOptions, start_stack

    async with start_stack(StackOptions(relays=1, model_streams=MODEL_STREAMS)) as running:
        yield running


def _in_netns(netns: str, coro_fn, *args):
    from orchestrator.netlink import run_in_netns

    return asyncio.to_thread(run_in_netns, netns, lambda: asyncio.run(coro_fn(*args)))


async def _sessions_left(directory_url: str, secret: str, call_ids: list[str]) -> list[str]:
    from voxrelay.directory import connect

    directory = connect(directory_url, secret=secret)
    try:
        return [cid for cid in call_ids if await directory.get_session(cid) is not None]
    finally:
        await directory.close()


async def _busy_model_streams(target: str, streams: int) -> int:
    """Open ``streams`` Converse streams at once; how many the model refuses as busy."""
    import grpc.aio

    from transceiver.model import voice_pb2, voice_pb2_grpc

    hold = asyncio.Event()

    async def requests():
        yield voice_pb2.ClientMessage(control=voice_pb2.Control(
            start=voice_pb2.Start(call_id="probe", language="en-US")))
        await hold.wait()

    async def first_message(call) -> str:
        try:
            message = await asyncio.wait_for(call.read(), 1.5)
        except TimeoutError:
            return ""  # accepted: the model says nothing until it hears speech
        return message.error.code if message is not grpc.aio.EOF else "eof"

    async with grpc.aio.insecure_channel(target) as channel:
        stub = voice_pb2_grpc.VoiceModelStub(channel)
        calls = [stub.Converse(requests()) for _ in range(streams)]
        try:
            codes = await asyncio.gather(*(first_message(c) for c in calls))
        finally:
            hold.set()
            for call in calls:
                call.cancel()
    return sum(1 for code in codes if code)


def _active_flows(relay_name: str, clients: set[str]) -> list[str]:
    from orchestrator.pinview import open_pinview

    with open_pinview(relay_name) as view:
        return [f.client for f in view.flows() if f.client in clients and f.state == "active"]


@pytest.mark.asyncio(loop_scope="module")
async def test_twenty_hang_ups_with_the_model_stalled(lab) -> None:
    from lab.client import CallClient
    from orchestrator.relay import FLOW_ACTIVE_SECONDS

    model = lab.services["model"].proc
    ports_before = await asyncio.to_thread(transceiver_udp_ports, lab)

    async def calls() -> dict:
        clients = [CallClient(lab.signaling_url, lab.api_key, 30) for _ in range(CALLS)]
        try:
            for batch in range(0, CALLS, 5):  # 2 shared cores: a few handshakes at a time
                await asyncio.gather(*(c.__aenter__() for c in clients[batch:batch + 5]))
            await asyncio.gather(*(c.wait_event("model", state="connected") for c in clients))
            ids = [c.call_id for c in clients]
            local_ports = {c.pc.getTransceivers()[0].receiver.transport.transport
                           .iceGatherer.getLocalCandidates()[0].port for c in clients}
            os.killpg(model.pid, signal.SIGSTOP)
            try:
                # The model reads nothing now: wait until every call drops audio.
                deadline = time.monotonic() + 60
                while True:
                    statuses = await asyncio.gather(*(call_status(c) for c in clients))
                    if all(s["model_chunks_dropped"] > 0 for s in statuses):
                        break
                    assert time.monotonic() < deadline, [s["model_chunks_dropped"]
                                                         for s in statuses]
                    await asyncio.sleep(0.5)

                async def hang_up(client: CallClient) -> tuple[int, float]:
                    started = time.monotonic()
                    status = await client.hangup()
                    return status, time.monotonic() - started

                results = await asyncio.gather(*(hang_up(c) for c in clients))
            finally:
                os.killpg(model.pid, signal.SIGCONT)
            # A second DELETE finds no call.
            clients[0].location = f"/v1/calls/{ids[0]}"
            again = await clients[0].hangup()
            return {"results": results, "ids": ids, "again": again,
                    "local_ports": local_ports}
        finally:
            for client in clients:
                await client.close()

    out = await lab.client_call(calls)
    statuses = [status for status, _ in out["results"]]
    took = [round(t, 3) for _, t in out["results"]]
    assert statuses == [204] * CALLS, statuses
    assert max(took) < DELETE_SECONDS, took
    assert out["again"] == 404

    # No call port is bound any more in the transceiver's namespace.
    assert await asyncio.to_thread(transceiver_udp_ports, lab) == ports_before
    # No session record is left in the directory.
    assert await _in_netns(lab.relays[0].netns, _sessions_left, lab.directory_url,
                           lab.directory_secret, out["ids"]) == []
    # The model has every stream free again (it refuses streams beyond its limit as busy).
    target = f"{lab.model_address}:50051"
    deadline = time.monotonic() + 15
    while busy := await _in_netns(lab.model_ns, _busy_model_streams, target, MODEL_STREAMS):
        assert time.monotonic() < deadline, f"{busy} model streams still taken"
        await asyncio.sleep(0.5)
    # No flow of these calls carries a packet any more (the relay keeps a
    # flow until flow_idle_seconds; "active" means a packet in the last 10 s).
    clients = {f"{lab.client_address}:{p}" for p in out["local_ports"]}
    await asyncio.sleep(FLOW_ACTIVE_SECONDS)
    assert await asyncio.to_thread(_active_flows, lab.relays[0].name, clients) == []


async def _post_pending(url: str, count: int, bearer: str) -> tuple[list[int], list[str]]:
    """POST ``count`` real offers and never start ICE; (statuses, locations)."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("audio")
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    statuses, locations = [], []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.post(f"{url}/v1/calls", data=offer,
                                    headers={"Content-Type": "application/sdp",
                                             "Authorization": f"Bearer {bearer}"}) as r:
                statuses.append(r.status)
                locations.append(r.headers.get("Location", ""))
    return statuses, locations


async def _delete_all(url: str, locations: list[str], bearer: str) -> list[int]:
    async with aiohttp.ClientSession() as session:
        out = []
        for location in locations:
            async with session.delete(url + location,
                                      headers={"Authorization": f"Bearer {bearer}"}) as r:
                out.append(r.status)
        return out


@pytest.mark.asyncio(loop_scope="module")
async def test_thirty_pending_posts_then_a_real_call(lab, speech_pcm: bytes) -> None:
    from lab.call import TimedCallClient, speak_turn

    async def scenario() -> dict:
        statuses, locations = await _post_pending(lab.signaling_url, 30, lab.api_key)
        try:
            async with TimedCallClient(lab.signaling_url, lab.api_key, timeout=30) as client:
                await client.wait_event("model", state="connected")
                turn = await speak_turn(client, speech_pcm, timeout=30)
        finally:
            deleted = await _delete_all(lab.signaling_url, [loc for loc in locations if loc],
                                        lab.api_key)
        return {"statuses": statuses, "turn": turn, "deleted": deleted}

    out = await lab.client_call(scenario)
    # With the API key (the operator's backend) only max_calls (50) bounds
    # pending calls, and none of them holds a model stream.
    assert out["statuses"] == [201] * 30
    for word in KEY_WORDS:
        assert word in out["turn"].transcript.lower(), out["turn"].transcript
    assert out["turn"].first_reply_audio_at is not None
    assert out["deleted"] == [204] * 30


@pytest.mark.asyncio(loop_scope="module")
async def test_one_client_secret_holds_at_most_its_pending_limit(lab) -> None:
    """A browser session's secret (what a page holds, so what an attacker gets)
    sets up at most max_pending_per_client (4) calls that never connect; the
    rest are 429 with Retry-After and allocate nothing."""
    secret = (await lab.client_secret())["value"]

    async def scenario() -> dict:
        statuses, locations = await _post_pending(lab.signaling_url, 8, secret)
        deleted = await _delete_all(lab.signaling_url, [loc for loc in locations if loc], secret)
        return {"statuses": statuses, "deleted": deleted}

    out = await lab.client_call(scenario)
    assert out["statuses"] == [201] * 4 + [429] * 4, out
    assert out["deleted"] == [204] * 4


@pytest.mark.asyncio(loop_scope="module")
async def test_nat_rebinding_without_a_restart(lab, speech_pcm: bytes, monkeypatch) -> None:
    import aioice.ice

    from lab.call import TimedCallClient, speak_turn

    # The client is stock aioice, whose consent checks (every CONSENT_INTERVAL
    # s, never with USE-CANDIDATE) are what reaches the transceiver from the
    # new address. Chromium checks every 2.5 s; 1 s bounds this test's wait.
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 1)
    new_address = lab.client_rebind_address

    async def call() -> dict:
        async with TimedCallClient(lab.signaling_url, lab.api_key, timeout=30) as client:
            await client.wait_event("model", state="connected")
            await wait_media(client, client.chunks_received + 5, timeout=5)
            before = await call_status(client)
            await asyncio.to_thread(rebind_client, lab, new_address)
            rebound = time.monotonic()
            try:
                chunks = client.chunks_received
                await asyncio.sleep(0.3)
                stalled = client.chunks_received <= chunks + 2
                await wait_media(client, client.chunks_received + 5, timeout=10)
                resume_s = time.monotonic() - rebound
                after = await call_status(client)
                turn = await speak_turn(client, speech_pcm, timeout=30)
            finally:
                await asyncio.to_thread(unrebind_client, lab)
            return {"before": before, "after": after, "stalled": stalled,
                    "resume_s": resume_s, "turn": turn}

    out = await lab.client_call(call)
    assert out["stalled"], "media kept arriving at the old address: no rebinding happened"
    assert out["resume_s"] <= REBIND_SECONDS, f"reply audio resumed after {out['resume_s']:.2f} s"
    assert out["after"]["id"] == out["before"]["id"]
    assert out["after"]["remote"] != out["before"]["remote"], out
    assert out["after"]["remote"][0] == lab.relays[0].private_address
    assert out["after"]["rebinds"] == 1
    for word in KEY_WORDS:
        assert word in out["turn"].transcript.lower(), out["turn"].transcript


def _block_udp(lab, block: bool) -> None:
    from tests.netns.test_call import _nft

    relay = lab.relays[0]
    if block:
        _nft(lab.client_ns, f"""
table ip voxrelay_gone {{
  chain out {{
    type filter hook output priority 0; policy accept;
    ip daddr {relay.public_address} udp dport {relay.public_port} drop
  }}
  chain in {{
    type filter hook input priority 0; policy accept;
    ip saddr {relay.public_address} udp sport {relay.public_port} drop
  }}
}}
""")
    else:
        _nft(lab.client_ns, "delete table ip voxrelay_gone\n")


@pytest.mark.asyncio(loop_scope="module")
async def test_consent_expires_thirty_seconds_after_the_last_response(lab) -> None:
    from lab.client import CallClient

    async def call() -> dict:
        async with CallClient(lab.signaling_url, lab.api_key, 30) as client:
            await client.wait_event("model", state="connected")
            await asyncio.to_thread(_block_udp, lab, True)
            try:
                # Asked after the block: no consent response can arrive any more,
                # so the age dates the last one on the transceiver's clock.
                asked = time.monotonic()
                status = await call_status(client)
                last_response = asked - status["consent_age_s"]
                closed_at = None
                assert client._session is not None
                while time.monotonic() - last_response < CONSENT_TIMEOUT + 10:
                    response = await client._session.get(client.location.lstrip("/"))
                    if response.status == 404:
                        closed_at = time.monotonic()
                        break
                    await asyncio.sleep(0.1)
            finally:
                await asyncio.to_thread(_block_udp, lab, False)
            return {"closed_after": None if closed_at is None else closed_at - last_response,
                    "age": status["consent_age_s"]}

    out = await lab.client_call(call)
    assert out["closed_after"] is not None, "the call outlived its consent by 10 s"
    # 30 s after the last response, give or take the poll (0.1 s) and teardown.
    assert CONSENT_TIMEOUT - 0.2 <= out["closed_after"] <= CONSENT_TIMEOUT + 1.0, out


@pytest.mark.asyncio(loop_scope="module")
async def test_sigterm_exits_within_the_drain_grace(lab) -> None:
    transceiver = lab.services["transceiver"].proc
    assert transceiver.poll() is None
    started = time.monotonic()
    os.killpg(transceiver.pid, signal.SIGTERM)
    await asyncio.to_thread(transceiver.wait, 10)
    took = time.monotonic() - started
    assert transceiver.returncode == 0, lab.services["transceiver"].log_tail()
    assert took <= DRAIN_GRACE + 0.5, f"exit took {took:.2f} s"
