# SPDX-License-Identifier: Apache-2.0
"""``voxrelay orchestrator run``: directory + map sync + /metrics (+ probes).

One asyncio process per relay host. It attaches nothing and loads nothing:
it takes over the maps that ``voxrelay relay load`` pinned, so it can be
killed and restarted at any time while the XDP program keeps forwarding.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator import tcpfront
from orchestrator.metrics import OrchestratorMetrics
from orchestrator.probe import probe_async
from orchestrator.relay import RelayView, Reloadable
from orchestrator.sync import Syncer, keyring_from_map, sleep_or_stop
from voxrelay.addr import parse_hostport
from voxrelay.config import Config
from voxrelay.directory import Directory, DirectoryUnavailable, connect
from voxrelay.directory.http import make_app
from voxrelay.directory.memory import MemoryDirectory
from voxrelay.httperrors import json_errors
from voxrelay.probe import mint_probe_token
from voxrelay.secrets import directory_client_secret
from voxrelay.secrets import directory_secrets as read_directory_secrets

log = logging.getLogger(__name__)


class Upkeep(Protocol):
    """Relay housekeeping besides the routing maps (upkeep.BpfRelayUpkeep)."""

    async def start(self) -> None:
        """Start following neighbour changes (invalidate cached next hops)."""

    async def stop(self) -> None:
        """Stop following them (cancels what ``start`` started)."""

    def prime(self, addresses: Iterable[str]) -> None:
        """Start resolving the next hop to each transceiver address; never raises."""

    def refresh_clock(self) -> int | None:
        """Rewrite the config's clock offset (token expiry follows NTP)."""


def make_metrics_app(metrics: OrchestratorMetrics) -> web.Application:
    """GET /metrics (Prometheus text); every other request a JSON error."""

    async def scrape(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[json_errors])
    app.router.add_get("/metrics", scrape)
    return app


@dataclass
class Running:
    """What a running orchestrator exposes (tests read it)."""

    directory: Directory
    syncer: Syncer
    metrics: OrchestratorMetrics
    directory_port: int | None = None
    metrics_port: int | None = None
    runners: list[web.AppRunner] = field(default_factory=list)


async def _serve(app: web.Application, listen: str) -> tuple[web.AppRunner, int]:
    host, port = parse_hostport(listen, 0, allow_zero=True, what="[orchestrator] listen")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    # One site, so its sockets are all the runner's: the first one's port.
    bound = int(runner.addresses[0][1])
    return runner, bound


def embedded_url(config: Config) -> str:
    return f"http://{config.orchestrator.listen}"


def directory_secrets(config: Config, *, create: bool = False) -> list[str]:
    """The directory secret(s) of this config, the one in use first
    ($VOXRELAY_DIRECTORY_SECRET or ``[orchestrator] directory_secret_file``)."""
    return read_directory_secrets(config.orchestrator.directory_secret_file, create=create)


def open_directory(config: Config, url: str | None = None) -> Directory:
    """A client for this config's directory (or ``url``), with its secret."""
    target = url or directory_url(config)
    secret = directory_client_secret(config.orchestrator.directory_secret_file, target)
    return connect(target, grace=config.orchestrator.heartbeat_grace_seconds, secret=secret)


def directory_url(config: Config) -> str:
    """The URL admin commands and transceivers use for this config's directory."""
    d = config.orchestrator.directory
    return embedded_url(config) if d == "embedded" else d


