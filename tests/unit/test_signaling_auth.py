# SPDX-License-Identifier: Apache-2.0
"""Who may call signaling (transceiver/auth.py, applied by signaling.py).

API keys for backends only, ephemeral client secrets for browsers, web
origins, call ownership, and the operator's drain: each refusal is a JSON
error with a clear message, and allocates nothing (no call, port, session).
"""

from __future__ import annotations

import aiohttp
import pytest

from lab.client import CallClient
from tests.unit.fake_model import start_fake_model
from tests.unit.transceiver_harness import (
    LoopbackRelay,
    free_port_range,
    open_udp_ports,
    start_transceiver,
)
from transceiver.auth import Authenticator, AuthError
from voxrelay.directory.memory import MemoryDirectory

pytestmark = pytest.mark.timeout(120)

API_KEY = "secret"  # the harness's key
PAGE = "https://app.example.com"


@pytest.fixture
async def rig():
    directory = MemoryDirectory()
    ring = await directory.ensure_keyring()
    relay = LoopbackRelay(ring.active_keys())
    relay_addr = await relay.start()
    server, _, model_port = await start_fake_model()
    service = await start_transceiver(directory, [relay_addr], f"127.0.0.1:{model_port}",
                                      cors_origins=[PAGE])
    rig = type("Rig", (), {})()
    rig.directory, rig.service = directory, service
    yield rig
    await service.stop(0.2)
    relay.close()
    await server.stop(0)


async def _request(method: str, url: str, *, body: object = None, **headers: str):
    data = body if isinstance(body, str) else None
    json_body = None if isinstance(body, str) or body is None else body
    async with aiohttp.ClientSession() as session, session.request(
            method, url, data=data, json=json_body, headers=headers) as r:
        try:
            payload = await r.json(content_type=None)
        except ValueError:
            payload = None
        return r.status, r.headers, payload


async def _mint(url: str, **body: object) -> dict:
    status, _, payload = await _request("POST", url + "/v1/realtime/client_secrets", body=body,
                                        Authorization=f"Bearer {API_KEY}")
    assert status == 200, payload
    return payload


async def _offer() -> tuple[CallClient, str]:
    client = CallClient("http://unused", API_KEY, 15)
    await client.pc.setLocalDescription(await client.pc.createOffer())
    return client, client.pc.localDescription.sdp


def _assert_nothing_allocated(rig, low_high) -> None:
    assert rig.service.manager.calls == {} and rig.service.manager.load == 0
    assert open_udp_ports(*low_high) == []
    assert rig.directory.session_ids() == set()


def test_client_secret_round_trip_and_refusals():
    now = [1_000_000.0]
    auth = Authenticator(["k" * 32, "old-key-" * 4], clock=lambda: now[0], default_ttl=60)
    secret = auth.mint()
    assert secret.value.startswith("ek_") and secret.expires_at == 1_000_060
    cred = auth.authenticate(f"Bearer {secret.value}")
    assert cred.kind == "client_secret" and cred.identity == secret.identity
    # Minted under the old key of a rotation: still valid while that key is listed.
    old = Authenticator(["old-key-" * 4], clock=lambda: now[0]).mint()
    assert auth.authenticate(f"Bearer {old.value}").kind == "client_secret"
    tampered = secret.value[:-2] + ("AA" if not secret.value.endswith("AA") else "BB")
    for header, code in [(f"Bearer {tampered}", "bad_credential"),
                         ("Bearer ek_!!", "bad_credential"),
                         ("Bearer ek_AAAA", "bad_credential"),
                         (f"Bearer {Authenticator(['x' * 32]).mint().value}", "bad_credential")]:
        with pytest.raises(AuthError) as exc:
            auth.authenticate(header)
        assert (exc.value.status, exc.value.code) == (401, code)
    now[0] += 61
    with pytest.raises(AuthError, match="expired at 1000060") as exc:
        auth.authenticate(f"Bearer {secret.value}")
    assert exc.value.code == "expired_credential"
    with pytest.raises(AuthError, match=r"within 10\.\.7200"):
        auth.mint(5)


