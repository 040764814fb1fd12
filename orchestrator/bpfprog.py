# SPDX-License-Identifier: Apache-2.0
"""Compile the XDP relay with bcc, pin its maps, and check reused pins.

``compile_relay`` is the only place that turns ``bpf/relay.c`` into a
``bcc.BPF``; the loader (attach, pin, replace) builds on it. ``bcc`` is
imported lazily, so that pure modules such as ``orchestrator.verdicts`` can
find the C sources through ``bpf_dir`` on machines without bcc.
Running the program on packets (BPF_PROG_TEST_RUN) is lab tooling:
``lab/bpftest.py``.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator import bpfsys, pins
from orchestrator.abi import MAP_NAMES

if TYPE_CHECKING:  # pragma: no cover
    import bcc

RELAY_SOURCE = "relay.c"
RELAY_FUNCTION = "xdp_relay"
"""Name of the XDP entry point in relay.c."""

def import_bcc() -> Any:
    """The ``bcc`` module, imported on first use: the one home of that import.

    bcc is an optional heavy dependency (Debian's python3-bpfcc linked into the
    venv): only compiling and loading need it, so pure modules and the pin
    readers work on machines without it. It is untyped, hence ``Any``.
    Raises ImportError where it is missing (``relay.require_bpf`` turns that
    into the one-line error).
    """
    return importlib.import_module("bcc")


_IFNDEF = re.compile(r"^#ifndef\s+([A-Z][A-Z0-9_]*)\s*$", re.MULTILINE)


def bpf_dir() -> Path:
    """The directory holding relay.c and its headers.

    ``$VOXRELAY_BPF_DIR`` when set (it must hold relay.c): a build of other C
    against the same pins, as the upgrade test does with a copy of bpf/ that
    has one more drop reason. Else the source tree's ``bpf/`` beside the
    package when present (a checkout or an editable install), else
    ``<sys.prefix>/share/voxrelay/bpf`` (where pyproject's data-files put it
    for a regular install).
    """
    override = os.environ.get("VOXRELAY_BPF_DIR")
    if override:
        # No fallback: a mistyped override must not silently build the default C.
        if not (Path(override) / RELAY_SOURCE).is_file():
            raise FileNotFoundError(f"VOXRELAY_BPF_DIR={override} holds no {RELAY_SOURCE}")
        return Path(override)
    candidates = [
        Path(__file__).resolve().parent.parent / "bpf",
        Path(sys.prefix) / "share" / "voxrelay" / "bpf",
    ]
    for candidate in candidates:
        if (candidate / RELAY_SOURCE).is_file():
            return candidate
    raise FileNotFoundError(
        "cannot find the relay's C sources: looked for "
        + " and ".join(str(c / RELAY_SOURCE) for c in candidates)
    )


@lru_cache(maxsize=1)
def tunable_limits() -> frozenset[str]:
    """Names in bpf/consts.h that ``-D`` may override (its ``#ifndef`` values)."""
    text = (bpf_dir() / "consts.h").read_text()
    return frozenset(n for n in _IFNDEF.findall(text) if not n.startswith("VOXRELAY_"))


def relay_cflags(
    overrides: Mapping[str, int] | None = None, pin_dir: Path | str | None = None
) -> list[str]:
    """The clang flags for relay.c: include path, limit overrides, pin dir.

    Raises ValueError for a limit that consts.h does not define or a value
    that is not a positive integer, so that a typo cannot silently compile
    the default.
    """
    flags = [f"-I{bpf_dir()}"]
    known = tunable_limits()
    for name, value in sorted((overrides or {}).items()):
        if name not in known:
            raise ValueError(
                f"unknown relay limit {name!r}; known: {', '.join(sorted(known))}"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"relay limit {name} must be a positive integer, got {value!r}")
        flags.append(f"-D{name}={value}")
    if pin_dir is not None:
        path = str(pin_dir)
        if '"' in path or "\\" in path:
            raise ValueError(f"pin directory {path!r} must not contain quotes or backslashes")
        flags.append(f'-DPIN_DIR="{path}"')
    return flags


def compile_relay(
    overrides: Mapping[str, int] | None = None,
    pin_dir: Path | str | None = None,
    *,
    debug: int = 0,
) -> bcc.BPF:
    """Compile bpf/relay.c and create (or reopen) its maps.

    ``overrides`` replaces limits from consts.h (e.g. ``{"MAX_FLOWS": 4096}``).
    With ``pin_dir``, every map is pinned as ``<pin_dir>/<map name>``: an
    existing pin is reused (a replacement program keeps the flows), a missing
    one is created and pinned. The directory is created if needed. Removing
    pins is the caller's job (see ``pins.unpin_maps``).

    The program itself is not loaded here; ``load_relay_fn`` does that.
    Raises ``orchestrator.errors.MapLayoutError`` when a reused pin has another
    type or key/value size than this build's map.
    """
    bcc = import_bcc()
    if pin_dir is not None:
        Path(pin_dir).mkdir(parents=True, exist_ok=True)
    src = bpf_dir() / RELAY_SOURCE
    bpf = bcc.BPF(src_file=str(src).encode(), cflags=relay_cflags(overrides, pin_dir),
                  debug=debug)
    if pin_dir is not None:
        # bcc reuses a pin of the right name whatever its layout: check it.
        try:
            check_map_layouts(bpf)
        except BaseException:
            bpf.cleanup()
            raise
    return bpf


class LoadedFunction(Protocol):
    """What the loader uses of bcc's loaded function (``BPF.load_func``)."""

    @property
    def fd(self) -> int:
        """The program's fd; ``bpf.cleanup`` closes it."""


def load_relay_fn(bpf: bcc.BPF) -> LoadedFunction:
    """Load (verify) the XDP entry point; returns bcc's function (``.fd``)."""
    fn: LoadedFunction = bpf.load_func(RELAY_FUNCTION, import_bcc().BPF.XDP)
    return fn


XDP_WRITTEN_MAPS: tuple[str, ...] = ("flows", "reverse", "rate", "token_flows")
"""The maps only the XDP program writes (flow state); the orchestrator reads or clears them."""


def check_map_layouts(tables: Any) -> dict[str, Any]:
    """Check every relay map's kernel type and key/value sizes (``pins.check_layout``);
    return ``{name: table}``. Raises MapLayoutError naming the first map that
    differs (typically a pin left by another build)."""
    checked = {}
    for name in MAP_NAMES:
        table = tables[name]
        pins.check_layout(name, bpfsys.map_info(table.get_fd()))
        checked[name] = table
    return checked