async def _probe_loop(running: Running, relay: tuple[str, int], interval: float,
                      stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            snap = await running.directory.snapshot()
            ring = snap.keyring
            if ring.current is not None:
                for record in snap.transceivers.values():
                    if record.status != "active":
                        continue
                    ufrag = mint_probe_token(ring.keys, ring.current, record.id, record.probe_port)
                    result = await probe_async(relay, ufrag, timeout=1.0, attempts=2,
                                               transceiver_id=record.id)
                    running.metrics.record_probe(record.id, result.ok, result.rtt_ms)
                    if not result.ok:
                        log.warning("probe: %s", result.reason)
        except DirectoryUnavailable as exc:
            log.warning("probe skipped: %s", exc)
        await sleep_or_stop(stop, interval)


async def _upkeep_loop(upkeep: Upkeep, view: RelayView, interval: float,
                       stop: asyncio.Event) -> None:
    """Every ``interval`` s: the clock offset, and the next hops of every transceiver
    in the map again (an entry the kernel garbage-collected is resolved anew)."""
    while True:
        try:
            upkeep.refresh_clock()
            upkeep.prime(t.address for t in view.transceivers().values())
        except Exception:
            # Housekeeping must not end the service; anything may fail here, so
            # the log keeps the traceback.
            log.exception("relay upkeep failed, retrying in %.0f s", interval)
        if await sleep_or_stop(stop, interval):
            return


def _forget_transceivers(ids: tuple[int, ...], metrics: OrchestratorMetrics, view: RelayView,
                         directory: Directory, background: set[asyncio.Task[None]]) -> None:
    """``Syncer(on_delete=...)``: the sync took ``ids`` out of the map."""
    metrics.forget_transceivers(ids)
    if hasattr(view, "delete_flows_of"):
        task = asyncio.get_running_loop().create_task(_delete_dead_flows(ids, view, directory))
        background.add(task)
        task.add_done_callback(background.discard)


async def _delete_dead_flows(ids: tuple[int, ...], view: RelayView, directory: Directory) -> None:
    """A transceiver that left the directory by itself (it withdrew, it died and
    its record expired, its host's front withdrew a dead worker) has no call
    left for its flows to carry, and a worker started again on its ports must
    not inherit them: they go now rather than at flow_idle_seconds. One the
    operator removed keeps its flows, so that its calls in progress finish."""
    try:
        intents = await directory.intents()
    except Exception as exc:  # noqa: BLE001 - keeping flows is the safe side
        log.warning("could not read intents, keeping the flows of %s: %s", ids, exc)
        return
    present = view.transceivers()
    # Checked after the await: a worker may have announced itself again meanwhile.
    dead = [i for i in ids if intents.get(i) != "removed" and i not in present]
    if dead:
        deleted = view.delete_flows_of(dead)  # type: ignore[attr-defined]
        log.info("deleted %d flow(s) of transceiver(s) %s, gone from the directory",
                 deleted, dead)


RELOAD_CHECK_INTERVAL = 0.2
"""Seconds between checks that the relay's pins still name the maps held: a
relay unloaded and loaded again is resynced well within a second."""


async def _reload_loop(view: Reloadable, syncer: Syncer, metrics: OrchestratorMetrics,
                       upkeep: Upkeep | None, interval: float, stop: asyncio.Event) -> None:
    """Follow a relay that was unloaded and loaded again: its pins name new,
    empty maps, which no sync would ever fill (they are not the ones held).
    Reopen them and write the directory's whole state into them at once."""
    while not await sleep_or_stop(stop, interval):
        try:
            if not view.pins_replaced():
                continue
            view.reopen()
            metrics.relay_reloads.inc()
            log.warning("relay loaded anew (new maps under its pins): resyncing them")
            await syncer.reconcile()
            if upkeep is not None:
                upkeep.prime(t.address for t in syncer.maps.transceivers().values())
        except Exception:
            # A reload half done (pins appearing), a directory away: the next
            # check tries again. The traceback says what failed.
            log.exception("following the relay's reload failed, retrying")


async def run_orchestrator(
    config: Config,
    view: RelayView,
    stop: asyncio.Event,
    *,
    probe_relay: str | None = None,
    probe_interval: float = 10.0,
    poll: float = 1.0,
    on_ready: Callable[[Running], Awaitable[None] | None] | None = None,
    upkeep: Upkeep | None = None,
    upkeep_interval: float = 60.0,
    reload_check_interval: float = RELOAD_CHECK_INTERVAL,
) -> None:
    """Serve until ``stop`` is set.

    ``upkeep`` (the real relay's, or None for in-memory views): started
    first, primes the next hop of every transceiver the sync writes, and
    runs every ``upkeep_interval`` s (clock offset, re-priming).
    A ``view`` that is ``Reloadable`` is checked every
    ``reload_check_interval`` s for a relay loaded anew, and resynced then.
    """
    oc = config.orchestrator
    # The ICE-TCP front on this host (same config) writes its counters there.
    metrics = OrchestratorMetrics(view, tcpfront_stats=tcpfront.stats_path(config.relay,
                                                                           config.tcpfront))
    runners: list[web.AppRunner] = []
    directory_port = None
    if oc.directory == "embedded":
        secrets = directory_secrets(config, create=True)
        store = MemoryDirectory(grace=oc.heartbeat_grace_seconds,
                                intents_path=Path(oc.state_dir) / "intents.json")
        # A restarted orchestrator keeps the keys live tokens were minted with.
        store.restore_keyring(keyring_from_map(view.keys()))
        directory: Directory = store
    else:
        directory = open_directory(config, oc.directory)
    background: set[asyncio.Task[None]] = set()
    syncer = Syncer(
        directory, view, poll=poll, on_lag=metrics.sync_lag.observe, ensure_keys=True,
        on_upsert=None if upkeep is None else (
            lambda entries: upkeep.prime(t.address for t in entries.values())),
        on_delete=lambda ids: _forget_transceivers(ids, metrics, view, directory, background),
    )
    metrics.directory_connected.set_function(lambda: 1 if syncer.connected else 0)
    metrics.maps_in_sync.set_function(lambda: 1 if syncer.in_sync else 0)
    try:
        if upkeep is not None:
            await upkeep.start()
        if oc.directory == "embedded":
            app = make_app(directory, secrets,
                           on_refused=lambda reason: metrics.directory_refused.labels(reason).inc())
            runner, directory_port = await _serve(app, oc.listen)
            runners.append(runner)

        metrics_app = make_metrics_app(metrics)
        runner, metrics_port = await _serve(metrics_app, oc.metrics_listen)
        runners.append(runner)
        running = Running(directory, syncer, metrics, directory_port, metrics_port, runners)
        tasks = [asyncio.create_task(syncer.run(stop), name="sync")]
        if upkeep is not None:
            tasks.append(asyncio.create_task(
                _upkeep_loop(upkeep, view, upkeep_interval, stop), name="upkeep"))
        if isinstance(view, Reloadable):
            tasks.append(asyncio.create_task(
                _reload_loop(view, syncer, metrics, upkeep, reload_check_interval, stop),
                name="reload"))
        if probe_relay:
            tasks.append(asyncio.create_task(
                _probe_loop(running, parse_hostport(probe_relay, 3478, what="relay"),
                            probe_interval, stop),
                name="probe"))
        log.info("orchestrator up: directory %s, metrics on :%d", oc.directory, metrics_port)
        if on_ready is not None:
            maybe = on_ready(running)
            if maybe is not None:
                await maybe
        try:
            await stop.wait()
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        await directory.close()
        if upkeep is not None:
            await upkeep.stop()
