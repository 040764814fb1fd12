# SPDX-License-Identifier: Apache-2.0
"""Issue #11 in one process: hang-ups under a stalled model, admission, pending calls.

The transceiver runs against ``StalledModel`` (a voice.proto server that takes
a stream and then never reads it, the worst a slow model can do: the call's
bounded audio queue fills) or against the fake model of fake_model.py. The
client reaches it through the loopback relay of transceiver_harness.py. The
same hang-ups through the XDP relay, with 20 calls, are in
tests/netns/test_robust.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc.aio
import pytest
from aiortc import RTCPeerConnection

from lab.client import CallClient
from tests.support import until_async
from tests.unit.fake_model import start_fake_model
from tests.unit.transceiver_harness import (
    LoopbackRelay,
    free_port_range,
    open_udp_ports,
    start_transceiver,
)
from transceiver.call import CallError
from transceiver.manager import ModelAtCapacity, TooManyPending
from transceiver.model import voice_pb2, voice_pb2_grpc
from transceiver.modellink import ModelLink, open_channel
from voxrelay.directory.memory import MemoryDirectory

pytestmark = pytest.mark.timeout(120)

DELETE_SECONDS = 1.0
"""Issue #11: every DELETE answers 204 within 1 s, even with the model stalled."""


class StalledModel(voice_pb2_grpc.VoiceModelServicer):
    """Reads a stream's Start, then nothing: gRPC flow control stops the sender."""

    def __init__(self) -> None:
        self.active = 0
        self.opened = 0

    async def Converse(self, request_iterator, context):  # the proto names it
        self.opened += 1
        self.active += 1
        try:
            await request_iterator.__anext__()
            await asyncio.Event().wait()
        finally:
            self.active -= 1
        yield voice_pb2.ServerMessage()  # unreachable; makes this a stream handler


