# SPDX-License-Identifier: Apache-2.0
"""``voxrelay transceivers``: drain, undrain or remove a transceiver in the directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from orchestrator.cli import common
from orchestrator.cli.common import CONTEXT, directory_options, emit
from voxrelay.directory import Directory


@click.group(context_settings=CONTEXT)
def transceivers() -> None:
    """Drain, undrain or remove a transceiver in the directory.

    The change goes to the directory (the source of truth), and the running
    orchestrator writes it into the maps: a draining transceiver gets no new
    flows while its calls continue; a removed one gets no new flows at all.
    """


def _txr_command(verb: str, doc: str) -> click.Command:
    @click.argument("txr_id", type=int, metavar="ID")
    @directory_options
    def command(txr_id: int, config_path: Path | None, directory_url: str | None,
                as_json: bool) -> None:
        async def go(d: Directory) -> Any:
            if verb == "remove":
                return {"id": txr_id, "removed": await d.remove(txr_id)}
            record = await (d.drain(txr_id) if verb == "drain" else d.undrain(txr_id))
            return record.to_json()

        result = common.run_with(go, common.directory(config_path, directory_url))
        if verb == "remove":
            outcome = "removed" if result["removed"] else "was not in the directory"
            text = f"transceiver {txr_id} {outcome}"
        else:
            text = f"transceiver {txr_id} is {result['status']}"
        emit(as_json, result, text)

    command.__doc__ = doc
    return transceivers.command(verb)(command)


_txr_command("drain", "Stop new flows to transceiver ID; its existing calls continue.")
_txr_command("undrain", "Let transceiver ID take new flows again.")
_txr_command("remove", "Forget transceiver ID: no new flows; its flows age out.")
