# SPDX-License-Identifier: Apache-2.0
"""What the CLI, the sync and the exporter read from (and write to) a loaded relay.

``RelayView`` is a small protocol over the pinned BPF maps, so that the CLI
and the metrics can be tested with an in-memory fake, and so that only the
openers know how the real maps are reached: ``bccview.open_relay`` (reads and
writes through bcc, for the sync) and ``pinview.open_pinview`` (reads only,
straight from the pins, without compiling relay.c).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from orchestrator import bpfprog, pins
from orchestrator.abi import MAP_NAMES
from orchestrator.media import FlowMedia
from orchestrator.sync import MapTransceiver, SyncMaps

if TYPE_CHECKING:
    from orchestrator.bccmaps import BlockedBy, IPNetwork

FLOW_ACTIVE_SECONDS = 10.0
"""A flow that saw a packet within this many seconds is "active": a live call
passes media at 50 packets/s, and even a muted one a consent check every ~5 s."""


@dataclass(frozen=True)
class FlowEntry:
    """One row of the ``flows`` map, for display (never a metric label)."""

    client: str            # addr:port as the public side sees it
    transceiver_id: int
    transceiver: str       # transceiver addr:port
    relay_port: int
    age_s: float           # since created
    idle_s: float          # since the last packet, either way
    idle_limit_s: float = 0.0
    """The relay's ``flow_idle_seconds`` (0: flows never expire)."""
    relay_addr: str = ""
    """The relay-side private address the flow sends from (with ``relay_port``)."""
    media: FlowMedia = field(default_factory=FlowMedia)
    """What the relay saw of the flow's RTP and consent checks (bpf/media.h)."""

    @property
    def state(self) -> str:
        """``active`` (a packet within FLOW_ACTIVE_SECONDS), ``idle``, or
        ``expired``: unseen for longer than the relay's flow_idle_seconds. The
        XDP program treats an expired flow as gone (its client's next check
        makes a new one, its port may be taken over) but deletes it only then,
        so it stays in the map until something reuses its slot."""
        if self.idle_limit_s and self.idle_s > self.idle_limit_s:
            return "expired"
        return "active" if self.idle_s < FLOW_ACTIVE_SECONDS else "idle"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "media": self.media.to_json(), "state": self.state}


class RelayReader(Protocol):
    """What a read-only view gives (``pinview.PinView``, and every ``RelayView``)."""

    name: str

    def stats(self) -> dict[str, int]:
        """Counter name (verdicts.h, lower-case, no STAT_ prefix) -> sum over CPUs."""
        ...

    def flows(self) -> list[FlowEntry]: ...

    def flow_count(self) -> int: ...

    def flow_capacity(self) -> int: ...

    def transceivers(self) -> dict[int, MapTransceiver]: ...

    def keys(self) -> dict[int, bytes]: ...

    def blocked_sources(self) -> dict[IPNetwork, BlockedBy]:
        """Source prefix -> why it may not open a flow (``bccmaps.BlockedBy``)."""
        ...


class RelayView(RelayReader, SyncMaps, Protocol):
    """A reader that the sync can also write through (``bccview.BpfRelayView``)."""


@runtime_checkable
class Reloadable(Protocol):
    """A view that can follow the relay being unloaded and loaded again
    (``bccview.BpfRelayView``; the service checks every fraction of a second)."""

    def pins_replaced(self) -> bool:
        """The pins now name other maps than the ones this view holds."""
        ...

    def reopen(self) -> None:
        """Hold the maps pinned now (then the caller resyncs them)."""
        ...


class RelayUnavailable(Exception):
    """The relay's maps cannot be opened; the message says what to do."""


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise RelayUnavailable(f"{what} needs root: run this with sudo")


def require_bpf(what: str) -> None:
    """One clear error before anything that needs root and bcc."""
    require_root(what)
    try:
        bpfprog.import_bcc()
    except ImportError:
        raise RelayUnavailable(
            "bcc is not importable from this Python: run scripts/setup.sh "
            "(it links Debian's python3-bpfcc into the venv)"
        ) from None


def require_pinned(name: str) -> Path:
    """The pin directory of relay ``name``; RelayUnavailable unless every map is pinned there.

    Checked before anything opens a pin, so that opening can never create an
    empty map beside a relay (bcc would) nor read half a relay.
    """
    try:
        pin_dir = pins.pin_dir_for(name)
    except ValueError as exc:
        raise RelayUnavailable(str(exc)) from None
    missing = [m for m in MAP_NAMES if not (pin_dir / m).exists()]
    if missing:
        what = "nothing" if len(missing) == len(MAP_NAMES) else f"no {', '.join(missing)}"
        raise RelayUnavailable(
            f"no relay {name!r} is loaded ({what} pinned under {pin_dir}): "
            f"run `voxrelay relay load` first"
        )
    return pin_dir
