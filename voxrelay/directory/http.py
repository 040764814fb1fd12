# SPDX-License-Identifier: Apache-2.0
"""The embedded directory's HTTP API, and the client transceivers use for it.

Served by ``voxrelay orchestrator run`` on the private side
(``[orchestrator] listen``). JSON in, JSON out; a bad record is a 400 whose
``error`` is the validator's exact message, and the client raises it again as
``ValueError`` so that both ends see the same words.

Every request must carry ``Authorization: Bearer <directory secret>``
(``[orchestrator] directory_secret_file``); anything else is a 401 that
changes nothing, checked before the request body is read. The secret guards
the token keys (whoever holds them can mint routing tokens) and every write
(whoever can announce a transceiver chooses where the relay sends UDP).

    POST   /v1/transceivers                 announce (a TransceiverRecord)
    GET    /v1/transceivers                 every live transceiver
    GET    /v1/transceivers/{id}            one; 404 if absent, expired or removed
    POST   /v1/transceivers/{id}/heartbeat  {"load": n}; 404: announce again
    POST   /v1/transceivers/{id}/status     {"status": "draining"}: its own word
    DELETE /v1/transceivers/{id}            withdraw the record (intent stays)
    GET    /v1/intents                      the operator's intents {"<id>": "draining"}
    PUT    /v1/intents/{id}                 {"intent": "draining" | "removed" | null}
    GET    /v1/keys                         the keyring
    POST   /v1/keys/rotate
    PUT    /v1/sessions/{sid}               {"data": {...}, "ttl": seconds}
    GET    /v1/sessions/{sid}               404 if absent or expired
    DELETE /v1/sessions/{sid}
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from voxrelay.httperrors import json_errors
from voxrelay.secrets import matching_secret

from .base import (
    Change,
    ChangeFeed,
    Directory,
    DirectoryAuthError,
    DirectoryUnavailable,
    Snapshot,
    UnknownTransceiver,
    validate_intent,
)
from .records import (
    Keyring,
    TransceiverRecord,
    parse_keyring,
    parse_transceiver,
    validate_load,
    validate_self_status,
    validate_session_id,
    validate_transceiver_id,
)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _txr_id(request: web.Request) -> int:
    raw = request.match_info["txr_id"]
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"transceiver id {raw!r} is not an integer") from None
    return validate_transceiver_id(value)


def _without_stamps(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` without the times the directory stamps: a client cannot
    backdate itself, so the server drops them and the client does not send them."""
    return {k: v for k, v in body.items() if k not in ("last_heartbeat", "announced_at")}


async def _body(request: web.Request) -> Any:
    try:
        return await request.json()
    except json.JSONDecodeError as exc:
        raise ValueError(f"request body is not JSON: {exc.msg}") from None


def bearer_matches(header: str | None, secrets: Sequence[str]) -> str | None:
    """None if ``header`` is ``Bearer <one of secrets>``, else why not (for the 401)."""
    if not header:
        return "missing credential: send Authorization: Bearer <directory secret>"
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return "Authorization must be 'Bearer <directory secret>'"
    return None if matching_secret(value, secrets) is not None else "wrong directory secret"