async def start_stalled_model() -> tuple[grpc.aio.Server, StalledModel, int]:
    # Without BDP probing the server's HTTP/2 window stays at its initial 64 KiB,
    # so a stream it does not read blocks the sender after ~2 s of audio.
    server = grpc.aio.server(options=[("grpc.http2.bdp_probe", 0)])
    model = StalledModel()
    voice_pb2_grpc.add_VoiceModelServicer_to_server(model, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, model, port


async def _rig(model_target: str, **options):
    directory = MemoryDirectory()
    relay = LoopbackRelay((await directory.ensure_keyring()).active_keys())
    relay_addr = await relay.start()
    service = await start_transceiver(directory, [relay_addr], model_target, **options)
    return directory, relay, service


async def _offer() -> str:
    """A real aiortc offer, for POSTs that never go on to start ICE."""
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio")
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


async def test_model_link_close_with_a_full_queue_is_bounded_and_silent() -> None:
    server, model, port = await start_stalled_model()
    channel = open_channel(f"127.0.0.1:{port}")
    states: list[str] = []
    link = ModelLink(channel, "c1", lambda m: None, lambda s, d: states.append(s))
    try:
        link.start()
        await until_async(lambda: link.connected, timeout=10, what="the stream to open")
        sent = [link.send_audio(b"\0" * 640) for _ in range(300)]
        # The queue holds 100 chunks: the rest are dropped and counted, not raised.
        assert sent.count(None) == link.chunks_dropped > 0
        assert link.send_barge_in() is False
        assert link.controls_dropped >= 1
        started = time.monotonic()
        await link.close(timeout=0.3)
        assert time.monotonic() - started < DELETE_SECONDS
        await link.close(timeout=0.3)  # idempotent
        assert link.send_audio(b"\0" * 640) is None
        await until_async(lambda: model.active == 0, timeout=5, what="the model to see the end")
        assert states == ["connected"]
    finally:
        await channel.close(None)
        await server.stop(0)


async def test_hang_ups_while_the_model_is_stalled_answer_fast_and_leak_nothing() -> None:
    server, model, port = await start_stalled_model()
    directory, relay, service = await _rig(f"127.0.0.1:{port}")
    manager = service.manager
    low, high = free_port_range()
    tasks_before = len(asyncio.all_tasks())
    clients = [CallClient(service.url, "secret", 20) for _ in range(5)]
    try:
        await asyncio.gather(*(c.__aenter__() for c in clients))
        calls = [manager.get(c.call_id) for c in clients]
        # Each call's audio queue to the model is full: the model reads nothing.
        await until_async(lambda: all(c.link is not None and c.link.chunks_dropped > 0
                                      for c in calls), timeout=20,
                          what="every call's model queue to fill")
        assert model.active == 5

        async def hang_up(client: CallClient) -> tuple[int, float]:
            started = time.monotonic()
            status = await client.hangup()
            return status, time.monotonic() - started

        results = await asyncio.gather(*(hang_up(c) for c in clients))
        assert [status for status, _ in results] == [204] * 5, results
        assert max(took for _, took in results) < DELETE_SECONDS, results
        assert all(c.closed.is_set() and not c.teardown_errors for c in calls), \
            [c.teardown_errors for c in calls]
        assert manager.calls == {}
        assert manager.model_streams_in_use == 0
        assert not manager.settings.ports.in_use
        assert open_udp_ports(low, high) == []
        await until_async(lambda: directory.session_ids() == set(), timeout=5,
                          what="the session records to go")
        await until_async(lambda: model.active == 0, timeout=5,
                          what="the model's streams to end")
        for client in clients:
            await client.close()
        clients = []
        await until_async(lambda: len(asyncio.all_tasks()) <= tasks_before + 2, timeout=5,
                          what="the calls' tasks to end")
    finally:
        for client in clients:
            await client.close()
        started = time.monotonic()
        await service.stop(0.2)
        assert time.monotonic() - started < 3.0
        relay.close()
        await server.stop(0)


async def test_pending_calls_hold_only_a_port_and_go_at_ice_timeout() -> None:
    server, model, port = await start_fake_model()
    _directory, relay, service = await _rig(f"127.0.0.1:{port}", ice_timeout=1.5,
                                           model_streams=2)
    manager = service.manager
    try:
        offer = await _offer()
        # More calls that never start ICE than the model has streams.
        pending = [await manager.create(offer) for _ in range(4)]
        assert model.streams == 0
        assert manager.model_streams_in_use == 0
        assert len(manager.settings.ports.in_use) == 4
        async with CallClient(service.url, "secret", 20) as client:
            await client.wait_event("model", state="connected")
            assert model.streams == 1
            assert manager.model_streams_in_use == 1
            await until_async(lambda: all(c.closed.is_set() for c in pending), timeout=10,
                              what="the pending calls to reach ice_timeout")
            assert {c.close_reason for c in pending} == {"ICE did not connect in time"}
            assert list(manager.calls) == [client.call_id]
            assert len(manager.settings.ports.in_use) == 1
    finally:
        await service.stop(0.2)
        relay.close()
        await server.stop(0)


async def test_a_post_beyond_the_models_streams_is_503_with_retry_after() -> None:
    from tests.unit.test_transceiver_calls import _post_fresh_offer

    server, _model, port = await start_fake_model()
    _directory, relay, service = await _rig(f"127.0.0.1:{port}", model_streams=1)
    try:
        async with CallClient(service.url, "secret", 20) as client:
            await client.wait_event("model", state="connected")
            status, headers, payload = await _post_fresh_offer(service.url)
            assert status == 503
            assert headers["Retry-After"] == "5"
            assert payload["error"]["message"] == "voice model at capacity: 1 streams in use"
            with pytest.raises(ModelAtCapacity):
                service.manager.admit("")
        await until_async(lambda: service.manager.model_streams_in_use == 0, timeout=5,
                          what="the slot to be given back")
        service.manager.admit("")  # room again
    finally:
        await service.stop(0.2)
        relay.close()
        await server.stop(0)


async def test_the_models_capacity_lowers_the_configured_model_streams() -> None:
    """model_streams is 4, but the model's Capacity RPC says it serves 1: the
    transceiver admits one call with a model, and the next POST is a 503."""
    from tests.unit.test_transceiver_calls import _post_fresh_offer

    server, model, port = await start_fake_model()
    model.capacity = (1, 0)
    _directory, relay, service = await _rig(f"127.0.0.1:{port}", model_streams=4)
    manager = service.manager
    try:
        await until_async(lambda: manager.model_capacity is not None, timeout=5,
                          what="the transceiver to read the model's capacity")
        assert manager.model_stream_limit == 1
        async with CallClient(service.url, "secret", 20) as client:
            await client.wait_event("model", state="connected")
            status, headers, payload = await _post_fresh_offer(service.url)
            assert status == 503 and headers["Retry-After"] == "5"
            assert payload["error"]["message"] == "voice model at capacity: 1 streams in use"
    finally:
        await service.stop(0.2)
        relay.close()
        await server.stop(0)


async def test_a_model_serving_all_its_streams_elsewhere_refuses_posts_until_one_is_free() -> None:
    """The model is shared: its Capacity says 2 of 2 streams are busy with other
    transceivers' calls, so this one (model_streams 4, none in use) refuses a
    POST with 503 rather than answer a call the model would refuse."""
    from tests.unit.test_transceiver_calls import _post_fresh_offer

    server, model, port = await start_fake_model()
    model.capacity = (2, 2)
    _directory, relay, service = await _rig(f"127.0.0.1:{port}", model_streams=4)
    manager = service.manager
    try:
        await until_async(lambda: manager.model_capacity is not None, timeout=5,
                          what="the transceiver to read the model's capacity")
        status, _headers, payload = await _post_fresh_offer(service.url)
        assert status == 503
        assert payload["error"]["message"] == (
            "voice model at capacity: it serves 2 of its 2 streams "
            "(other transceivers' calls included)")
        assert manager.model_streams_in_use == 0
        model.capacity = (2, 1)
        await manager.read_model_capacity()
        manager.admit("")  # a stream is free again
    finally:
        await service.stop(0.2)
        relay.close()
        await server.stop(0)


async def test_a_model_without_the_capacity_rpc_leaves_model_streams_as_the_limit(caplog) -> None:  # type: ignore[no-untyped-def]
    server, model, port = await start_fake_model()
    assert model.capacity is None  # UNIMPLEMENTED, as from an older model server
    _directory, relay, service = await _rig(f"127.0.0.1:{port}", model_streams=3)
    manager = service.manager
    try:
        await until_async(lambda: model.capacity_reads >= 1, timeout=5,
                          what="the transceiver to ask the model's capacity")
        assert await manager.read_model_capacity() is None
        assert manager.model_capacity is None and manager.model_stream_limit == 3
        manager.admit("")
        said = [r.getMessage() for r in caplog.records if "no Capacity RPC" in r.getMessage()]
        assert said == ["the voice model has no Capacity RPC: admitting up to model_streams (3) calls"]
    finally:
        await service.stop(0.2)
        relay.close()
        await server.stop(0)


async def test_pending_calls_per_client_are_limited_with_429() -> None:
    server, model, port = await start_fake_model()
    _directory, relay, service = await _rig(f"127.0.0.1:{port}", max_pending_per_client=2)
    manager = service.manager
    try:
        offer = await _offer()
        for _ in range(2):
            await manager.create(offer, client="fuzzer")
        with pytest.raises(TooManyPending) as refused:
            await manager.create(offer, client="fuzzer")
        assert refused.value.status == 429
        assert isinstance(refused.value, CallError)
        assert refused.value.message == "too many calls not connected yet for this client: 2"
        assert len(manager.calls) == 2
        # Another identity is not affected; without auth ("") there is no per-client limit.
        await manager.create(offer, client="someone-else")
        for _ in range(3):
            await manager.create(offer)
        assert manager.pending("fuzzer") == 2
        assert manager.pending("") == 3
        # Closing a pending call gives its client the slot back.
        first = next(c for c in manager.calls.values() if c.client == "fuzzer")
        await manager.end(first.id)
        await manager.create(offer, client="fuzzer")
        assert model.streams == 0
    finally:
        await service.stop(0.2)
        relay.close()
        await server.stop(0)


async def test_nat_rebinding_moves_media_without_a_restart(monkeypatch) -> None:
    """The client's flow gets a new relay-side port mid-call (its NAT rebinds);
    the client does nothing but its consent checks (no PATCH, no USE-CANDIDATE)."""
    import aioice.ice

    from tests.unit.fake_model import TRANSCRIPT, tone

    # The client is stock aioice: it checks consent every CONSENT_INTERVAL s.
    # Browsers check every 2.5 s; 1 s keeps this test short.
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 1)
    server, _model, port = await start_fake_model()
    _directory, relay, service = await _rig(f"127.0.0.1:{port}")
    try:
        async with CallClient(service.url, "secret", 20) as client:
            call = service.manager.get(client.call_id)
            conn = call.routed.primary()
            await client.wait_event("model", state="connected")
            before = conn.nominated_remote()
            relay.rebind()
            rebound = time.monotonic()
            await until_async(lambda: conn.nominated_remote() not in (None, before),
                              timeout=5, what="media to move to the new address")
            heard = len(client.reply)
            await until_async(lambda: len(client.reply) > heard + 640 * 10, timeout=5,
                              what="reply audio to reach the client again")
            assert time.monotonic() - rebound < 2.0 + 1.2  # one client check interval
            assert conn.rebinds == 1
            assert call.status()["remote"] == list(conn.nominated_remote())
            assert service.manager.get(client.call_id) is call
            assert relay.counters["new_flow"] == 2
            await client.say_and_wait_reply(tone(800, 300.0))
            assert client.result().transcript.endswith(TRANSCRIPT)
            assert client.pc.connectionState == "connected"
    finally:
        await service.stop(0.2)
        relay.close()
        await server.stop(0)


