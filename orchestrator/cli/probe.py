# SPDX-License-Identifier: Apache-2.0
"""``voxrelay probe``: a STUN round trip through relay -> transceiver (orchestrator/probe.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from orchestrator.cli import common
from orchestrator.cli.common import CONTEXT, directory_options
from orchestrator.probe import probe as run_probe
from voxrelay.addr import parse_hostport
from voxrelay.directory import Directory, Keyring, TransceiverRecord
from voxrelay.probe import mint_probe_token


@click.command(context_settings=CONTEXT)
@click.option("--relay", "relay_addr", required=True, metavar="HOST[:PORT]",
              help="The relay's public address (port default 3478). Probe from where clients are.")
@click.option("--token", "ufrag", default=None,
              help="A probe token (`voxrelay token mint --probe --transceiver ID` on a relay "
                   "host): with it the probe needs no directory, only the relay's VIP.")
@click.option("--transceiver", "txr_id", type=int, default=None,
              help="Mint a probe token for this transceiver "
                   "(keys and probe port from the directory).")
@click.option("--timeout", type=float, default=1.0, show_default=True, help="Seconds per attempt.")
@click.option("--attempts", type=click.IntRange(1, 10), default=3, show_default=True)
@directory_options
def probe(relay_addr: str, ufrag: str | None, txr_id: int | None, timeout: float, attempts: int,
          config_path: Path | None, directory_url: str | None, as_json: bool) -> None:
    """Send a STUN Binding Request through relay -> transceiver and expect the answer.

    The request carries a routing token for the transceiver's probe port,
    where its probe responder answers (orchestrator/probe.py explains the
    design). Exits 0 when the answer comes back through the relay, 1 with
    the reason when it does not.

    \b
    From where clients are, with no access to the private directory:
      voxrelay probe --relay 192.0.2.1 --token "$(voxrelay token mint --probe --transceiver 7)"
    (the token minted on a relay host and carried over; it lives --ttl seconds).
    --transceiver ID mints one itself, with keys from the directory.
    """
    relay = parse_hostport(relay_addr, 3478, what="relay")
    if ufrag is not None and txr_id is None:
        token = ufrag
    elif txr_id is not None and ufrag is None:

        async def fetch(d: Directory) -> tuple[TransceiverRecord | None, Keyring]:
            return await d.get_transceiver(txr_id), await d.keyring()

        record, ring = common.run_with(fetch, common.directory(config_path, directory_url))
        if record is None:
            raise click.ClickException(
                f"transceiver {txr_id} is not in the directory (gone or expired)")
        if ring.current is None:
            raise click.ClickException("the directory has no token key yet")
        token = mint_probe_token(ring.keys, ring.current, txr_id, record.probe_port)
    else:
        raise click.UsageError("give exactly one of --token or --transceiver")
    result = run_probe(relay, token, timeout=timeout, attempts=attempts, transceiver_id=txr_id)
    if result.ok:
        text = (f"ok: transceiver {result.transceiver_id} answered through {result.relay} "
                f"in {result.rtt_ms:.2f} ms (seen as {result.mapped_address})")
    else:
        text = f"probe failed: {result.reason}"
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
    elif result.ok:
        click.echo(text)
    else:
        click.echo(text, err=True)
    if not result.ok:
        raise SystemExit(1)

