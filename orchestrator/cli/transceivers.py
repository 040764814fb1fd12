# SPDX-License-Identifier: Apache-2.0
"""``voxrelay transceivers``: list, drain, undrain or remove transceivers in the directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from orchestrator.cli import common
from orchestrator.cli.common import CONTEXT, directory_options, emit
from voxrelay.directory import Directory


@click.group(context_settings=CONTEXT)
def transceivers() -> None:
    """List, drain, undrain or remove transceivers in the directory.

    The change goes to the directory (the source of truth) as the operator's
    intent, which outlives orchestrator restarts and the transceiver's own
    re-announces; the running orchestrator writes it into the maps. A
    draining transceiver gets no new flows while its calls continue, and its
    signaling answers new calls with 503 + Retry-After; a removed one is out
    of the maps until `undrain`. Needs the directory secret (see --config).
    """


@transceivers.command("list")
@directory_options
def list_transceivers(config_path: Path | None, directory_url: str | None,
                      as_json: bool) -> None:
    """Every live transceiver and every operator intent (draining, removed)."""

    async def go(d: Directory) -> dict[str, Any]:
        snap = await d.snapshot()
        return {"transceivers": [r.to_json() for _, r in sorted(snap.transceivers.items())],
                "intents": {str(k): v for k, v in sorted((await d.intents()).items())}}

    result = common.run_with(go, common.directory(config_path, directory_url))
    intents = result["intents"]
    rows = [[r["id"], r["address"], r["status"], r["load"], intents.get(str(r["id"]), "")]
            for r in result["transceivers"]]
    live = {str(r["id"]) for r in result["transceivers"]}
    rows += [[k, "-", "(not announced)", "-", v] for k, v in intents.items() if k not in live]
    emit(as_json, result, common.table(["id", "address", "status", "load", "intent"], rows))


def _txr_command(verb: str, doc: str) -> click.Command:
    @click.argument("txr_id", type=click.IntRange(1, 0xFFFFFFFF), metavar="ID")
    @directory_options
    def command(txr_id: int, config_path: Path | None, directory_url: str | None,
                as_json: bool) -> None:
        async def go(d: Directory) -> dict[str, Any]:
            if verb == "remove":
                had_record = await d.evict(txr_id)
                return {"id": txr_id, "intent": "removed", "had_record": had_record}
            record = await (d.drain(txr_id) if verb == "drain" else d.undrain(txr_id))
            return {"id": txr_id, "intent": "draining" if verb == "drain" else None,
                    "record": None if record is None else record.to_json()}

        result = common.run_with(go, common.directory(config_path, directory_url))
        if verb == "remove":
            text = (f"transceiver {txr_id} removed: out of the maps until "
                    f"`voxrelay transceivers undrain {txr_id}`")
        elif verb == "drain":
            text = f"transceiver {txr_id} draining: no new flows, its calls continue"
        else:
            text = f"transceiver {txr_id} admitted: takes new flows while it is announced"
        if verb != "remove" and result["record"] is None:
            text += " (it is not announced right now; the intent waits for it)"
        emit(as_json, result, text)

    command.__doc__ = doc
    return transceivers.command(verb)(command)


_txr_command("drain", "Stop new flows to transceiver ID; its existing calls continue.\n\n"
             "Sticks across orchestrator restarts and re-announces until `undrain`.")
_txr_command("undrain", "Clear the operator's drain or remove: transceiver ID takes new flows.")
_txr_command("remove", "Take transceiver ID out of the maps, even while it keeps announcing "
             "itself, until `undrain`. Its existing flows age out.")
