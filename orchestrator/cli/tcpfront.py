# SPDX-License-Identifier: Apache-2.0
"""``voxrelay tcpfront``: run the ICE-TCP front (``run``) and show its counters (``stats``)."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from orchestrator import tcpfront as front
from orchestrator.cli import common
from orchestrator.cli.common import (
    CONTEXT,
    config_option,
    emit,
    friendly,
    json_option,
    name_option,
    table,
)
from orchestrator.metrics import serve_tcpfront_metrics
from voxrelay.config import Config
from voxrelay.logs import setup_logging

SUPERVISOR_ENV = "VOXRELAY_TCPFRONT_SUPERVISOR"
"""The supervisor's pid, given to its workers (see ``_die_with_parent``)."""


@click.group(context_settings=CONTEXT)
def tcpfront() -> None:
    """The ICE-TCP front on the relay host (RFC 6544 on [tcpfront] port, carried as UDP)."""


def _config(config_path: Path | None, name: str | None) -> tuple[Config, Path]:
    config = common.config_from(config_path)
    if name:
        config.relay.name = name
    return config, front.stats_path(config.relay, config.tcpfront)


@tcpfront.command("run")
@config_option
@name_option
@click.option("--worker", type=int, default=None, hidden=True,
              help="Serve as worker N of [tcpfront] workers (started by the supervisor).")
@click.option("-v", "--verbose", is_flag=True, help="Log every refusal.")
@friendly
def tcpfront_run(config_path: Path | None, name: str | None, worker: int | None,
                 verbose: bool) -> None:
    """Serve ICE-TCP on [relay] public_address:[tcpfront] port until SIGINT/SIGTERM.

    Tokens and transceivers are read from the relay's pins (the relay must be
    loaded, and the orchestrator syncing it). With more than one worker
    ([tcpfront] workers; 0, the default, is one per CPU) this process starts
    that many on one SO_REUSEPORT port, one event loop each, and serves the
    summed /metrics.
    """
    setup_logging(logging.DEBUG if verbose else logging.INFO, "tcpfront")
    config, stats_path = _config(config_path, name)
    front.check_runnable(config.relay, config.tcpfront)
    if worker is not None:
        _die_with_parent()
        _serve(config, stats_path, worker)
        return
    workers = config.tcpfront.worker_count()
    front.StatsFile(stats_path, workers, create=True).close()
    if config.tcpfront.metrics_listen:
        port = serve_tcpfront_metrics(config.tcpfront.metrics_listen, stats_path)
        click.echo(f"tcpfront metrics on port {port}", err=True)
    if workers == 1:
        _serve(config, stats_path, 0)
        return
    argv = [sys.executable, "-m", "voxrelay.cli", "tcpfront", "run"]
    if config_path is not None:
        argv += ["--config", str(config_path)]
    argv += ["--name", config.relay.name] + (["-v"] if verbose else [])
    env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
    children = [subprocess.Popen([*argv, "--worker", str(i)], env=env)
                for i in range(workers)]
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        # The first worker to end ends them all: a supervisor (systemd) then
        # restarts the whole front, instead of it serving on fewer workers.
        while all(child.poll() is None for child in children):
            time.sleep(0.2)
        first = next(child for child in children if child.poll() is not None)
        if not stopping:
            stop(signal.SIGTERM, None)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    if first.returncode and first.returncode != -signal.SIGTERM:
        raise click.ClickException(f"a TCP front worker exited with status {first.returncode}")


def _die_with_parent() -> None:
    """A worker gets SIGTERM when its supervisor dies, even by SIGKILL (PR_SET_PDEATHSIG),
    so that no worker outlives the front it belongs to."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor is not None and os.getppid() != int(supervisor):
        raise click.ClickException("the TCP front's supervisor is gone")  # died before the prctl


def _serve(config: Config, stats_path: Path, index: int) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await front.serve_worker(config.relay, config.tcpfront, stats_path, index, stop=stop)

    try:
        asyncio.run(main())
    except OSError as exc:
        raise click.ClickException(f"cannot start the TCP front: {exc.strerror or exc}") from None


@tcpfront.command("stats")
@config_option
@name_option
@json_option
@click.option("--all", "show_all", is_flag=True, help="Show refusal reasons that are 0 too.")
@friendly
def tcpfront_stats(config_path: Path | None, name: str | None, as_json: bool,
                   show_all: bool) -> None:
    """Connections, frames and refusals by reason, summed over the workers."""
    _, stats_path = _config(config_path, name)
    try:
        stats = front.read_stats(stats_path)
    except FileNotFoundError:
        raise click.ClickException(f"no TCP front stats at {stats_path}: is "
                                   "`voxrelay tcpfront run` running?") from None
    rows = [[k, v] for k, v in stats.items()
            if v or show_all or not k.startswith("refused_")]
    emit(as_json, stats, table(["COUNTER", "VALUE"], rows))