@contextlib.asynccontextmanager
async def _consent_call(consent_timeout: float):
    """One call through the loopback relay, checking consent every 0.3 s with
    ``consent_timeout``; yields (relay, service, call, its connection) once the
    consent checks have started."""
    server, _model, port = await start_fake_model()
    _directory, relay, service = await _rig(f"127.0.0.1:{port}", consent_interval=0.3,
                                           consent_timeout=consent_timeout)
    try:
        async with CallClient(service.url, "secret", 20) as client:
            call = service.manager.get(client.call_id)
            conn = call.routed.primary()
            await until_async(lambda: conn.consent_fresh_at > 0, timeout=5,
                              what="consent checks to start")
            yield relay, service, call, conn
    finally:
        await service.stop(0.2)
        relay.close()
        await server.stop(0)


async def test_consent_expires_consent_timeout_after_the_last_response() -> None:
    """RFC 7675: the call closes consent_timeout s after the last authenticated
    consent response, not after a count of failed checks (scaled down here:
    2 s; tests/netns/test_robust.py measures the real 30 s)."""
    consent_timeout = 2.0
    loop = asyncio.get_running_loop()
    async with _consent_call(consent_timeout) as (relay, service, call, conn):
        first = conn.consent_fresh_at
        await until_async(lambda: conn.consent_fresh_at > first, timeout=5,
                          what="a consent response")
        relay.blocked = True  # the client's network goes away, both ways
        await asyncio.wait_for(call.closed.wait(), consent_timeout + 5)
        closed_after = loop.time() - conn.consent_fresh_at
        assert consent_timeout <= closed_after < consent_timeout + 0.3, closed_after
        assert "consent" in call.close_reason or "failed" in call.close_reason
        assert service.manager.calls == {}