def make_app(directory: Directory, secrets: Sequence[str],
             on_refused: Callable[[str], None] | None = None) -> web.Application:
    """An aiohttp app serving ``directory`` to holders of one of ``secrets``
    (the first in use, the rest still accepted during a rotation);
    ``on_refused(reason)`` counts refusals. The caller runs it."""
    if not secrets:
        raise ValueError("the directory API needs at least one secret")
    accepted = list(secrets)
    routes = web.RouteTableDef()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        problem = bearer_matches(request.headers.get("Authorization"), accepted)
        if problem is not None:
            if on_refused is not None:
                on_refused("missing" if problem.startswith("missing") else "wrong")
            return web.json_response({"error": problem}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="voxrelay"'})
        return await handler(request)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except UnknownTransceiver as exc:
            return _error(404, str(exc))
        except ValueError as exc:
            return _error(400, str(exc))

    @routes.post("/v1/transceivers")
    async def announce(request: web.Request) -> web.Response:
        body = await _body(request)
        if isinstance(body, dict):
            body = _without_stamps(body)
        record = await directory.announce(parse_transceiver(body))
        return web.json_response(record.to_json())

    @routes.get("/v1/transceivers")
    async def list_all(request: web.Request) -> web.Response:
        snap = await directory.snapshot()
        return web.json_response(
            {"transceivers": [r.to_json() for _, r in sorted(snap.transceivers.items())]}
        )

    @routes.get("/v1/transceivers/{txr_id}")
    async def get_one(request: web.Request) -> web.Response:
        txr_id = _txr_id(request)
        record = await directory.get_transceiver(txr_id)
        if record is None:
            raise UnknownTransceiver(txr_id)
        return web.json_response(record.to_json())

    @routes.post("/v1/transceivers/{txr_id}/heartbeat")
    async def heartbeat(request: web.Request) -> web.Response:
        body = await _body(request) if request.can_read_body else {}
        if not isinstance(body, dict):
            raise ValueError("heartbeat body must be a JSON object")
        load = validate_load(body.get("load", 0))
        return web.json_response((await directory.heartbeat(_txr_id(request), load)).to_json())

    @routes.post("/v1/transceivers/{txr_id}/status")
    async def set_status(request: web.Request) -> web.Response:
        body = await _body(request)
        if not isinstance(body, dict):
            raise ValueError('status body must be {"status": "active" | "draining"}')
        status = validate_self_status(body.get("status"))
        record = await directory.set_status(_txr_id(request), status)
        return web.json_response(record.to_json())

    @routes.get("/v1/intents")
    async def intents(request: web.Request) -> web.Response:
        found = await directory.intents()
        return web.json_response({"intents": {str(k): v for k, v in sorted(found.items())}})

    @routes.put("/v1/intents/{txr_id}")
    async def set_intent(request: web.Request) -> web.Response:
        body = await _body(request)
        if not isinstance(body, dict) or "intent" not in body:
            raise ValueError('intent body must be {"intent": "draining" | "removed" | null}')
        txr_id = _txr_id(request)
        intent = validate_intent(body["intent"])
        await directory.set_intent(txr_id, intent)
        return web.json_response({"id": txr_id, "intent": intent})

    @routes.delete("/v1/transceivers/{txr_id}")
    async def remove(request: web.Request) -> web.Response:
        return web.json_response({"removed": await directory.remove(_txr_id(request))})

    @routes.get("/v1/keys")
    async def keys(request: web.Request) -> web.Response:
        return web.json_response((await directory.keyring()).to_json())

    @routes.post("/v1/keys/rotate")
    async def rotate(request: web.Request) -> web.Response:
        return web.json_response((await directory.rotate_keys()).to_json())

    @routes.put("/v1/sessions/{sid}")
    async def put_session(request: web.Request) -> web.Response:
        body = await _body(request)
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise ValueError('session body must be {"data": {...}, "ttl": seconds}')
        ttl = body.get("ttl")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise ValueError(f"session ttl must be a number, got {ttl!r}")
        await directory.put_session(request.match_info["sid"], body["data"], float(ttl))
        return web.json_response({"stored": True})

    @routes.get("/v1/sessions/{sid}")
    async def get_session(request: web.Request) -> web.Response:
        data = await directory.get_session(request.match_info["sid"])
        if data is None:
            return _error(404, f"session {request.match_info['sid']!r} is absent or expired")
        return web.json_response({"data": data})

    @routes.delete("/v1/sessions/{sid}")
    async def delete_session(request: web.Request) -> web.Response:
        removed = await directory.delete_session(request.match_info["sid"])
        return web.json_response({"removed": removed})

    # auth first: a refused request reaches no handler and reads no body.
    # json_errors outermost: aiohttp's own errors (404, 405, 413) and a crash
    # are JSON too, after auth (an unauthenticated caller learns only 401).
    app = web.Application(middlewares=[json_errors, auth, errors], client_max_size=64 * 1024)
    app.add_routes(routes)
    return app


_LISTEN_HINT = ("; an embedded directory listens on its [orchestrator] listen, 127.0.0.1:7480 "
                "by default, which only its own host reaches: for transceivers on other hosts "
                "set listen to the relay's private address")


def _is_loopback_url(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


class HttpDirectory(Directory):
    """A ``Directory`` over the embedded directory's HTTP API (``http://host:port``).

    What transceivers use on a one-host deployment, and what the CLI uses to
    drain or rotate through a running orchestrator. It has no change feed:
    the sync runs beside the store it follows.
    """

    def __init__(self, url: str, *, secret: str = "", timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.grace = 0.0  # decided by the server
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self._session: aiohttp.ClientSession | None = None

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        try:
            async with self._session.request(method, self.url + path, json=body) as resp:
                payload = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DirectoryUnavailable(
                f"directory {self.url} is unreachable: {exc or type(exc).__name__}"
                + ("" if _is_loopback_url(self.url) else _LISTEN_HINT)
            ) from None
        except json.JSONDecodeError:
            raise DirectoryUnavailable(f"directory {self.url} answered with non-JSON") from None
        if status == 401:
            raise DirectoryAuthError(
                f"directory {self.url} refused us: {payload.get('error', 'unauthorized')} "
                "(check directory_secret_file or $VOXRELAY_DIRECTORY_SECRET)")
        if status == 400:
            raise ValueError(payload.get("error", "bad request"))
        if status >= 500:
            raise DirectoryUnavailable(f"directory {self.url} answered {status}")
        return status, payload

    async def _record(
        self, method: str, path: str, txr_id: int, body: Any = None
    ) -> TransceiverRecord:
        status, payload = await self._call(method, path, body)
        if status == 404:
            raise UnknownTransceiver(txr_id)
        return parse_transceiver(payload)

    async def announce(self, record: TransceiverRecord) -> TransceiverRecord:
        body = _without_stamps(record.to_json())
        return await self._record("POST", "/v1/transceivers", record.id, body)

    async def heartbeat(self, txr_id: int, load: int = 0) -> TransceiverRecord:
        validate_load(load)
        path = f"/v1/transceivers/{txr_id}/heartbeat"
        return await self._record("POST", path, txr_id, {"load": load})

    async def set_status(self, txr_id: int, status: str) -> TransceiverRecord:
        return await self._record("POST", f"/v1/transceivers/{txr_id}/status", txr_id,
                                  {"status": validate_self_status(status)})

    async def set_intent(self, txr_id: int, intent: str | None) -> None:
        validate_transceiver_id(txr_id)
        await self._call("PUT", f"/v1/intents/{txr_id}", {"intent": validate_intent(intent)})

    async def intents(self) -> dict[int, str]:
        _, payload = await self._call("GET", "/v1/intents")
        return {validate_transceiver_id(int(k)): str(v) for k, v in payload["intents"].items()}

    async def remove(self, txr_id: int) -> bool:
        _, payload = await self._call("DELETE", f"/v1/transceivers/{txr_id}")
        return bool(payload["removed"])

    async def get_transceiver(self, txr_id: int) -> TransceiverRecord | None:
        try:
            return await self._record("GET", f"/v1/transceivers/{txr_id}", txr_id)
        except UnknownTransceiver:
            return None

    async def keyring(self) -> Keyring:
        return parse_keyring((await self._call("GET", "/v1/keys"))[1])

    async def rotate_keys(self) -> Keyring:
        return parse_keyring((await self._call("POST", "/v1/keys/rotate"))[1])

    async def ensure_keyring(self) -> Keyring:
        # The orchestrator creates the first key when it starts its store.
        return await self.keyring()

    async def put_session(self, session_id: str, data: dict[str, Any], ttl: float) -> None:
        validate_session_id(session_id)
        await self._call("PUT", f"/v1/sessions/{session_id}", {"data": data, "ttl": ttl})

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        validate_session_id(session_id)
        status, payload = await self._call("GET", f"/v1/sessions/{session_id}")
        return None if status == 404 else dict(payload["data"])

    async def delete_session(self, session_id: str) -> bool:
        validate_session_id(session_id)
        return bool((await self._call("DELETE", f"/v1/sessions/{session_id}"))[1]["removed"])

    async def follow(self, poll: float) -> ChangeFeed:
        """No push feed over this API: a feed that yields ``None`` every ``poll``
        seconds, so that a follower (another relay's orchestrator syncing from
        this one's embedded directory) does a full reconcile each time. A
        broken directory shows up as ``DirectoryUnavailable`` from that reconcile."""

        async def ticks() -> AsyncGenerator[Change | None, None]:
            while True:
                await asyncio.sleep(poll)
                yield None

        return ticks()

    async def snapshot(self) -> Snapshot:
        _, payload = await self._call("GET", "/v1/transceivers")
        records = [parse_transceiver(r) for r in payload["transceivers"]]
        return Snapshot({r.id: r for r in records}, await self.keyring())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
