# SPDX-License-Identifier: Apache-2.0
"""``voxrelay orchestrator run``: directory, map sync, /metrics."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import click

from orchestrator.bccview import open_relay
from orchestrator.cli import common
from orchestrator.cli.common import (
    CONTEXT,
    config_option,
    friendly,
    name_option,
)
from orchestrator.service import Running, run_orchestrator
from orchestrator.upkeep import BpfRelayUpkeep
from voxrelay.logs import setup_logging


@click.group(context_settings=CONTEXT)
def orchestrator() -> None:
    """Run the orchestrator: directory, map sync, /metrics."""


@orchestrator.command("run")
@config_option
@name_option
@click.option("--probe-relay", default=None, metavar="HOST[:PORT]",
              help="Probe every active transceiver through this relay address "
                   "and export the results.")
@click.option("--probe-interval", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@click.option("--upkeep-interval", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds between rewrites of the config's clock offset (token expiry follows "
                   "NTP) and re-resolving the transceivers' next hops.")
@click.option("-v", "--verbose", is_flag=True, help="Log every map write.")
@friendly
def orchestrator_run(config_path: Path | None, name: str | None, probe_relay: str | None,
                     probe_interval: float, upkeep_interval: float, verbose: bool) -> None:
    """Keep the relay's maps equal to the directory; serve the directory API and /metrics.

    Takes over the maps pinned by `voxrelay relay load` (no reload): kill and
    restart it at will, the XDP program keeps forwarding meanwhile. Stops on
    SIGINT/SIGTERM and leaves the maps as they are.
    """
    setup_logging(logging.INFO if verbose else logging.WARNING, "orchestrator")
    config = common.config_from(config_path)
    if name:
        config.relay.name = name
    view = open_relay(config.relay.name)
    upkeep = BpfRelayUpkeep(view)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready(running: Running) -> None:
            metrics_host = config.orchestrator.metrics_listen.rsplit(":", 1)[0]
            click.echo(f"orchestrator for relay {config.relay.name!r}: directory "
                       f"{config.orchestrator.directory}, metrics on "
                       f"{metrics_host}:{running.metrics_port}", err=True)

        await run_orchestrator(config, view, stop, probe_relay=probe_relay,
                               probe_interval=probe_interval, on_ready=ready,
                               upkeep=upkeep, upkeep_interval=upkeep_interval)

    try:
        asyncio.run(main())
    except OSError as exc:
        raise click.ClickException(f"cannot start: {exc.strerror or exc}") from None