async def test_calls_connecting_beyond_the_models_streams_are_closed_not_left_mute() -> None:
    """Two calls admitted while the model had a free stream both connect; only
    one gets it, the other is told so and closed (never a call without a model)."""
    from lab.client import CallFailed

    server, model, port = await start_fake_model()
    _directory, relay, service = await _rig(f"127.0.0.1:{port}", model_streams=1)
    manager = service.manager
    clients = [CallClient(service.url, "secret", 20) for _ in range(2)]

    async def place(client: CallClient) -> str:
        try:
            await client.__aenter__()
        except CallFailed as exc:  # the other call's ICE connected first: refused at POST
            return str(exc)
        return "connected"

    try:
        outcomes = await asyncio.gather(*(place(c) for c in clients))
        assert outcomes.count("connected") >= 1, outcomes
        await until_async(lambda: manager.model_streams_in_use == 1 and len(manager.calls) == 1,
                          timeout=10, what="one call with the model, the other gone")
        [kept] = manager.calls.values()
        assert kept.link is not None
        assert model.streams == 1
        for client, outcome in zip(clients, outcomes, strict=True):
            if client.call_id == kept.id:
                continue
            if outcome == "connected":
                event = await client.wait_event("error", code="model_at_capacity")
                assert "no more calls" in event["message"]
            else:
                assert outcome.startswith("POST /v1/calls: 503"), outcome
    finally:
        for client in clients:
            await client.close()
        await service.stop(0.2)
        relay.close()
        await server.stop(0)


