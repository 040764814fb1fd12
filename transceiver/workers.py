# SPDX-License-Identifier: Apache-2.0
"""One transceiver host, every core: N worker processes behind one signaling front.

A transceiver is one Python process, so it uses one core. ``voxrelay
transceiver run --workers N`` starts N of them, each a whole transceiver with
its own id, UDP port range, probe port and directory record
(``plan_workers``), and puts one HTTP front on ``[transceiver] listen``:

* ``POST /v1/calls`` (and ``/v1/realtime/calls``) goes to the least-loaded
  worker that is up and not draining; a worker that answers 503 (full,
  draining) passes the call to the next one.
* ``/v1/calls/<id>`` (PATCH, GET, DELETE) goes to the worker that answered the
  call: the front learns the id from the 201's ``Location``.
* Everything else (client secrets, the page) goes to any worker that is up.

The front only forwards: credentials are checked by the workers, which share
the host's API keys, and client secrets are stateless HMACs
(``transceiver/auth.py``) that any worker verifies. A call belongs to the
credential that created it, and the worker that holds it enforces that.

A worker that dies loses only its own calls. The front then withdraws its
record from the directory at once (the directory's TTL would do it too, only
later), which makes the relays drop it and its flows, stops sending it calls,
and starts it again after ``worker_restart_seconds`` (doubled on each crash
within a minute of its start, up to 30 s). SIGTERM drains the host: the front
refuses new calls and SIGTERMs every worker, which drains as a lone
transceiver would.

A worker gets SIGTERM when the front dies, even by SIGKILL (PR_SET_PDEATHSIG),
so that no worker outlives its front.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from transceiver import LISTEN_BACKLOG
from voxrelay.config import TransceiverConfig

logger = logging.getLogger(__name__)

SUPERVISOR_ENV = "VOXRELAY_TRANSCEIVER_FRONT_PID"
HEALTH_POLL_SECONDS = 0.5
"""How often the front reads every worker's /healthz (load, draining)."""
READY_TIMEOUT_SECONDS = 60.0
"""A worker that prints no ready line by then is killed and retried."""
EXIT_GRACE_SECONDS = 5.0
"""How long a worker that did not come up may take to exit by itself before it is killed."""
MAX_RESTART_SECONDS = 30.0
STABLE_SECONDS = 60.0
"""A worker that lived this long restarts after the base delay again."""
PROXY_TIMEOUT_SECONDS = 30.0
# Request headers the front passes on; hop-by-hop ones are aiohttp's business.
FORWARD_HEADERS = ("Authorization", "Content-Type", "Origin", "Accept")
CALL_POST_PATHS = ("/v1/calls", "/v1/realtime/calls")


def host_cores() -> int:
    """Cores this process may run on (its affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class WorkerPlan:
    """What makes worker ``index`` a transceiver of its own."""

    index: int
    count: int
    """Workers on the host."""
    transceiver_id: int
    port_min: int
    port_max: int
    probe_port: int


def plan_workers(cfg: TransceiverConfig, workers: int) -> list[WorkerPlan]:
    """Worker ``i`` gets id ``cfg.id + i``, the ``i``-th slice of the port range
    and probe port ``probe_port + i`` (0 stays 0). ``ValueError`` when the
    range cannot give every worker a port or an id would leave the token's u32."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    ports = cfg.port_max - cfg.port_min + 1
    if ports < workers:
        raise ValueError(f"port_min..port_max ({cfg.port_min}..{cfg.port_max}) has {ports} "
                         f"port(s), fewer than the {workers} workers")
    if cfg.id + workers - 1 > 0xFFFFFFFF:
        raise ValueError(f"transceiver ids {cfg.id}..{cfg.id + workers - 1} leave 0..4294967295")
    if cfg.probe_port and cfg.probe_port + workers - 1 > 65535:
        raise ValueError(f"probe ports {cfg.probe_port}..{cfg.probe_port + workers - 1} "
                         "leave 1..65535")
    share, extra = divmod(ports, workers)
    plans, start = [], cfg.port_min
    for i in range(workers):
        size = share + (1 if i < extra else 0)
        plans.append(WorkerPlan(i, workers, cfg.id + i, start, start + size - 1,
                                cfg.probe_port + i if cfg.probe_port else 0))
        start += size
    return plans


