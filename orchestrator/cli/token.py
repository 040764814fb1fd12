# SPDX-License-Identifier: Apache-2.0
"""``voxrelay token``: mint or inspect a routing token, to debug routing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from orchestrator.cli import common
from orchestrator.cli.common import CONTEXT, emit, relay_read_options, table
from orchestrator.sync import keyring_from_map
from voxrelay import token as tk
from voxrelay.probe import DEFAULT_PROBE_PORT


@click.group(context_settings=CONTEXT)
def token() -> None:
    """Mint or inspect a routing token (a server ICE ufrag), to debug routing."""


def _keys_for(key_hex: str | None, key_id: int | None, config_path: Path | None,
              name: str | None) -> tuple[dict[int, bytes], int]:
    """(active keys, current id): from --key-hex, else from the relay's maps."""
    if key_hex is not None:
        try:
            key = bytes.fromhex(key_hex)
        except ValueError:
            raise ValueError("--key-hex is not hexadecimal") from None
        if len(key) != tk.KEY_BYTES:
            raise ValueError(f"--key-hex must be {tk.KEY_BYTES} bytes "
                             f"({2 * tk.KEY_BYTES} hex digits), got {len(key)}")
        kid = 0 if key_id is None else key_id
        return {kid: key}, kid
    slots = common.view(config_path, name).keys()
    if not slots:
        raise ValueError(
            "the relay has no active token key: is `voxrelay orchestrator run` running?")
    current = keyring_from_map(slots).current if key_id is None else key_id
    if current is None or current not in slots:
        raise ValueError(f"token key id {current} is not active in the relay's keys map")
    return slots, current


def _token_json(t: tk.Token) -> dict[str, Any]:
    return {"version": t.version, "key_id": t.key_id, "transceiver_id": t.transceiver_id,
            "port": t.port, "expiry": t.expiry, "nonce": t.nonce}


@token.command("mint")
@click.option("--transceiver", "txr_id", type=int, required=True,
              help="Transceiver id to route to.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="The transceiver's UDP port for this call.")
@click.option("--probe", "for_probe", is_flag=True,
              help=f"Route to the transceiver's probe port ({DEFAULT_PROBE_PORT}): a token for "
                   "`voxrelay probe --token` on the client side, which needs no directory.")
@click.option("--ttl", type=int, default=3600, show_default=True,
              help="Seconds the token may start flows.")
@click.option("--key-hex", default=None,
              help="Key as 32 hex digits (default: the relay's current key).")
@click.option("--key-id", type=click.IntRange(0, 255), default=None,
              help="Key id (default: current).")
@relay_read_options
def token_mint(txr_id: int, port: int | None, for_probe: bool, ttl: int, key_hex: str | None,
               key_id: int | None, config_path: Path | None, name: str | None,
               as_json: bool) -> None:
    """Mint a token that routes to TRANSCEIVER:PORT (prints the ufrag).

    \b
    For a probe from where clients are (no directory there):
      voxrelay token mint --probe --transceiver 7      # on a relay host
      voxrelay probe --relay VIP --token UFRAG          # anywhere clients are
    """
    if (port is None) == (not for_probe):
        raise click.UsageError("give exactly one of --port PORT or --probe")
    to_port = DEFAULT_PROBE_PORT if port is None else port
    slots, current = _keys_for(key_hex, key_id, config_path, name)
    ufrag = tk.mint(slots[current], key_id=current, transceiver_id=txr_id, port=to_port, ttl=ttl)
    emit(as_json, {"ufrag": ufrag, **_token_json(tk.decode(ufrag)[0])}, ufrag)


@token.command("inspect")
@click.argument("ufrag")
@click.option("--key-hex", default=None, help="Check the MAC with this key (32 hex digits).")
@click.option("--verify/--no-verify", default=None,
              help="Check MAC and expiry against the relay's keys map "
                   "(default: when --key-hex is given).")
@relay_read_options
def token_inspect(ufrag: str, key_hex: str | None, verify: bool | None, config_path: Path | None,
                  name: str | None, as_json: bool) -> None:
    """Decode a ufrag; with keys, check it as the kernel would (exit 1 if it would drop it).

    A ufrag of the form "<token>:<remote>" (a STUN USERNAME) is accepted too.
    """
    ufrag = ufrag.split(":", 1)[0]
    try:
        decoded, mac = tk.decode(ufrag)
    except tk.TokenError as exc:
        raise click.ClickException(f"{exc.reason}: {exc}") from None
    data: dict[str, Any] = {**_token_json(decoded), "mac": f"{mac:016x}",
                            "expires_in": decoded.expiry - int(time.time())}
    check = key_hex is not None if verify is None else verify
    verdict = "not checked (give --key-hex or --verify)"
    failed: str | None = None
    if check:
        slots, _ = _keys_for(key_hex, decoded.key_id if key_hex else None, config_path, name) \
            if key_hex else (common.view(config_path, name).keys(), None)
        try:
            tk.verify(ufrag, slots)
            verdict = "valid: the relay would create a flow"
        except tk.TokenError as exc:
            verdict = failed = f"{exc.reason}: {exc}"
    data["verdict"] = verdict
    text = table(["FIELD", "VALUE"], [[k, v] for k, v in data.items()])
    emit(as_json, data, text)
    if failed:
        raise SystemExit(1)
