# SPDX-License-Identifier: Apache-2.0
"""HTTP signaling, modelled on the OpenAI Realtime WebRTC API.

    POST   /v1/realtime/client_secrets  API key only (a backend, never a browser)
                                    body (optional): {"expires_after": {"seconds": N}}
                                    -> 200 {"value": "ek_...", "expires_at": unix}
    POST   /v1/calls                body: SDP offer (application/sdp), Bearer API key
                                    or client secret -> 201, SDP answer,
                                    Location: /v1/calls/<id>
    POST   /v1/realtime/calls       the same (OpenAI's path)
    PATCH  /v1/calls/<id>           body: a new offer -> 200 + answer (ICE restart)
    DELETE /v1/calls/<id>           -> 204, the call ends
    GET    /v1/calls/<id>           -> JSON status of the call
    GET    /healthz                 -> JSON load and draining flag
    GET    /                        the browser page (static/index.html + app.js)

Who may call is ``transceiver/auth.py``'s business (API keys, ephemeral
client secrets, web origins); this module applies it. Every error is JSON
``{"error": {"code": ..., "message": ...}}``: 400 bad offer, 401 missing,
wrong or expired credential, 403 an API key from a browser or an origin not
in ``cors_origins``, 404 unknown call (or another credential's call), 415
wrong content type, 503 (+ Retry-After) at capacity or draining, including
a drain the operator ordered (``voxrelay transceivers drain``), which the
directory reports back on every heartbeat.

``Transceiver`` wires the pieces: call manager, HTTP site, registration and
heartbeat with the directory (``voxrelay.directory.agent.keep_announced``,
the one registration loop), drain on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc.aio
from aiohttp import web
from aiohttp.typedefs import Handler

from transceiver import LISTEN_BACKLOG
from transceiver.auth import Authenticator, AuthError, Credential, OriginPolicy
from transceiver.call import CallError, CallSettings
from transceiver.manager import AtCapacity, CallManager, Draining, NoTokenKey
from voxrelay.directory import DEFAULT_PROBE_PORT, Directory, TransceiverRecord
from voxrelay.directory.agent import announce, keep_announced
from voxrelay.probe import ProbeResponder

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
SDP_TYPE = "application/sdp"
RETRY_AFTER_SECONDS = 5
CORS_MAX_AGE_SECONDS = 600


@dataclass
class Gate:
    """What signaling knows beyond the calls: who may call, from where, and
    whether the operator has drained this transceiver."""

    auth: Authenticator
    origins: OriginPolicy
    operator_status: Callable[[], str] = lambda: "active"
    owners: dict[str, str] = field(default_factory=dict)
    """call id -> identity of the credential that created it."""


_MANAGER: web.AppKey[CallManager] = web.AppKey("manager", CallManager)
_GATE: web.AppKey[Gate] = web.AppKey("gate", Gate)


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def _auth_error(exc: AuthError) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="voxrelay"'} if exc.status == 401 else {}
    return _error(exc.status, exc.code, exc.message, **headers)


def _credential(request: web.Request) -> Credential:
    """The request's credential, or ``AuthError``. An API key sent by a browser
    (any request with an Origin header) is refused: pages use client secrets."""
    gate = request.app[_GATE]
    credential = gate.auth.authenticate(request.headers.get("Authorization"))
    if credential.kind == "api_key" and "Origin" in request.headers:
        raise AuthError(403, "api_key_from_browser",
                        "an API key must not be used from a browser (this request has an "
                        "Origin header); your backend mints an ephemeral client secret with "
                        "POST /v1/realtime/client_secrets and the page uses that")
    return credential


def _own_call(request: web.Request, credential: Credential) -> str:
    """The path's call id, if this credential may act on it (404 otherwise,
    so that one client cannot learn another's call ids)."""
    call_id = request.match_info["call_id"]
    owner = request.app[_GATE].owners.get(call_id)
    if credential.is_api_key or owner == credential.identity:
        return call_id
    raise AuthError(404, "not_found", f"no call {call_id!r} for this credential")


