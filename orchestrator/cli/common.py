# SPDX-License-Identifier: Apache-2.0
"""What every orchestrator command shares: options, one-line errors, tables, openers.

Every command prints a table (or one line) by default and JSON with
``--json``; every expected failure (not root, bcc missing, relay not loaded,
directory unreachable, a bad token) is one line on stderr and a non-zero
exit, never a traceback (``friendly``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from orchestrator import tcpfront
from orchestrator.errors import LoaderError, MapLayoutError
from orchestrator.pins import ensure_bpffs
from orchestrator.pinview import open_pinview
from orchestrator.relay import RelayReader, RelayUnavailable
from orchestrator.service import open_directory
from voxrelay.config import Config, ConfigError, load_config
from voxrelay.directory import Directory, DirectoryError

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
R = TypeVar("R")
CONTEXT = {"help_option_names": ["-h", "--help"]}


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn the failures an operator can fix into one-line errors."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            if os.geteuid() == 0:
                # Before any pin is looked at: under `ip netns exec` /sys/fs/bpf is hidden.
                note = ensure_bpffs()
                if note:
                    click.echo(f"note: {note}", err=True)
            return fn(*args, **kwargs)
        except LoaderError as exc:
            raise click.ClickException(str(exc)) from None
        except (RelayUnavailable, MapLayoutError, ConfigError, DirectoryError) as exc:
            raise click.ClickException(str(exc)) from None
        except PermissionError as exc:
            raise click.ClickException(
                f"permission denied ({exc.filename or exc.strerror}): run this as root"
            ) from None
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        except ImportError as exc:
            raise click.ClickException(
                f"this build cannot import {exc.name or exc}: run scripts/setup.sh to reinstall"
            ) from None

    return wrapper


def config_option(fn: F) -> F:
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
        envvar="VOXRELAY_CONFIG", default=None,
        help="TOML config (default /etc/voxrelay/voxrelay.toml if present; env VOXRELAY_CONFIG).",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON instead of a table.")(fn)


def name_option(fn: F) -> F:
    return click.option(
        "--name", default=None,
        help="Relay name (maps under /sys/fs/bpf/voxrelay/<name>/); default: [relay] name.",
    )(fn)


def directory_option(fn: F) -> F:
    return click.option(
        "--directory", "directory_url", default=None, metavar="URL",
        help="Directory URL (http://... embedded, redis://...); default from [orchestrator].",
    )(fn)


def relay_read_options(fn: Callable[P, R]) -> Callable[P, R]:
    """``--config``, ``--name``, ``--json`` and ``friendly``: a command reading one relay."""
    return config_option(name_option(json_option(friendly(fn))))


def directory_options(fn: Callable[P, R]) -> Callable[P, R]:
    """``--config``, ``--directory``, ``--json`` and ``friendly``: a command on the directory."""
    return config_option(directory_option(json_option(friendly(fn))))


def config_from(path: Path | None) -> Config:
    return load_config(path)


def open_relay(name: str) -> RelayReader:
    """What the read commands (maps, token) read through: the pins, without compiling.

    So reading needs root and a loaded relay, not bcc: each missing is a
    one-line error (``pinview.open_pinview``).
    """
    return open_pinview(name)


def view(config_path: Path | None, name: str | None) -> RelayReader:
    """The maps of relay ``name`` (default: the config's [relay] name), through ``open_relay``."""
    return open_relay(name or config_from(config_path).relay.name)


def directory(config_path: Path | None, url: str | None) -> Directory:
    """The directory this config names (or ``url``), with the directory secret."""
    return open_directory(config_from(config_path), url)


def run_with(coro_fn: Callable[[Directory], Awaitable[R]], directory: Directory) -> R:
    """Run ``coro_fn(directory)`` to completion, closing the directory after."""

    async def main() -> R:
        try:
            return await coro_fn(directory)
        finally:
            await directory.close()

    return asyncio.run(main())


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines)


def emit(as_json: bool, data: object, text: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else text)


def key_fingerprint(key: bytes) -> str:
    """Identifies a key in output without printing it."""
    return hashlib.sha256(key).hexdigest()[:12]


def tcpfront_summary(config_path: Path | None,
                     name: str | None) -> tuple[Path, dict[str, dict[str, int]] | None]:
    """The ICE-TCP front's stats file for this config (and --name), and its
    grouped counters (``orchestrator.tcpfront.summary``), None when no front
    has run here."""
    config = config_from(config_path)
    if name:
        config.relay.name = name
    path = tcpfront.stats_path(config.relay, config.tcpfront)
    return path, tcpfront.read_summary(path)
