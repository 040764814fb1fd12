# SPDX-License-Identifier: Apache-2.0
"""The directory's credential and the operator's intents, on every backend.

The HTTP API refuses a missing or wrong secret with 401 before it reads the
body, and the refusal changes nothing; Redis refuses a client without its
password as ``DirectoryAuthError``. An intent (drain, remove) outlives the
transceiver's re-announces and a restart of the store that holds it.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from lab.redis_server import RedisServer
from tests.support import DIRECTORY_SECRET
from voxrelay.directory import DirectoryAuthError, TransceiverRecord, connect
from voxrelay.directory.http import make_app
from voxrelay.directory.memory import MemoryDirectory

REC = TransceiverRecord(7, "10.0.1.7", 3479)


@pytest.fixture
async def served(tmp_path):
    store = MemoryDirectory(grace=10.0, intents_path=tmp_path / "intents.json")
    await store.ensure_keyring()
    refused: list[str] = []
    app = make_app(store, [DIRECTORY_SECRET, "the-previous-secret-still-valid"],
                   on_refused=refused.append)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    try:
        yield store, url, refused
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("header", [None, "Bearer wrong-secret-0123456789", "Basic abc",
                                    f"Bearer {DIRECTORY_SECRET}x"])
@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/keys", None),
    ("POST", "/v1/keys/rotate", None),
    ("POST", "/v1/transceivers", {"id": 9, "address": "198.51.100.9", "probe_port": 3479}),
    ("PUT", "/v1/intents/7", {"intent": None}),
    ("DELETE", "/v1/transceivers/7", None),
    ("GET", "/v1/transceivers", None),
])
async def test_without_the_secret_every_request_is_401_and_changes_nothing(
        served, header, method, path, body):
    store, url, refused = served
    await store.announce(REC)
    await store.set_intent(7, "draining")
    before = (await store.snapshot(), await store.intents())
    headers = {} if header is None else {"Authorization": header}
    async with aiohttp.ClientSession() as session, session.request(
            method, url + path, json=body, headers=headers) as response:
        text = await response.text()
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # No key material in the refusal, and nothing changed.
    for key in (await store.keyring()).keys.values():
        assert key.hex() not in text
    after = (await store.snapshot(), await store.intents())
    assert after[0].keyring == before[0].keyring and after[1] == before[1]
    assert set(after[0].transceivers) == set(before[0].transceivers) == {7}
    assert refused == ["missing" if header is None else "wrong"]


async def test_both_secrets_of_a_rotation_are_accepted(served):
    store, url, _ = served
    for secret in (DIRECTORY_SECRET, "the-previous-secret-still-valid"):
        client = connect(url, secret=secret)
        try:
            assert (await client.keyring()).current is not None
        finally:
            await client.close()
    wrong = connect(url, secret="not-the-secret-0123456789")  # noqa: S106 - a wrong one
    try:
        with pytest.raises(DirectoryAuthError, match="refused us: wrong directory secret"):
            await wrong.announce(REC)
    finally:
        await wrong.close()
    assert 7 not in (await store.snapshot()).transceivers


async def _intents_contract(directory) -> None:
    await directory.announce(REC)
    assert (await directory.drain(7)).status == "draining"
    # The transceiver re-announces itself active: the operator's drain stays.
    assert (await directory.announce(REC.with_(status="active"))).status == "draining"
    assert (await directory.heartbeat(7, 3)).status == "draining"
    assert (await directory.snapshot()).transceivers[7].status == "draining"
    assert await directory.intents() == {7: "draining"}
    assert (await directory.undrain(7)).status == "active"
    assert await directory.intents() == {}
    # Removed: out of every read the sync does, even while it keeps announcing.
    assert await directory.evict(7) is True
    answer = await directory.announce(REC)
    assert answer.status == "removed"
    assert 7 not in (await directory.snapshot()).transceivers
    assert await directory.get_transceiver(7) is None
    assert (await directory.undrain(7)).status == "active"
    assert 7 in (await directory.snapshot()).transceivers
    # Its own drain at shutdown is not an operator intent.
    await directory.set_status(7, "draining")
    assert await directory.intents() == {}
    with pytest.raises(ValueError, match="own status 'removed'"):
        await directory.set_status(7, "removed")
    with pytest.raises(ValueError, match="intent 'paused' is not one of"):
        await directory.set_intent(7, "paused")


async def test_memory_intents_outlive_a_restart(tmp_path):
    path = tmp_path / "state" / "intents.json"
    store = MemoryDirectory(intents_path=path)
    await _intents_contract(store)
    await store.drain(7)
    await store.evict(8)
    # A new store on the same file: what an orchestrator restart is.
    again = MemoryDirectory(intents_path=path)
    assert await again.intents() == {7: "draining", 8: "removed"}
    assert (await again.announce(REC)).status == "draining"
    assert (await again.announce(TransceiverRecord(8, "10.0.1.8", 3479))).status == "removed"
    assert set((await again.snapshot()).transceivers) == {7}


def test_a_corrupt_intents_file_is_an_error_not_an_empty_list(tmp_path):
    path = tmp_path / "intents.json"
    path.write_text('{"intents": {"7": "maybe"}}')
    with pytest.raises(ValueError, match=r"intents file .* intent 'maybe' is not one of"):
        MemoryDirectory(intents_path=path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read"):
        MemoryDirectory(intents_path=path)


async def test_http_intents_contract(served):
    _, url, _ = served
    client = connect(url, secret=DIRECTORY_SECRET)
    try:
        await _intents_contract(client)
    finally:
        await client.close()


async def test_redis_intents_and_password(tmp_path):
    if not RedisServer.available():
        pytest.fail("redis-server is not installed; scripts/setup.sh installs it")
    with RedisServer(tmp_path, password=DIRECTORY_SECRET) as server:
        anonymous = connect(server.url)
        try:
            with pytest.raises(DirectoryAuthError, match="(refused our credential|wants a credential)"):
                await anonymous.snapshot()
        finally:
            await anonymous.close()
        directory = connect(server.url, secret=DIRECTORY_SECRET)
        try:
            await _intents_contract(directory)
            await directory.drain(7)
        finally:
            await directory.close()
        server.restart()
        again = connect(server.url, secret=DIRECTORY_SECRET)
        try:
            assert await again.intents() == {7: "draining"}
        finally:
            await again.close()


def _tls_files(tmp_path):
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl)."""
    import subprocess

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True,
                       timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=voxrelay-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
        "-subj", "/CN=127.0.0.1")
    (tmp_path / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "srv.pem", "-days", "1", "-extfile", "ext")
    return tmp_path / "ca.pem", tmp_path / "srv.pem", tmp_path / "srv.key"


async def test_redis_over_tls_checks_the_server_certificate(tmp_path):
    """The documented TLS form works (rediss:// with ssl_ca_certs), and a server
    whose certificate is not trusted is refused, not used."""
    import shutil
    import socket
    import subprocess

    from voxrelay.directory import DirectoryUnavailable

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed; scripts/setup.sh installs it")
    ca, cert, key = _tls_files(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(  # noqa: ASYNC220 - a server for the test, started once
        [exe, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--requirepass", DIRECTORY_SECRET, "--save", "",
         "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"rediss://127.0.0.1:{port}/0"
        trusted = connect(f"{url}?ssl_ca_certs={ca}", secret=DIRECTORY_SECRET)
        try:
            for _ in range(100):  # until the server listens
                try:
                    await trusted.set_intent(3, "draining")
                    break
                except DirectoryUnavailable:
                    await asyncio.sleep(0.05)
            assert await trusted.intents() == {3: "draining"}
        finally:
            await trusted.close()
        untrusted = connect(url, secret=DIRECTORY_SECRET)
        try:
            with pytest.raises(DirectoryUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusted.intents()
        finally:
            await untrusted.close()
    finally:
        proc.terminate()
        proc.wait(10)
