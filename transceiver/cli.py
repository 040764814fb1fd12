# SPDX-License-Identifier: Apache-2.0
"""``voxrelay transceiver``: run a transceiver (HTTP signaling + aiortc calls)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Any

import click

from voxrelay.addr import parse_hostport
from voxrelay.config import ConfigError, TransceiverConfig, load_config
from voxrelay.directory import Directory, connect
from voxrelay.logs import setup_logging
from voxrelay.secrets import API_KEY_ENV, SecretError, directory_client_secret, load_secrets

log = logging.getLogger(__name__)


def _split_listen(listen: str) -> tuple[str, int]:
    """``[transceiver] listen``: HOST:PORT, an empty host meaning every interface."""
    try:
        return parse_hostport(listen, default_host="0.0.0.0", allow_zero=True,
                              what="[transceiver] listen")
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def api_keys(cfg: TransceiverConfig) -> list[str] | None:
    """The signaling API keys: ``api_token`` if given inline, else $VOXRELAY_API_KEY
    or ``api_key_file`` (created with a fresh key on first start); None when
    ``auth = false``."""
    if not cfg.auth:
        log.warning("signaling authentication is OFF ([transceiver] auth = false): "
                    "anyone who reaches %s can place calls", cfg.listen)
        return None
    if cfg.api_token:
        return [cfg.api_token]
    existed = Path(cfg.api_key_file).exists()
    try:
        keys = load_secrets(cfg.api_key_file, env=API_KEY_ENV, create=True,
                            what="signaling API key")
    except SecretError as exc:
        raise click.ClickException(str(exc)) from None
    if not existed and Path(cfg.api_key_file).exists():
        click.echo(f"created the signaling API key in {cfg.api_key_file} (mode 0600): your "
                   "backend sends it to POST /v1/realtime/client_secrets", err=True)
    return keys


async def _directory(spec: str, secret_file: str) -> Directory:
    try:
        directory = connect(spec, secret=directory_client_secret(secret_file, spec))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if spec == "memory":
        # Standalone: no orchestrator creates the routing-token key, so we do.
        await directory.ensure_keyring()
    return directory


def _advertised(cfg: TransceiverConfig) -> list[Any]:
    """The answer's relay candidates, or the config's error."""
    from transceiver import ice  # noqa: PLC0415 - heavy, see _serve

    try:
        return ice.relay_candidates([ice.parse_relay(r) for r in cfg.relays], cfg.region)
    except ValueError as exc:
        raise click.ClickException(f"[transceiver] relays: {exc}") from None


async def _serve(cfg: TransceiverConfig, directory_spec: str, as_json: bool) -> None:
    # aiortc, av and grpc take ~0.5 s to import: `voxrelay --help` loads every
    # command's module, so the service's modules load only when it runs.
    from transceiver import call, ice, signaling  # noqa: PLC0415  heavy, see above

    advertised = _advertised(cfg)
    host, port = _split_listen(cfg.listen)
    keys = api_keys(cfg)
    directory = await _directory(directory_spec, cfg.directory_secret_file)
    service = signaling.Transceiver(
        signaling.ServiceSettings(
            host, port, cfg.private_address, api_keys=keys, cors_origins=cfg.cors_origins,
            client_secret_ttl=cfg.client_secret_ttl_seconds,
            client_secret_max_ttl=cfg.client_secret_max_ttl_seconds,
            drain_grace_seconds=cfg.drain_grace_seconds, probe_port=cfg.probe_port),
        call.CallSettings(
            transceiver_id=cfg.id,
            ports=ice.PortPool(cfg.private_address, cfg.port_min, cfg.port_max),
            advertised=advertised, model_target=cfg.model, max_calls=cfg.max_calls,
            model_streams=cfg.model_streams, model_audio_frames=cfg.model_audio_frames,
            max_pending_per_client=cfg.max_pending_per_client),
        directory,
    )
    try:
        try:
            await service.start()
        except BaseException:
            await service.manager.close()
            await directory.close()
            raise
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {cfg.listen} or probe port: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the directory refused or is unreachable
        raise click.ClickException(
            f"cannot register with directory {directory_spec}: {exc}") from None
    advertised_at = [f"{c.host}:{c.port}" for c in advertised]
    ready = {"event": "ready", "url": service.url, "id": cfg.id, "relays": advertised_at}
    click.echo(json.dumps(ready) if as_json else
               f"transceiver {cfg.id} listening on {service.url}; "
               f"relays {', '.join(advertised_at)}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    click.echo(f"draining: up to {cfg.drain_grace_seconds:g} s for calls to finish", err=True)
    await service.stop()


@click.group()
def transceiver() -> None:
    """Run a transceiver: HTTP signaling and aiortc calls behind the relay."""


@transceiver.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML config ([transceiver] table). "
                   "Default: /etc/voxrelay/voxrelay.toml if present.")
@click.option("--listen", help="Override [transceiver] listen (HOST:PORT for HTTP signaling).")
@click.option("--directory", "directory_spec",
              help="'memory' (standalone, lab), or the directory URL; "
                   "default: [transceiver] directory.")
@click.option("--workers", type=click.IntRange(min=0),
              help="Worker processes behind one signaling front (0: one per core; "
                   "1: this process serves alone). Default: [transceiver] workers "
                   "(0). Worker i is transceiver id+i with its own port-range slice.")
@click.option("--worker", "worker_of", hidden=True,
              help="I/N: run as worker I of N under a front (the front passes this).")
@click.option("--json", "as_json", is_flag=True, help="Print the ready line as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Log calls and ICE state changes.")
def run(config_path: Path | None, listen: str | None, directory_spec: str | None,
        workers: int | None, worker_of: str | None, as_json: bool, verbose: bool) -> None:
    """Serve POST /v1/calls until SIGINT/SIGTERM, then drain.

    Each call gets a UDP port on private_address and a routing-token ufrag
    naming it; the SDP answer advertises only the configured relays.

    Signaling needs a credential: the API key in [transceiver] api_key_file
    (created at first start) for backends, or an ephemeral client secret that
    a backend minted with it (POST /v1/realtime/client_secrets) for browsers.
    The directory needs its secret ([transceiver] directory_secret_file).

    With --workers N > 1 (the default is one per core), this process is the
    host's signaling front and supervisor: N worker processes, each a
    transceiver with id id+i, its slice of the port range and probe port
    probe_port+i, announce themselves; new calls go to the least-loaded one
    that is not draining, a worker that dies is withdrawn from the directory
    and started again, and SIGTERM drains them all.
    """
    setup_logging(logging.INFO if verbose else logging.WARNING, "transceiver")
    try:
        cfg = load_config(config_path).transceiver
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if listen:
        cfg.listen = listen
    directory_spec = directory_spec or cfg.directory
    from transceiver import workers as workers_mod  # noqa: PLC0415 - aiohttp, see _serve

    if worker_of is not None:
        workers_mod.die_with_parent()
        asyncio.run(_serve(_worker_config(cfg, worker_of), directory_spec, True))
        return
    count = cfg.workers if workers is None else workers
    count = count or workers_mod.host_cores()
    if count == 1:
        asyncio.run(_serve(cfg, directory_spec, as_json))
        return
    try:
        workers_mod.plan_workers(cfg, count)
    except ValueError as exc:
        raise click.ClickException(f"[transceiver] workers: {exc}") from None
    _advertised(cfg)  # a bad config fails here, not N times in the workers
    _split_listen(cfg.listen)
    asyncio.run(_serve_front(cfg, count, config_path, directory_spec, as_json, verbose))


def _worker_config(cfg: TransceiverConfig, worker_of: str) -> TransceiverConfig:
    from transceiver import workers as workers_mod  # noqa: PLC0415

    try:
        index, count = (int(part) for part in worker_of.split("/"))
        plan = workers_mod.plan_workers(cfg, count)[index]
    except (ValueError, IndexError):
        raise click.ClickException(f"--worker {worker_of!r}: expected I/N with 0 <= I < N "
                                   "inside the port range") from None
    return workers_mod.worker_config(cfg, plan)


async def _serve_front(cfg: TransceiverConfig, count: int, config_path: Path | None,
                       directory_spec: str, as_json: bool, verbose: bool) -> None:
    from transceiver import workers as workers_mod  # noqa: PLC0415

    host, port = _split_listen(cfg.listen)
    api_keys(cfg)  # creates the shared key file once, before N workers race to
    front = workers_mod.Front(
        cfg, count, worker_argv=workers_mod.worker_argv(config_path, directory_spec, verbose),
        directory_spec=directory_spec, restart_seconds=cfg.worker_restart_seconds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    front.start()
    # Signaling opens once every worker is up (or the wait ran out), so that
    # "the port answers" means "calls can be placed".
    ready_wait = asyncio.ensure_future(front.wait_ready())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({ready_wait, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if front.start_failure:
        stopped.cancel()
        await front.stop(0)
        raise click.ClickException(front.start_failure)
    if not stopped.done():
        try:
            await front.listen(host, port)
        except OSError as exc:
            stopped.cancel()
            await front.stop(0)
            raise click.ClickException(f"cannot listen on {cfg.listen}: {exc}") from None
        ids = [w.plan.transceiver_id for w in front.workers]
        url = f"http://{host}:{front.port}"
        all_up = ready_wait.result()
        ready = {"event": "ready", "url": url, "id": cfg.id, "workers": ids, "all_up": all_up}
        click.echo(json.dumps(ready) if as_json else
                   f"transceiver front listening on {url}; {count} workers, ids "
                   f"{ids[0]}..{ids[-1]}" + ("" if all_up else " (not all up yet: see the log)"))
    ready_wait.cancel()
    await stopped
    click.echo(f"draining {count} workers: up to {cfg.drain_grace_seconds:g} s for calls "
               "to finish", err=True)
    await front.stop(cfg.drain_grace_seconds)
