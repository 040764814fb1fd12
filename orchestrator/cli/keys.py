# SPDX-License-Identifier: Apache-2.0
"""``voxrelay keys``: the routing-token keys, in the directory."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli import common
from orchestrator.cli.common import CONTEXT, directory_options, emit


@click.group(context_settings=CONTEXT)
def keys() -> None:
    """Manage the routing-token keys (in the directory; the orchestrator syncs the map)."""


@keys.command("rotate")
@directory_options
def keys_rotate(config_path: Path | None, directory_url: str | None, as_json: bool) -> None:
    """Make a new current key; the previous one stays valid until the next rotation.

    Transceivers mint with the new key from their next key refresh; tokens
    minted with the previous key keep working until the rotation after this.
    """
    ring = common.run_with(lambda d: d.rotate_keys(), common.directory(config_path, directory_url))
    data = {"current": ring.current, "active": list(ring.active),
            "fingerprints": {str(i): common.key_fingerprint(k)
                             for i, k in ring.active_keys().items()}}
    emit(as_json, data, f"current key id {ring.current}; active {', '.join(map(str, ring.active))}")
