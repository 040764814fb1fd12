# SPDX-License-Identifier: Apache-2.0
"""HTTP signaling, modelled on the OpenAI Realtime WebRTC API.

    POST   /v1/calls        body: SDP offer (application/sdp), Bearer token
                            -> 201, SDP answer, Location: /v1/calls/<id>
    PATCH  /v1/calls/<id>   body: a new offer -> 200 + answer (ICE restart)
    DELETE /v1/calls/<id>   -> 204, the call ends
    GET    /v1/calls/<id>   -> JSON status of the call
    GET    /healthz         -> JSON load and draining flag
    GET    /                the browser page (static/index.html + app.js)

Errors are JSON ``{"error": {"code": ..., "message": ...}}`` with the status
codes the README lists: 400 bad offer, 401 token, 404 unknown call, 415 wrong
content type, 503 (+ Retry-After) at capacity or draining.

``Transceiver`` wires the pieces: call manager, HTTP site, registration and
heartbeat with the directory (``voxrelay.directory.agent.keep_announced``,
the one registration loop), drain on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc.aio
from aiohttp import web

from transceiver.call import CallError, CallSettings
from transceiver.manager import AtCapacity, CallManager, Draining, NoTokenKey
from voxrelay.directory import DEFAULT_PROBE_PORT, Directory, TransceiverRecord
from voxrelay.directory.agent import announce, keep_announced
from voxrelay.probe import ProbeResponder

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
SDP_TYPE = "application/sdp"
RETRY_AFTER_SECONDS = 5

_MANAGER: web.AppKey[CallManager] = web.AppKey("manager", CallManager)
_TOKEN: web.AppKey[str] = web.AppKey("token", str)


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def check_bearer(header: str | None, expected: str) -> str | None:
    """Return None if the Authorization header carries ``expected``, else why not."""
    if not expected:
        return None
    if not header:
        return "missing bearer token"
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return "Authorization must be 'Bearer <token>'"
    if not hmac.compare_digest(value.strip().encode(), expected.encode()):
        return "wrong bearer token"
    return None


async def _read_offer(request: web.Request) -> str | web.Response:
    problem = check_bearer(request.headers.get("Authorization"), request.app[_TOKEN])
    if problem is not None:
        return _error(401, "unauthorized", problem, **{"WWW-Authenticate": "Bearer"})
    if request.content_type != SDP_TYPE:
        return _error(415, "unsupported_media_type",
                      f"Content-Type must be {SDP_TYPE}, got {request.content_type or 'none'}")
    try:
        return await request.text()
    except UnicodeDecodeError:
        return _error(400, "bad_offer", "SDP offer is not valid UTF-8")


def _call_error(exc: CallError) -> web.Response:
    headers = {}
    if isinstance(exc, (AtCapacity, Draining, NoTokenKey)):
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    code = {400: "bad_offer", 404: "not_found", 503: "unavailable"}.get(exc.status, "error")
    return _error(exc.status, code, exc.message, **headers)


async def create_call(request: web.Request) -> web.StreamResponse:
    offer = await _read_offer(request)
    if isinstance(offer, web.Response):
        return offer
    try:
        call = await request.app[_MANAGER].create(offer)
    except CallError as exc:
        return _call_error(exc)
    return web.Response(
        status=201,
        text=call.answer_sdp,
        content_type=SDP_TYPE,
        headers={"Location": f"/v1/calls/{call.id}"},
    )


async def restart_call(request: web.Request) -> web.StreamResponse:
    offer = await _read_offer(request)
    if isinstance(offer, web.Response):
        return offer
    try:
        answer = await request.app[_MANAGER].restart(request.match_info["call_id"], offer)
    except CallError as exc:
        return _call_error(exc)
    return web.Response(status=200, text=answer, content_type=SDP_TYPE)


async def end_call(request: web.Request) -> web.StreamResponse:
    problem = check_bearer(request.headers.get("Authorization"), request.app[_TOKEN])
    if problem is not None:
        return _error(401, "unauthorized", problem)
    try:
        await request.app[_MANAGER].end(request.match_info["call_id"])
    except CallError as exc:
        return _call_error(exc)
    return web.Response(status=204)


async def call_status(request: web.Request) -> web.StreamResponse:
    problem = check_bearer(request.headers.get("Authorization"), request.app[_TOKEN])
    if problem is not None:
        return _error(401, "unauthorized", problem)
    try:
        call = request.app[_MANAGER].get(request.match_info["call_id"])
    except CallError as exc:
        return _call_error(exc)
    return web.json_response(call.status())


async def health(request: web.Request) -> web.StreamResponse:
    manager = request.app[_MANAGER]
    return web.json_response(
        {"calls": len(manager.calls), "max_calls": manager.settings.max_calls,
         "draining": manager.draining}
    )


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


def make_app(manager: CallManager, api_token: str = "") -> web.Application:
    app = web.Application(client_max_size=128 * 1024)
    app[_MANAGER] = manager
    app[_TOKEN] = api_token
    app.router.add_post("/v1/calls", create_call)
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
    api_token: str = ""
    """Bearer token clients must present; empty disables the check (lab only)."""
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
        self.app = make_app(self.manager, settings.api_token)
        self._runner: web.AppRunner | None = None
        self._heartbeat: asyncio.Task[None] | None = None
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
        site = web.TCPSite(self._runner, self.settings.listen_host, self.settings.listen_port)
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
        await announce(self.directory, record)
        self._heartbeat = asyncio.create_task(
            keep_announced(
                self.directory, record, self._stop_heartbeat,
                interval=self.settings.heartbeat_seconds,
                load=lambda: len(manager.calls),
                draining=lambda: manager.draining,
                after_beat=manager.refresh_sessions,
                announced=True,
            ),
            name="transceiver-heartbeat",
        )

    async def stop(self, grace: float | None = None) -> None:
        """Drain (no new calls, wait up to the grace period), then close everything."""
        await self.manager.drain(self.settings.drain_grace_seconds if grace is None else grace)
        if self._heartbeat is not None:
            # Cancelled too: a beat may be waiting on a directory that is down.
            self._stop_heartbeat.set()
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
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
