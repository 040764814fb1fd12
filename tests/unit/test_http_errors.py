# SPDX-License-Identifier: Apache-2.0
"""Every HTTP error of every voxrelay server is JSON with a reason (issue 17).

One table of error cases per server, walked against the real aiohttp apps:
the transceiver's signaling (``{"error": {"code", "message"}}``), the
embedded directory API and the orchestrator's metrics endpoint (both
``{"error": "..."}``). Each case asserts the status, a JSON Content-Type and a
reason that says what went wrong; aiohttp's own errors (no route, wrong
method, body too large) and a handler's crash are in the table, since those
are the ones aiohttp answers in text/plain unless told otherwise.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from orchestrator.metrics import OrchestratorMetrics
from orchestrator.service import make_metrics_app
from tests.unit.fake_model import start_fake_model
from tests.unit.transceiver_harness import LoopbackRelay, start_transceiver
from voxrelay.directory.http import make_app as make_directory_app
from voxrelay.directory.memory import MemoryDirectory

pytestmark = pytest.mark.timeout(120)

SECRET = "directory-secret"  # noqa: S105 - a test value
API_KEY = "secret"  # the transceiver harness's key
BIG = "x" * (200 * 1024)  # above both apps' client_max_size (64 KiB, 128 KiB)


async def fetch(method: str, url: str, *, data: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as session, session.request(
            method, url, data=data, headers=headers or {}) as response:
        text = await response.text()
        try:
            payload = await response.json(content_type=None)
        except ValueError:
            payload = text
        return response.status, response.content_type, payload


def reason_of(payload: Any) -> str:
    """The reason, in either of the two shapes; "" when there is none."""
    if not isinstance(payload, dict):
        return ""
    error = payload.get("error")
    if isinstance(error, dict):
        return f"{error.get('code', '')}: {error.get('message', '')}" if error.get("code") else ""
    return error if isinstance(error, str) else ""


class CrashingDirectory(MemoryDirectory):
    async def snapshot(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("the store fell over")


DIRECTORY_CASES = [
    # (method, path, body, with the secret, status, words the reason must hold)
    ("GET", "/v1/transceivers", None, False, 401, "missing"),
    ("GET", "/v1/nothing", None, True, 404, "GET /v1/nothing: Not Found"),
    ("PUT", "/v1/transceivers", "{}", True, 405, "PUT /v1/transceivers: Method Not Allowed"),
    ("POST", "/v1/transceivers", BIG, True, 413, "Request Entity Too Large"),
    ("POST", "/v1/transceivers", "{not json", True, 400, ""),
    ("GET", "/v1/transceivers/12345", None, True, 404, "12345"),
    ("GET", "/v1/transceivers/abc", None, True, 400, "abc"),
]


@pytest.mark.parametrize("method, path, body, authed, status, words", DIRECTORY_CASES)
async def test_directory_errors_are_json(method, path, body, authed, status, words) -> None:
    async with TestServer(make_directory_app(MemoryDirectory(), [SECRET])) as server:
        headers = {"Authorization": f"Bearer {SECRET}"} if authed else {}
        got, ctype, payload = await fetch(method, str(server.make_url(path)), data=body,
                                          headers={**headers, "Content-Type": "application/json"})
    assert (got, ctype) == (status, "application/json"), payload
    assert reason_of(payload) and words in reason_of(payload), payload


async def test_directory_crash_is_a_json_500() -> None:
    async with TestServer(make_directory_app(CrashingDirectory(), [SECRET])) as server:
        got, ctype, payload = await fetch("GET", str(server.make_url("/v1/transceivers")),
                                          headers={"Authorization": f"Bearer {SECRET}"})
    assert (got, ctype) == (500, "application/json"), payload
    assert "RuntimeError: the store fell over" in reason_of(payload)


@pytest.mark.parametrize("method, path, status, words", [
    ("GET", "/nothing", 404, "GET /nothing: Not Found"),
    ("POST", "/metrics", 405, "POST /metrics: Method Not Allowed"),
])
async def test_metrics_errors_are_json(method, path, status, words) -> None:
    async with TestServer(make_metrics_app(OrchestratorMetrics())) as server:
        got, ctype, payload = await fetch(method, str(server.make_url(path)))
        ok_status, ok_type, _ = await fetch("GET", str(server.make_url("/metrics")))
    assert (got, ctype) == (status, "application/json"), payload
    assert words in reason_of(payload), payload
    assert (ok_status, ok_type) == (200, "text/plain")  # the endpoint itself is Prometheus text


@pytest.fixture
async def signaling():
    directory = MemoryDirectory()
    ring = await directory.ensure_keyring()
    relay = LoopbackRelay(ring.active_keys())
    relay_addr = await relay.start()
    server, _, model_port = await start_fake_model()
    service = await start_transceiver(directory, [relay_addr], f"127.0.0.1:{model_port}")
    yield service.url
    await service.stop(0.2)
    relay.close()
    await server.stop(0)


SIGNALING_CASES = [
    # (method, path, body, headers, status, error code)
    ("GET", "/v1/nothing", None, {}, 404, "not_found"),
    ("PUT", "/v1/calls", None, {}, 405, "method_not_allowed"),
    ("POST", "/v1/calls", "v=0", {"Content-Type": "application/sdp"}, 401, ""),
    ("POST", "/v1/calls", "v=0", {"Content-Type": "text/plain", "Authorization": "Bearer secret"},
     415, "unsupported_media_type"),
    ("POST", "/v1/calls", "not sdp", {"Content-Type": "application/sdp",
                                      "Authorization": "Bearer secret"}, 400, ""),
    ("POST", "/v1/calls", BIG, {"Content-Type": "application/sdp",
                                "Authorization": "Bearer secret"}, 413, "request_entity_too_large"),
    ("DELETE", "/v1/calls/nosuchcall", None, {"Authorization": "Bearer secret"}, 404, ""),
    ("POST", "/v1/realtime/client_secrets", "{", {"Content-Type": "application/json",
                                                 "Authorization": "Bearer secret"}, 400, ""),
]


async def test_signaling_errors_are_json(signaling) -> None:
    for method, path, body, headers, status, code in SIGNALING_CASES:
        got, ctype, payload = await fetch(method, signaling + path, data=body, headers=headers)
        case = f"{method} {path} -> {got} {payload}"
        assert (got, ctype) == (status, "application/json"), case
        reason = reason_of(payload)
        assert reason and reason.split(":", 1)[1].strip(), case  # a code and a message
        assert reason.startswith(code), case
