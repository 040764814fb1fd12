# SPDX-License-Identifier: Apache-2.0
"""The embedded directory over HTTP: what a transceiver sees, errors included."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from tests.support import DIRECTORY_SECRET
from voxrelay.directory import (
    DirectoryUnavailable,
    TransceiverRecord,
    UnknownTransceiver,
    connect,
)
from voxrelay.directory.http import HttpDirectory, make_app
from voxrelay.directory.memory import MemoryDirectory
from voxrelay.directory.redis import RedisDirectory


@pytest.fixture
async def served():
    store = MemoryDirectory(grace=10.0)
    runner = web.AppRunner(make_app(store, [DIRECTORY_SECRET]))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    client = connect(f"http://127.0.0.1:{port}", secret=DIRECTORY_SECRET)
    try:
        yield store, client
    finally:
        await client.close()
        await runner.cleanup()


async def _contract(c) -> None:
    rec = await c.announce(TransceiverRecord(7, "10.0.1.7", 3479))
    assert rec.last_heartbeat > 0 and rec.announced_at == rec.last_heartbeat
    beat = await c.heartbeat(7, load=3)
    assert beat.load == 3 and beat.last_heartbeat >= rec.last_heartbeat
    assert (await c.drain(7)).status == "draining"
    assert (await c.heartbeat(7, load=1)).status == "draining"  # heartbeat keeps the drain
    assert (await c.undrain(7)).status == "active"
    assert (await c.get_transceiver(7)).address == "10.0.1.7"
    snap = await c.snapshot()
    assert list(snap.transceivers) == [7]
    await c.put_session("call-1", {"port": 40000, "ufrag": "abc"}, ttl=30)
    assert await c.get_session("call-1") == {"port": 40000, "ufrag": "abc"}
    assert await c.delete_session("call-1") is True
    assert await c.get_session("call-1") is None
    await c.put_session("short", {"a": 1}, ttl=0.05)
    await asyncio.sleep(0.15)
    assert await c.get_session("short") is None
    assert await c.remove(7) is True
    assert await c.remove(7) is False
    with pytest.raises(UnknownTransceiver) as exc:
        await c.heartbeat(7)
    assert str(exc.value) == "transceiver 7 is not in the directory (announce it first)"
    with pytest.raises(ValueError, match="^session id 'a/b' must be 1..256 characters"):
        await c.put_session("a/b", {}, ttl=1)


async def test_http_client_contract(served):
    store, c = served
    await store.ensure_keyring()
    await _contract(c)
    ring = await c.keyring()
    assert ring == await store.keyring()
    rotated = await c.rotate_keys()
    assert rotated.current != ring.current and ring.current in rotated.active


async def test_redis_client_contract(redis_server):
    c = connect(redis_server.url, prefix="c:")
    assert isinstance(c, RedisDirectory)
    try:
        await _contract(c)
    finally:
        await c.close()


async def test_http_rejects_bad_records_with_the_validator_message(served):
    store, c = served
    for body, message in [
        ({"id": 1, "address": "10.0.0.1", "probe_port": 0}, "transceiver probe_port must not be 0"),
        ({"id": 1, "address": "nope", "probe_port": 1}, "transceiver address 'nope' is not an IP address"),
        ({"id": 1, "address": "10.0.0.1", "probe_port": 1, "status": "x"},
         "transceiver status 'x' is not one of: active, draining, removed"),
    ]:
        with pytest.raises(ValueError) as exc:
            await c._call("POST", "/v1/transceivers", body)  # raw body: no client-side check
        assert str(exc.value) == message
    assert (await store.snapshot()).transceivers == {}
    with pytest.raises(ValueError, match="^transceiver id 'abc' is not an integer$"):
        await c._call("POST", "/v1/transceivers/abc/heartbeat", {})


async def test_unreachable_directory_is_directory_unavailable():
    c = HttpDirectory("http://127.0.0.1:9", timeout=1.0)
    try:
        with pytest.raises(DirectoryUnavailable, match="^directory http://127.0.0.1:9 is unreachable"):
            await c.heartbeat(1)
    finally:
        await c.close()


def test_connect_picks_backend_by_url():
    assert isinstance(connect("http://127.0.0.1:7480"), HttpDirectory)
    from voxrelay.directory.memory import MemoryDirectory

    memory = connect("memory", grace=3.0)
    assert isinstance(memory, MemoryDirectory) and memory.grace == 3.0
    with pytest.raises(ValueError, match="^directory URL 'etcd://x' must be 'memory' or start "
                                         "with http://"):
        connect("etcd://x")



async def test_an_unreachable_remote_directory_names_the_listen_setting():
    import aiohttp

    class Refusing:
        def request(self, *args, **kwargs):
            raise aiohttp.ClientConnectionError("Connection refused")

        async def close(self):
            pass

    remote = HttpDirectory("http://10.0.0.1:7480", timeout=1.0)
    remote._session = Refusing()  # no packet leaves: the refusal is what a remote host sees
    with pytest.raises(DirectoryUnavailable) as exc:
        await remote.heartbeat(1)
    assert str(exc.value).startswith("directory http://10.0.0.1:7480 is unreachable: Connection refused")
    assert "set listen to the relay's private address" in str(exc.value)
    local = HttpDirectory("http://127.0.0.1:9", timeout=1.0)
    try:
        with pytest.raises(DirectoryUnavailable) as exc:
            await local.heartbeat(1)
        assert "listen" not in str(exc.value)  # on its own host the hint would mislead
    finally:
        await local.close()