async def test_a_failing_or_hanging_teardown_step_does_not_stop_the_others() -> None:
    server, model, port = await start_fake_model()
    directory, relay, service = await _rig(f"127.0.0.1:{port}")
    manager = service.manager
    low, high = free_port_range()
    try:
        async with CallClient(service.url, "secret", 20) as client:
            await client.wait_event("model", state="connected")
            call = manager.get(client.call_id)

            real_stop = call.track.stop

            def broken_stop() -> None:
                # Only the call's teardown meets the failure: aiortc's RTP task
                # also stops the track when it ends, outside its own try, and
                # a raise there would leave its sender's stop() waiting forever
                # for an exit event (the test's cleanup then hung, 1 run in 4).
                call.track.stop = real_stop
                raise RuntimeError("track refuses to stop")

            async def hanging_close() -> None:
                await asyncio.Event().wait()

            call.track.stop = broken_stop
            call.pc.close = hanging_close
            started = time.monotonic()
            assert await client.hangup() == 204
            assert time.monotonic() - started < DELETE_SECONDS
            assert len(call.teardown_errors) == 2, call.teardown_errors
            assert "reply track" in call.teardown_errors[0]
            assert "closing the peer connection: not done in" in call.teardown_errors[1]
            # Everything after the broken steps still happened.
            assert call.closed.is_set() and manager.calls == {}
            assert not manager.settings.ports.in_use
            assert open_udp_ports(low, high) == []
            await until_async(lambda: directory.session_ids() == set(), timeout=5,
                              what="the session record to go")
            await until_async(lambda: model.streams == 1 and manager.model_streams_in_use == 0,
                              timeout=5, what="the model slot to be given back")
            await call.close("again")  # idempotent: returns at once
            assert call.close_reason == "ended by DELETE"
            # Undo the sabotage and close what it kept open, so that nothing
            # of this call is left to the garbage collector.
            del call.track.stop, call.pc.close
            call.track.stop()
            await call.pc.close()
    finally:
        await service.stop(0.2)
        relay.close()
        await server.stop(0)


async def test_consent_holds_for_a_caller_whose_answers_come_late() -> None:
    """RFC 7675: any authenticated answer refreshes consent, however late. A
    caller behind a deep uplink buffer (here every datagram of its flow waits
    1 s, twice the STUN RTO) answers each check after its first send: the
    call must live on past consent_timeout, not end because every check
    "failed" at 0.5 s."""
    consent_timeout = 2.0
    loop = asyncio.get_running_loop()
    async with _consent_call(consent_timeout) as (relay, service, call, conn):
        relay.delay = 1.0
        slowed = loop.time()
        await asyncio.sleep(3 * consent_timeout)
        assert not call.closed.is_set(), call.close_reason
        # Consent was refreshed by late answers (1 s + the interval at most).
        assert conn.consent_fresh_at > slowed + 1.0
        assert loop.time() - conn.consent_fresh_at < consent_timeout
        assert service.manager.get(call.id) is call
        relay.blocked = True  # and a caller that stops answering still loses it
        await asyncio.wait_for(call.closed.wait(), consent_timeout + 5)
        assert "consent" in call.close_reason or "failed" in call.close_reason


async def test_signaling_accept_queue_holds_a_burst_of_callers() -> None:
    """The signaling socket listens with LISTEN_BACKLOG (aiohttp's default of 128
    would drop the SYNs of a burst of callers beyond it): the kernel's own
    view of the listening socket (ss: Send-Q is the backlog) says so."""
    import subprocess
    from pathlib import Path

    from transceiver import LISTEN_BACKLOG

    def listening(port: str) -> list[str]:
        return subprocess.run(["ss", "-Hltn", f"sport = :{port}"], check=True,
                              capture_output=True, text=True, timeout=10).stdout.split()

    server, _model, port = await start_fake_model()
    _directory, relay, service = await _rig(f"127.0.0.1:{port}")
    try:
        listen_port = service.url.rsplit(":", 1)[1].split("/")[0]
        out = await asyncio.to_thread(listening, listen_port)
        cap = int(Path("/proc/sys/net/core/somaxconn").read_text())
        assert out[0] == "LISTEN", out
        assert int(out[2]) == min(LISTEN_BACKLOG, cap) > 128, out
    finally:
        await service.stop(0.2)
        relay.close()
        await server.stop(0)
