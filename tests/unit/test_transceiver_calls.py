# SPDX-License-Identifier: Apache-2.0
"""Calls through the HTTP API: two aiortc peers in one process, on loopback.

The client reaches the transceiver through ``LoopbackRelay``, a userspace
stand-in for the XDP relay that routes by the token ufrag (see
transceiver_harness.py). The kernel relay path is covered by tests/netns.
Media-plumbing tests use ``fake_model`` (fixed transcript); the speech test
uses the real default model (test_transceiver_speech.py).
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from lab.client import CallClient, CallFailed
from tests.support import DIRECTORY_SECRET
from tests.unit.fake_model import TRANSCRIPT, start_fake_model, tone
from tests.unit.transceiver_harness import (
    LoopbackRelay,
    free_port_range,
    free_udp_port,
    open_fds,
    open_udp_ports,
    start_transceiver,
)
from voxrelay import token as tokens
from voxrelay.directory.memory import MemoryDirectory

pytestmark = pytest.mark.timeout(120)

SPEECH = tone(800, 300.0)
NO_AUDIO_OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
)  # loud enough for the fake model's energy VAD


@pytest.fixture
async def rig():
    directory = MemoryDirectory()
    ring = await directory.ensure_keyring()
    relay = LoopbackRelay(ring.active_keys())
    relay_addr = await relay.start()
    server, model, model_port = await start_fake_model()
    service = await start_transceiver(directory, [relay_addr], f"127.0.0.1:{model_port}")
    rig = type("Rig", (), {})()
    rig.directory, rig.ring, rig.relay, rig.service, rig.model, rig.server = (
        directory, ring, relay, service, model, server)
    rig.model_port = model_port
    yield rig
    await service.stop(0.2)
    relay.close()
    await rig.server.stop(0)


def candidates(sdp: str) -> list[tuple[str, int, str]]:
    found = re.findall(r"a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ (\w+)", sdp)
    return [(h, int(p), t) for h, p, t in found]


async def test_call_answer_relay_only_token_ufrag_and_reply(rig) -> None:
    async with CallClient(rig.service.url, "secret", 15) as client:
        answer = client.answer_sdp
        call = rig.service.manager.get(client.call_id)
        # Only the relay's address is advertised, never the transceiver's.
        # (each m-line repeats the bundle's candidates)
        assert set(candidates(answer)) == {(*rig.relay.address, "host")}
        assert f"c=IN IP4 {rig.relay.address[0]}" in answer
        assert str(call.port) not in " ".join(str(p) for _, p, _ in candidates(answer))
        # The ufrag is a routing token for this transceiver and the bound port.
        ufrag = re.search(r"a=ice-ufrag:(\S+)", answer).group(1)
        token = tokens.verify(ufrag, rig.ring.active_keys())
        assert (token.transceiver_id, token.port) == (7, call.port)
        assert call.routed.primary().bound_address == ("127.0.0.1", call.port)
        # ICE went through the relay: the nominated remote is the relay's flow socket.
        assert rig.relay.counters["new_flow"] == 1
        assert rig.relay.seen_ufrags == [ufrag]
        assert call.status()["remote"][1] != client.pc.sctp.transport.transport \
            .iceGatherer.getLocalCandidates()[0].port
        await client.wait_event("model", state="connected")
        await client.say_and_wait_reply(SPEECH)
        result = client.result()
    assert result.transcript == TRANSCRIPT
    assert result.reply == "you said: " + TRANSCRIPT
    assert result.reply_peak > 1000
    timings = result.of_type("timings")
    assert any("processing_ms" in t for t in timings)
    assert any(t.get("first_audio_ms", -1) >= 0 for t in timings)


async def test_ice_restart_keeps_the_call(rig) -> None:
    async with CallClient(rig.service.url, "secret", 15) as client:
        call = rig.service.manager.get(client.call_id)
        first_ufrag = call.ufrag
        await client.wait_event("model", state="connected")
        new_ufrag = await client.restart_ice()
        assert new_ufrag != first_ufrag
        assert call.ufrag == new_ufrag
        token = tokens.verify(new_ufrag, rig.ring.active_keys())
        assert token.port == call.port  # same transceiver, same socket
        assert rig.service.manager.get(client.call_id) is call
        assert call.routed.primary().nominated_remote() is not None
        before = len(client.events)
        await client.say_and_wait_reply(SPEECH)
        assert any(e["type"] == "transcript" for e in client.events[before:])
        assert client.pc.connectionState == "connected"
        assert len(rig.service.manager.calls) == 1


SDP_AUTHORIZED = {"Content-Type": "application/sdp", "Authorization": "Bearer secret"}


async def _post(url: str, body: str, headers: dict[str, str]) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as session, session.post(
        url + "/v1/calls", data=body, headers=headers
    ) as r:
        return r.status, dict(r.headers), await r.json()


async def _post_fresh_offer(url: str) -> tuple[int, dict, dict]:
    """POST a new client's real offer by hand, to see a refusal's status and body."""
    client = CallClient(url, "secret", 15)
    try:
        await client.pc.setLocalDescription(await client.pc.createOffer())
        return await _post(url, client.pc.localDescription.sdp, SDP_AUTHORIZED)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        ("", SDP_AUTHORIZED, 400, "SDP offer is empty"),
        ("garbage", SDP_AUTHORIZED, 400, "SDP offer must start with v=0"),
        (NO_AUDIO_OFFER, SDP_AUTHORIZED, 400, "SDP offer has no audio m-line"),
        ("v=0", {"Content-Type": "application/sdp"}, 401, "send Authorization: Bearer <API key or ephemeral client secret>"),
        ("v=0", {"Content-Type": "application/sdp", "Authorization": "Bearer nope"}, 401,
         "wrong API key"),
        ("v=0", {"Content-Type": "text/plain", "Authorization": "Bearer secret"}, 415,
         "Content-Type must be application/sdp, got text/plain"),
    ],
)
async def test_errors_allocate_nothing(rig, body, headers, status, message) -> None:
    low, high = free_port_range()
    fds = open_fds()
    got, _, payload = await _post(rig.service.url, body, headers)
    assert (got, payload["error"]["message"]) == (status, message)
    assert rig.service.manager.calls == {}
    assert rig.service.manager.load == 0
    assert open_udp_ports(low, high) == []
    assert not rig.service.manager.settings.ports.in_use
    assert rig.directory.session_ids() == set()
    assert open_fds() == fds


async def test_at_capacity_is_503_with_retry_after(rig) -> None:
    rig.service.manager.settings.max_calls = 1
    async with CallClient(rig.service.url, "secret", 15):
        status, headers, payload = await _post_fresh_offer(rig.service.url)
        assert status == 503
        assert headers["Retry-After"] == "5"
        assert payload["error"]["message"] == "at capacity: 1 calls"
        assert len(rig.service.manager.calls) == 1
    async with CallClient(rig.service.url, "secret", 15) as c:
        c.location = "/v1/calls/nope"
        with pytest.raises(CallFailed, match="404"):
            await c.restart_ice()


async def test_model_killed_mid_call_error_then_recovery(rig) -> None:
    async with CallClient(rig.service.url, "secret", 15) as client:
        await client.wait_event("model", state="connected")
        await rig.server.stop(0)  # the model dies mid-call
        error = await client.wait_event("error", code="model_unavailable")
        assert "reconnecting" in error["message"]
        assert client.pc.connectionState == "connected"  # the call stays up
        mark = len(client.events)
        rig.server, rig.model, _ = await start_fake_model(rig.model_port)
        await client.wait_event("model", after=mark, state="connected")
        await client.say_and_wait_reply(SPEECH)
        assert client.result().transcript.endswith(TRANSCRIPT)


async def test_client_vanishes_call_is_freed() -> None:
    directory = MemoryDirectory()
    relay = LoopbackRelay((await directory.ensure_keyring()).active_keys())
    relay_addr = await relay.start()
    server, _, model_port = await start_fake_model()
    service = await start_transceiver(directory, [relay_addr], f"127.0.0.1:{model_port}",
                                      consent_interval=0.2, consent_timeout=0.6)
    try:
        client = CallClient(service.url, "secret", 15)
        await client.__aenter__()
        call = service.manager.get(client.call_id)
        # The client disappears without DELETE: its packets stop.
        client.location = ""
        await client.pc.close()
        await asyncio.wait_for(call.closed.wait(), 10)
        assert "consent" in call.close_reason or "failed" in call.close_reason
        assert service.manager.calls == {}
        assert not service.manager.settings.ports.in_use
        await asyncio.sleep(0.05)
        assert directory.session_ids() == set()
        await client.close()
    finally:
        await service.stop(0.2)
        relay.close()
        await server.stop(0)


async def test_twenty_calls_leak_nothing(rig) -> None:
    low, high = free_port_range()
    fds = open_fds()
    tasks = len(asyncio.all_tasks())
    for _ in range(20):
        async with CallClient(rig.service.url, "secret", 15) as client:
            assert client.call_id in rig.directory.session_ids()
    await asyncio.sleep(0.3)
    manager = rig.service.manager
    assert manager.calls == {}
    assert not manager.settings.ports.in_use
    assert len(manager.sessions) == 0
    assert rig.directory.session_ids() == set()
    assert open_udp_ports(low, high) == []
    # The relay stand-in keeps one socket per flow (as the XDP relay keeps
    # flows until idle); everything else must be back to where it was.
    assert len(rig.relay.flows) == 20
    assert open_fds() - len(rig.relay.flows) <= fds + 2  # keep-alive slack, not per call
    assert len(asyncio.all_tasks()) <= tasks + 2


async def test_drain_refuses_new_calls_and_closes_old_ones(rig) -> None:
    client = CallClient(rig.service.url, "secret", 15)
    await client.__aenter__()
    call = rig.service.manager.get(client.call_id)
    drain = asyncio.create_task(rig.service.manager.drain(0.5))
    await asyncio.sleep(0.05)
    assert (await rig.directory.get_transceiver(7)).status == "draining"
    status, _, payload = await _post_fresh_offer(rig.service.url)
    assert (status, payload["error"]["message"]) == (503, "transceiver is draining: no new calls")
    await drain
    assert call.closed.is_set()
    assert call.close_reason == "transceiver shut down"
    assert call.pc.connectionState == "closed"
    await client.close()


async def test_with_the_orchestrators_directory() -> None:
    """The same call against the directory the orchestrator serves (its HTTP API
    over the embedded store): record, probe port, sessions, load, withdrawal."""
    from aiohttp.test_utils import TestServer

    from voxrelay.directory.http import HttpDirectory, make_app

    inner = MemoryDirectory()
    ring = await inner.ensure_keyring()
    probe_port = free_udp_port()
    http = TestServer(make_app(inner, [DIRECTORY_SECRET]), host="127.0.0.1")
    await http.start_server()
    directory = HttpDirectory(str(http.make_url("")), secret=DIRECTORY_SECRET)
    relay = LoopbackRelay(ring.active_keys())
    relay_addr = await relay.start()
    server, _, model_port = await start_fake_model()
    service = await start_transceiver(directory, [relay_addr], f"127.0.0.1:{model_port}",
                                      probe_port=probe_port)
    try:
        record = await inner.get_transceiver(7)
        assert record is not None
        assert (record.address, record.probe_port) == ("127.0.0.1", probe_port)
        from orchestrator.probe import probe_async
        from voxrelay.probe import mint_probe_token
        # The probe responder answers on the announced port (here without a relay).
        ufrag = mint_probe_token(ring.active_keys(), ring.current, 7, probe_port)
        result = await probe_async(("127.0.0.1", probe_port), ufrag)
        assert result.ok, result.reason
        async with CallClient(service.url, "secret", 15) as client:
            session = await inner.get_session(client.call_id)
            assert session is not None
            assert session["port"] == service.manager.get(client.call_id).port
            ufrag = re.search(r"a=ice-ufrag:(\S+)", client.answer_sdp).group(1)
            assert tokens.verify(ufrag, ring.active_keys()).key_id == ring.current
            await client.wait_event("model", state="connected")
        await asyncio.sleep(0.1)
        assert await inner.get_session(client.call_id) is None
        await asyncio.sleep(0.3)  # heartbeats carry the load
        assert (await inner.get_transceiver(7)).load == 0
    finally:
        await service.stop(0.2)
        relay.close()
        await server.stop(0)
        await http.close()
    assert await inner.get_transceiver(7) is None  # withdrawn on shutdown


async def test_barge_in_stops_the_reply(rig) -> None:
    from transceiver.model.speech import synthesize

    rig.model.reply_ms = 4000  # a long reply to talk over
    interruption, _ = synthesize("hello how are you")
    async with CallClient(rig.service.url, "secret", 15) as client:
        call = rig.service.manager.get(client.call_id)
        await client.wait_event("model", state="connected")
        client.speak(SPEECH)
        await client.wait_event("transcript", final=True)
        await client.wait_for(lambda: call.track.playing, "the reply to play", poll=True)
        client.speak(interruption)
        event = await client.wait_event("barge_in")
        assert event["source"] in ("vad", "transcript")
        assert event["dropped_ms"] > 0
        assert not call.track.playing
        await client.wait_for(lambda: rig.model.barge_ins >= 1, "the model to get barge_in",
                              poll=True)
