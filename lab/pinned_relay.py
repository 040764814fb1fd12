# SPDX-License-Identifier: Apache-2.0
"""relay.c compiled with its maps pinned under a fresh name, for tests and the bench.

Both sides of a running relay, without attaching it to any interface: the
compiling handle (``bpf``, and ``kernel``, typed access through it) plays the
kernel's side, and ``view`` is the orchestrator's side, reopened from the
pins exactly as ``voxrelay orchestrator run`` does. Everything is closed and
unpinned on the way out, also on error.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import bpfprog, pins
from orchestrator.bccmaps import RelayMaps
from orchestrator.bccview import open_relay as open_pinned_relay


@dataclass
class PinnedRelay:
    name: str
    pin_dir: Path
    bpf: Any
    """The compiling bcc handle (load the program from it for BPF_PROG_TEST_RUN)."""
    kernel: RelayMaps
    view: Any
    """The orchestrator's view over the pins (orchestrator.bccview.open_relay)."""


@contextlib.contextmanager
def fresh_pin_dir(prefix: str = "vxlab") -> Iterator[Path]:
    """A pin directory of a name nobody uses (``<prefix>-<random>``); what was
    pinned there is unpinned on exit, and /sys/fs/bpf/voxrelay too when this
    made it and nobody else is using it."""
    path = pins.pin_dir_for(f"{prefix}-{secrets.token_hex(4)}")
    root_existed = path.parent.exists()
    try:
        yield path
    finally:
        pins.unpin_maps(path)
        if not root_existed:
            with contextlib.suppress(OSError):  # another user appeared meanwhile
                path.parent.rmdir()


@contextlib.contextmanager
def pinned_relay(limits: Mapping[str, int], prefix: str = "vxlab") -> Iterator[PinnedRelay]:
    """Compile relay.c with ``limits``, pin its maps in a ``fresh_pin_dir`` and
    reopen them; close and unpin everything on exit."""
    with fresh_pin_dir(prefix) as pin_dir:
        bpf = view = None
        try:
            bpf = bpfprog.compile_relay(dict(limits), pin_dir)
            kernel = RelayMaps(bpf)
            view = open_pinned_relay(pin_dir.name)
            yield PinnedRelay(pin_dir.name, pin_dir, bpf, kernel, view)
        finally:
            if view is not None:
                view.close()
            if bpf is not None:
                bpf.cleanup()