def _own_origin(request: web.Request) -> str:
    # Host only, not scheme: behind a TLS-terminating proxy the page is https
    # while we are plain http. The port is part of Host when it is not the default.
    return request.host


def _origin_host(origin: str) -> str:
    return origin.split("://", 1)[-1]


def _cors_headers(origin: str) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Expose-Headers": "Location"}


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Origins (CORS) for the API, and JSON for every error, aiohttp's own
    (404, 405, 413) included."""
    origin = request.headers.get("Origin")
    api = request.path.startswith("/v1/")
    cross = False
    if api and origin is not None:
        policy = request.app[_GATE].origins
        own = _own_origin(request)
        if not policy.allows(_origin_host(origin), own) and not policy.allows(origin, own):
            return _error(403, "origin_not_allowed",
                          f"pages from {origin} may not call this API; "
                          "add the origin to [transceiver] cors_origins")
        cross = _origin_host(origin) != own
        if request.method == "OPTIONS":
            if request.path.startswith("/v1/realtime/client_secrets"):
                return _error(403, "not_for_browsers",
                              "client secrets are minted by a backend, not a page")
            return web.Response(status=204, headers={
                **_cors_headers(origin),
                "Access-Control-Allow-Methods": "POST, PATCH, DELETE, GET",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": str(CORS_MAX_AGE_SECONDS)})
    try:
        response = await handler(request)
    except AuthError as exc:
        response = _auth_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(exc.status, exc.reason.lower().replace(" ", "_"),
                          f"{request.method} {request.path}: {exc.reason}",
                          **{k: v for k, v in exc.headers.items()
                             if k in ("Allow", "Retry-After")})
    except Exception as exc:
        # A bug, not the caller's fault: logged with its traceback, answered in JSON.
        logger.exception("%s %s failed", request.method, request.path)
        response = _error(500, "internal_error",
                          f"{request.method} {request.path}: {type(exc).__name__}: {exc}")
    if cross and origin is not None:
        response.headers.update(_cors_headers(origin))
    return response


async def _read_offer(request: web.Request) -> str | web.Response:
    if request.content_type != SDP_TYPE:
        return _error(415, "unsupported_media_type",
                      f"Content-Type must be {SDP_TYPE}, got {request.content_type or 'none'}")
    try:
        return await request.text()
    except UnicodeDecodeError:
        return _error(400, "bad_offer", "SDP offer is not valid UTF-8")


def _call_error(exc: CallError) -> web.Response:
    headers = {}
    if isinstance(exc, (AtCapacity, Draining, NoTokenKey)) or exc.status in (429, 503):
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    code = {400: "bad_offer", 404: "not_found", 429: "too_many_requests",
            503: "unavailable"}.get(exc.status, "error")
    return _error(exc.status, code, exc.message, **headers)


def _unavailable(request: web.Request) -> web.Response | None:
    """503 + Retry-After while this transceiver must not take calls: it is
    shutting down, or the operator drained or removed it (the relay would
    drop the new call's ICE anyway)."""
    retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if request.app[_MANAGER].draining:
        return _error(503, "unavailable", "transceiver is draining: no new calls", **retry)
    status = request.app[_GATE].operator_status()
    if status != "active":
        return _error(503, "unavailable",
                      f"transceiver is {status} by the operator: no new calls here", **retry)
    return None


async def create_client_secret(request: web.Request) -> web.StreamResponse:
    gate = request.app[_GATE]
    if "Origin" in request.headers:
        return _error(403, "not_for_browsers",
                      "client secrets are minted by a backend with the API key, not by a page")
    credential = _credential(request)
    if not credential.is_api_key:
        raise AuthError(403, "api_key_required", "only an API key can mint client secrets")
    ttl: float | None = None
    if request.can_read_body:
        try:
            body = json.loads(await request.text() or "{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "bad_request", "body must be JSON")
        after = body.get("expires_after", {}) if isinstance(body, dict) else None
        if not isinstance(after, dict):
            return _error(400, "bad_request", 'expires_after must be {"seconds": N}')
        seconds = after.get("seconds")
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                return _error(400, "bad_request", "expires_after.seconds must be a number")
            ttl = float(seconds)
    secret = gate.auth.mint(ttl)
    return web.json_response({"value": secret.value, "expires_at": secret.expires_at})


async def create_call(request: web.Request) -> web.StreamResponse:
    credential = _credential(request)
    unavailable = _unavailable(request)
    if unavailable is not None:
        return unavailable
    offer = await _read_offer(request)
    if isinstance(offer, web.Response):
        return offer
    try:
        call = await request.app[_MANAGER].create(offer, client=credential.pending_limit_key)
    except CallError as exc:
        return _call_error(exc)
    owners = request.app[_GATE].owners
    owners[call.id] = credential.identity
    _forget_ended(owners, request.app[_MANAGER])
    return web.Response(
        status=201,
        text=call.answer_sdp,
        content_type=SDP_TYPE,
        headers={"Location": f"/v1/calls/{call.id}"},
    )


def _forget_ended(owners: dict[str, str], manager: CallManager) -> None:
    """Drop the owners of calls that ended on their own (ICE failure, consent),
    so that the table stays as small as the live calls."""
    if len(owners) > 2 * len(manager.calls) + 16:
        for call_id in [c for c in owners if c not in manager.calls]:
            del owners[call_id]


async def restart_call(request: web.Request) -> web.StreamResponse:
    call_id = _own_call(request, _credential(request))
    offer = await _read_offer(request)
    if isinstance(offer, web.Response):
        return offer
    try:
        answer = await request.app[_MANAGER].restart(call_id, offer)
    except CallError as exc:
        return _call_error(exc)
    return web.Response(status=200, text=answer, content_type=SDP_TYPE)


async def end_call(request: web.Request) -> web.StreamResponse:
    call_id = _own_call(request, _credential(request))
    try:
        await request.app[_MANAGER].end(call_id)
    except CallError as exc:
        return _call_error(exc)
    request.app[_GATE].owners.pop(call_id, None)
    return web.Response(status=204)


async def call_status(request: web.Request) -> web.StreamResponse:
    call_id = _own_call(request, _credential(request))
    try:
        call = request.app[_MANAGER].get(call_id)
    except CallError as exc:
        return _call_error(exc)
    return web.json_response(call.status())


async def health(request: web.Request) -> web.StreamResponse:
    manager = request.app[_MANAGER]
    operator = request.app[_GATE].operator_status()
    return web.json_response(
        {"calls": len(manager.calls), "max_calls": manager.settings.max_calls,
         "draining": manager.draining or operator != "active", "operator": operator}
    )


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


def make_app(manager: CallManager, gate: Gate) -> web.Application:
    app = web.Application(client_max_size=128 * 1024, middlewares=[edge])
    app[_MANAGER] = manager
    app[_GATE] = gate
    app.router.add_post("/v1/realtime/client_secrets", create_client_secret)
    app.router.add_post("/v1/calls", create_call)
    app.router.add_post("/v1/realtime/calls", create_call)
    app.router.add_patch("/v1/calls/{call_id}", restart_call)
    app.router.add_delete("/v1/calls/{call_id}", end_call)
    app.router.add_get("/v1/calls/{call_id}", call_status)
    app.router.add_get("/healthz", health)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC)
    return app


@dataclass
class ServiceSettings:
    """The service around the calls: HTTP signaling and directory registration."""

    listen_host: str
    """HTTP signaling address (POST /v1/calls)."""
    listen_port: int
    """HTTP signaling port; 0 picks a free one (``Transceiver.port`` after start)."""
    private_address: str
    """Where the relay forwards calls to, as the directory record names it."""
    api_keys: list[str] | None = None
    """API keys (first mints client secrets); None switches authentication off
    (a closed lab only: the CLI warns)."""
    cors_origins: list[str] = field(default_factory=list)
    """Origins besides the page's own that may call (``*``: any)."""
    client_secret_ttl: float = 600.0
    client_secret_max_ttl: float = 7200.0
    heartbeat_seconds: float = 2.0
    """Interval of the directory heartbeat (load, draining, session refresh)."""
    drain_grace_seconds: float = 10.0
    """On stop: how long existing calls may continue before they are closed."""
    probe_port: int = 0
    """UDP port of the STUN probe responder (``voxrelay probe``); 0: none (the
    directory record names ``DEFAULT_PROBE_PORT`` then)."""


class Transceiver:
    """The running service: HTTP site, calls, and directory registration."""

    def __init__(self, settings: ServiceSettings, calls: CallSettings, directory: Directory,
                 channel: grpc.aio.Channel | None = None) -> None:
        self.settings = settings
        self.directory = directory
        self.manager = CallManager(calls, directory, channel)
        self.operator_status = "active"
        """The directory's word on us (intent applied): "active", "draining", "removed"."""
        self.gate = Gate(
            Authenticator(settings.api_keys, default_ttl=settings.client_secret_ttl,
                          max_ttl=settings.client_secret_max_ttl),
            OriginPolicy(settings.cors_origins),
            operator_status=lambda: self.operator_status)
        self.app = make_app(self.manager, self.gate)
        self._runner: web.AppRunner | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._model_capacity: asyncio.Task[None] | None = None
        self._stop_heartbeat = asyncio.Event()
        self._probe: asyncio.DatagramTransport | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.settings.listen_host}:{self.port}"

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            if self._probe is not None:
                self._probe.close()
            if self._runner is not None:
                await self._runner.cleanup()
            raise

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.listen_host, self.settings.listen_port,
                           backlog=LISTEN_BACKLOG)
        await site.start()
        self.port = self._runner.addresses[0][1]
        if self.settings.probe_port:
            self._probe, _ = await ProbeResponder.serve(
                self.settings.private_address, self.settings.probe_port)
        manager = self.manager
        record = TransceiverRecord(
            id=manager.settings.transceiver_id,
            address=self.settings.private_address,
            probe_port=self.settings.probe_port or DEFAULT_PROBE_PORT,
        )
        # The first announce is awaited here, so that a directory that refuses
        # us or cannot be reached fails the start-up with its reason.
        self._on_record(await announce(self.directory, record))
        self._heartbeat = asyncio.create_task(
            keep_announced(
                self.directory, record, self._stop_heartbeat,
                interval=self.settings.heartbeat_seconds,
                load=lambda: len(manager.calls),
                draining=lambda: manager.draining,
                after_beat=manager.refresh_sessions,
                announced=True,
                on_record=self._on_record,
            ),
            name="transceiver-heartbeat",
        )
        # Read once before the first POST, so that it is admitted against the
        # model's own limit (a model that is away costs at most the RPC's timeout).
        try:
            await manager.read_model_capacity()
        except Exception as exc:  # noqa: BLE001 - admission falls back to model_streams
            logger.warning("could not read the voice model's capacity: %r", exc)
        self._model_capacity = asyncio.create_task(
            manager.follow_model_capacity(self._stop_heartbeat), name="model-capacity")

    def _on_record(self, record: TransceiverRecord) -> None:
        """Every answer from the directory: its status is ours with the operator's
        intent applied (while we drain ourselves, "draining" is our own word,
        and ``manager.draining`` answers for it first)."""
        if record.status != self.operator_status:
            logger.warning("the directory now says this transceiver is %s", record.status)
        self.operator_status = record.status

    async def stop(self, grace: float | None = None) -> None:
        """Drain (no new calls, wait up to the grace period), then close everything."""
        await self.manager.drain(self.settings.drain_grace_seconds if grace is None else grace)
        # One stop event for the heartbeat and the model-capacity follower;
        # both are cancelled too: a beat may be waiting on a directory that
        # is down, a Capacity read on a model that is.
        self._stop_heartbeat.set()
        for task in (self._heartbeat, self._model_capacity):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            await self.directory.remove(self.manager.settings.transceiver_id)
        except Exception as exc:  # noqa: BLE001 - shutting down regardless
            logger.warning("could not withdraw from the directory: %s", exc)
        if self._probe is not None:
            self._probe.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.manager.close()
        await self.directory.close()