async def test_a_browser_calls_with_a_client_secret_not_the_api_key(rig) -> None:
    url = rig.service.url
    secret = await _mint(url, expires_after={"seconds": 120})
    client, sdp = await _offer()
    try:
        low_high = free_port_range()
        status, _, payload = await _request(
            "POST", url + "/v1/calls", body=sdp, Origin=PAGE,
            **{"Content-Type": "application/sdp", "Authorization": f"Bearer {API_KEY}"})
        assert status == 403 and payload["error"]["code"] == "api_key_from_browser"
        _assert_nothing_allocated(rig, low_high)
        status, headers, _ = await _request(
            "POST", url + "/v1/realtime/calls", body=sdp, Origin=PAGE,
            **{"Content-Type": "application/sdp", "Authorization": f"Bearer {secret['value']}"})
        assert status == 201
        assert headers["Access-Control-Allow-Origin"] == PAGE
        assert "Location" in headers["Access-Control-Expose-Headers"]
        location = headers["Location"]
    finally:
        await client.close()
    # Another client's secret does not reach this call; the owner's does.
    other = await _mint(url)
    status, _, payload = await _request("DELETE", url + location, Origin=PAGE,
                                        Authorization=f"Bearer {other['value']}")
    assert status == 404 and payload["error"]["code"] == "not_found"
    assert len(rig.service.manager.calls) == 1
    status, _, _ = await _request("DELETE", url + location, Origin=PAGE,
                                  Authorization=f"Bearer {secret['value']}")
    assert status == 204


async def test_cors_preflight_and_foreign_origins(rig) -> None:
    url = rig.service.url
    status, headers, _ = await _request(
        "OPTIONS", url + "/v1/calls", Origin=PAGE, **{
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == PAGE
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    low_high = free_port_range()
    secret = await _mint(url)
    client, sdp = await _offer()
    try:
        for method in ("OPTIONS", "POST"):
            status, headers, payload = await _request(
                method, url + "/v1/calls", body=sdp, Origin="https://evil.example", **{
                    "Content-Type": "application/sdp",
                    "Authorization": f"Bearer {secret['value']}"})
            assert status == 403 and payload["error"]["code"] == "origin_not_allowed"
            assert "Access-Control-Allow-Origin" not in headers
    finally:
        await client.close()
    _assert_nothing_allocated(rig, low_high)


async def test_client_secrets_are_minted_by_backends_only(rig) -> None:
    url = rig.service.url + "/v1/realtime/client_secrets"
    status, _, payload = await _request("POST", url, Origin=PAGE,
                                        Authorization=f"Bearer {API_KEY}")
    assert status == 403 and payload["error"]["code"] == "not_for_browsers"
    secret = await _mint(rig.service.url)
    status, _, payload = await _request("POST", url, Authorization=f"Bearer {secret['value']}")
    assert status == 403 and payload["error"]["code"] == "api_key_required"
    status, headers, payload = await _request("POST", url)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    for body in ({"expires_after": {"seconds": 1}}, {"expires_after": {"seconds": "x"}},
                 {"expires_after": 5}):
        status, _, payload = await _request("POST", url, body=body,
                                            Authorization=f"Bearer {API_KEY}")
        assert status == 400, body


async def test_operator_drain_turns_new_calls_away_with_retry_after(rig) -> None:
    url = rig.service.url
    await rig.directory.drain(7)
    # The next heartbeat (0.2 s in the harness) brings the directory's word.
    from tests.support import until_async

    await until_async(lambda: rig.service.operator_status == "draining", timeout=5,
                      what="the heartbeat reports the drain")
    low_high = free_port_range()
    client, sdp = await _offer()
    try:
        status, headers, payload = await _request(
            "POST", url + "/v1/calls", body=sdp,
            **{"Content-Type": "application/sdp", "Authorization": f"Bearer {API_KEY}"})
    finally:
        await client.close()
    assert status == 503 and headers["Retry-After"] == "5"
    assert payload["error"]["message"] == "transceiver is draining by the operator: no new calls here"
    _assert_nothing_allocated(rig, low_high)
    _, _, health = await _request("GET", url + "/healthz")
    assert health["draining"] is True and health["operator"] == "draining"
    await rig.directory.undrain(7)
    await until_async(lambda: rig.service.operator_status == "active", timeout=5,
                      what="the heartbeat reports the undrain")


async def test_aiohttp_errors_are_json_too(rig) -> None:
    status, headers, payload = await _request("PUT", rig.service.url + "/v1/calls")
    assert status == 405 and payload["error"]["code"] == "method_not_allowed"
    assert "POST" in headers["Allow"]
    status, _, payload = await _request("GET", rig.service.url + "/v1/nothing")
    assert status == 404 and payload["error"]["code"] == "not_found"