def worker_config(cfg: TransceiverConfig, plan: WorkerPlan) -> TransceiverConfig:
    """The config worker ``plan.index`` runs with: its own id, ports and probe,
    signaling on loopback (only the front reaches it), and its share of
    ``max_calls`` and ``model_streams`` so that the host keeps its limits."""
    return dataclasses.replace(
        cfg, id=plan.transceiver_id, port_min=plan.port_min, port_max=plan.port_max,
        probe_port=plan.probe_port, listen="127.0.0.1:0",
        max_calls=share(cfg.max_calls, plan.count, plan.index),
        model_streams=share(cfg.model_streams, plan.count, plan.index))


def share(total: int, parts: int, index: int) -> int:
    """Part ``index`` of ``total`` split as evenly as it goes, at least 1 (a worker
    that may take no call is no worker)."""
    base, extra = divmod(total, parts)
    return max(1, base + (1 if index < extra else 0))


def die_with_parent() -> None:
    """Called in a worker at start: SIGTERM when the front dies, even by SIGKILL
    (PR_SET_PDEATHSIG), and exit at once if it is gone already (the race
    before the prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor is not None and os.getppid() != int(supervisor):
        raise SystemExit("the transceiver front is gone")


@dataclass
class Worker:
    """One worker process as the front sees it."""

    plan: WorkerPlan
    proc: asyncio.subprocess.Process | None = None
    url: str = ""
    """Its signaling URL (from its ready line); "" while it is not up."""
    load: int = 0
    """Calls, as its last /healthz said plus those placed since."""
    draining: bool = False
    restarts: int = 0
    started_at: float = 0.0
    ever_up: bool = False
    calls: set[str] = field(default_factory=set)

    @property
    def up(self) -> bool:
        return bool(self.url) and self.proc is not None and self.proc.returncode is None

    def status(self) -> dict[str, object]:
        return {"index": self.plan.index, "id": self.plan.transceiver_id,
                "pid": self.proc.pid if self.proc is not None else None, "up": self.up,
                "url": self.url, "load": self.load, "draining": self.draining,
                "restarts": self.restarts, "ports": [self.plan.port_min, self.plan.port_max],
                "calls": len(self.calls)}


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}},
                             status=status, headers=headers)


class Front:
    """The supervisor and HTTP front of one host's workers."""

    def __init__(self, cfg: TransceiverConfig, workers: int, *, worker_argv: Sequence[str],
                 directory_spec: str, restart_seconds: float = 1.0) -> None:
        self.cfg = cfg
        self.workers = [Worker(p) for p in plan_workers(cfg, workers)]
        self.worker_argv = list(worker_argv)
        """The command that runs one worker; ``--worker I/N`` is appended."""
        self.directory_spec = directory_spec
        self.restart_seconds = restart_seconds
        self.draining = False
        self.call_owner: dict[str, Worker] = {}
        """call id -> the worker that holds it."""
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self.start_failure = ""
        """Why the first start of a worker failed ("" while none did)."""
        self.port = 0

    # --- workers ----------------------------------------------------------------
    async def _spawn(self, worker: Worker) -> asyncio.subprocess.Process:
        n = len(self.workers)
        argv = [*self.worker_argv, "--worker", f"{worker.plan.index}/{n}"]
        env = {**os.environ, SUPERVISOR_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        worker.proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, env=env)
        worker.started_at = time.monotonic()
        try:
            line = await asyncio.wait_for(_stdout(worker.proc).readline(), READY_TIMEOUT_SECONDS)
            ready = json.loads(line) if line else {}
        except (TimeoutError, json.JSONDecodeError):
            ready = {}
        if ready.get("event") != "ready":
            code = await _exit_status(worker.proc)
            logger.warning("worker %d (transceiver %d) did not start (exit status %s)",
                           worker.plan.index, worker.plan.transceiver_id, code)
            if not worker.ever_up and not self.start_failure:
                # At first start a failure is the config's or the directory's, and
                # would fail every retry alike: the front gives up with it (the
                # worker's own error is on stderr above).
                self.start_failure = (f"transceiver worker {worker.plan.index} (id "
                                      f"{worker.plan.transceiver_id}) failed to start "
                                      f"(exit status {code}); its error is above")
                self._stop.set()
            return worker.proc
        worker.url = str(ready["url"])
        worker.load, worker.draining, worker.ever_up = 0, False, True
        logger.warning("worker %d (transceiver %d, pid %d) up at %s", worker.plan.index,
                       worker.plan.transceiver_id, worker.proc.pid, worker.url)
        return worker.proc

    async def _supervise(self, worker: Worker) -> None:
        """Run ``worker``; start it again whenever it dies, until the front stops."""
        delay = self.restart_seconds
        while not self._stop.is_set():
            proc = await self._spawn(worker)
            # Its stdout is read to the end, so that a chatty worker never blocks.
            while await _stdout(proc).readline():
                pass
            code = await proc.wait()
            lost = len(worker.calls)
            worker.url = ""
            for call_id in worker.calls:
                self.call_owner.pop(call_id, None)
            worker.calls.clear()
            if self._stop.is_set():
                return
            logger.warning("worker %d (transceiver %d) exited with %s, losing %d call(s); "
                           "starting it again in %.1f s", worker.plan.index,
                           worker.plan.transceiver_id, code, lost, delay)
            await self._withdraw(worker.plan.transceiver_id)
            lived = time.monotonic() - worker.started_at
            delay = self.restart_seconds if lived >= STABLE_SECONDS else delay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(MAX_RESTART_SECONDS, delay * 2)
            worker.restarts += 1

    async def _withdraw(self, transceiver_id: int) -> None:
        """Take a dead worker's record out of the directory now rather than at
        its TTL: the relays then drop it (and its flows) within a sync."""
        from voxrelay.directory import connect  # noqa: PLC0415 - only when a worker dies
        from voxrelay.secrets import directory_client_secret  # noqa: PLC0415

        if self.directory_spec == "memory":
            return  # each worker's own directory: nothing shared to clean
        try:
            directory = connect(self.directory_spec, secret=directory_client_secret(
                self.cfg.directory_secret_file, self.directory_spec))
            try:
                await asyncio.wait_for(directory.remove(transceiver_id), 5.0)
            finally:
                await directory.close()
        except Exception as exc:  # noqa: BLE001 - its record expires by TTL anyway
            logger.warning("could not withdraw transceiver %d from the directory: %s",
                           transceiver_id, exc)

    async def _poll_health(self) -> None:
        session = self._client()
        while not self._stop.is_set():
            for worker in self.workers:
                if not worker.up:
                    continue
                try:
                    async with session.get(
                            worker.url + "/healthz",
                            timeout=aiohttp.ClientTimeout(total=HEALTH_POLL_SECONDS * 4)) as r:
                        body = await r.json()
                    worker.load = int(body["calls"])
                    worker.draining = bool(body["draining"])
                except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                    logger.info("worker %d health: %s", worker.plan.index, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), HEALTH_POLL_SECONDS)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the front is not started")
        return self._session

    def placeable(self) -> list[Worker]:
        """Workers that may take a new call, least loaded first (then by index)."""
        return sorted((w for w in self.workers if w.up and not w.draining),
                      key=lambda w: (w.load, w.plan.index))

    def any_up(self) -> Worker | None:
        return next((w for w in self.workers if w.up), None)

    # --- HTTP ---------------------------------------------------------------------
    async def _forward(self, request: web.Request, worker: Worker,
                       body: bytes) -> web.Response:
        headers = {k: request.headers[k] for k in FORWARD_HEADERS if k in request.headers}
        # The worker's same-origin check compares Origin with the Host the page used.
        headers["Host"] = request.host
        async with self._client().request(
                request.method, worker.url + request.rel_url.path_qs, data=body or None,
                headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=PROXY_TIMEOUT_SECONDS)) as upstream:
            payload = await upstream.read()
            keep = {k: v for k, v in upstream.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                         "content-encoding", "date", "server")}
            return web.Response(status=upstream.status, body=payload, headers=keep)

    def _unavailable(self, message: str) -> web.Response:
        return _error(503, "unavailable", message, **{"Retry-After": "5"})

    async def create_call(self, request: web.Request) -> web.StreamResponse:
        if self.draining:
            return self._unavailable("transceiver host is draining: no new calls")
        body = await request.read()
        candidates = self.placeable()
        if not candidates:
            return self._unavailable("no transceiver worker can take calls right now")
        response: web.Response | None = None
        for worker in candidates:
            try:
                response = await self._forward(request, worker, body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                logger.warning("worker %d refused a call: %s", worker.plan.index, exc)
                continue
            if response.status == 201:
                call_id = response.headers.get("Location", "").rsplit("/", 1)[-1]
                if call_id:
                    self.call_owner[call_id] = worker
                    worker.calls.add(call_id)
                worker.load += 1
                return response
            if response.status != 503:
                return response  # the offer's or the credential's fault: no use retrying
        return response or self._unavailable("no transceiver worker answered")

    async def call(self, request: web.Request) -> web.StreamResponse:
        call_id = request.match_info["call_id"]
        worker = self.call_owner.get(call_id)
        if request.method == "OPTIONS" or worker is None or not worker.up:
            # A CORS preflight names no call's owner; an unknown call gets any
            # worker's answer, which checks the credential first (401, else 404)
            # exactly as a lone transceiver would.
            return await self.anywhere(request)
        response = await self._forward(request, worker, await request.read())
        if request.method == "DELETE" and response.status == 204:
            self.call_owner.pop(call_id, None)
            worker.calls.discard(call_id)
        return response

    async def anywhere(self, request: web.Request) -> web.StreamResponse:
        worker = self.any_up()
        if worker is None:
            return self._unavailable("no transceiver worker is up")
        try:
            return await self._forward(request, worker, await request.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            return self._unavailable(f"transceiver worker unreachable: {exc}")

    async def health(self, request: web.Request) -> web.StreamResponse:
        up = [w for w in self.workers if w.up]
        return web.json_response({
            "calls": sum(w.load for w in up),
            "max_calls": self.cfg.max_calls * len(up),
            "draining": self.draining or not self.placeable(),
            "workers": [w.status() for w in self.workers]})

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=128 * 1024)
        for path in CALL_POST_PATHS:
            app.router.add_post(path, self.create_call)
        app.router.add_route("*", "/v1/calls/{call_id}", self.call)
        app.router.add_get("/healthz", self.health)
        app.router.add_route("*", "/{tail:.*}", self.anywhere)
        return app

    # --- life -------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers (``wait_ready`` tells when they are up)."""
        self._session = aiohttp.ClientSession()
        self._tasks = [asyncio.create_task(self._supervise(w), name=f"worker-{w.plan.index}")
                       for w in self.workers]
        self._tasks.append(asyncio.create_task(self._poll_health(), name="worker-health"))

    async def listen(self, host: str, port: int) -> None:
        """Serve signaling on ``host:port`` (0: any free port, then ``self.port``)."""
        self._runner = web.AppRunner(self.make_app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, backlog=LISTEN_BACKLOG).start()
        self.port = self._runner.addresses[0][1]

    async def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> bool:
        """True once every worker is up (False if one is not within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not all(w.up for w in self.workers):
            if time.monotonic() > deadline or self.start_failure:
                return False
            await asyncio.sleep(0.05)
        return True

    async def stop(self, grace: float) -> None:
        """Drain the host: refuse new calls, SIGTERM every worker (each drains for
        ``grace`` s), SIGKILL any that outlives that by 10 s."""
        self.draining = True
        self._stop.set()
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), grace + 10.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


async def _exit_status(proc: asyncio.subprocess.Process) -> int:
    """The exit status of a worker that did not come up: it is given a moment to
    exit by itself, and is killed only if it does not.

    Not ``kill()`` at once: a worker that failed has usually closed its stdout and
    is exiting, and ``Popen.send_signal`` polls (reaps) the child in this thread
    while asyncio's child watcher thread waits on it too. The watcher then loses
    the race and reports 255 instead of the worker's own status (cpython#127049).
    """
    try:
        return await asyncio.wait_for(proc.wait(), EXIT_GRACE_SECONDS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return await proc.wait()


def _stdout(proc: asyncio.subprocess.Process) -> asyncio.StreamReader:
    if proc.stdout is None:
        raise RuntimeError("worker started without a stdout pipe")
    return proc.stdout


def worker_argv(config_path: Path | None, directory_spec: str, verbose: bool) -> list[str]:
    """``voxrelay transceiver run`` for one worker, with this interpreter."""
    argv = [sys.executable, "-m", "voxrelay.cli", "transceiver", "run", "--json",
            "--directory", directory_spec]
    if config_path is not None:
        argv += ["--config", str(config_path)]
    if verbose:
        argv.append("-v")
    return argv
