"""What the CLI, the sync and the exporter read from (and write to) a loaded relay.

``RelayView`` is a small protocol over the pinned BPF maps, so that the CLI
and the metrics can be tested with an in-memory fake, and so that only
``open_relay`` knows how the real maps are reached (orchestrator/maps.py over
the pins that orchestrator/loader.py made).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

from orchestrator.sync import RelayMaps


@dataclass(frozen=True)
class FlowEntry:
    """One row of the ``flows`` map, for display (never a metric label)."""

    client: str            # addr:port as the public side sees it
    transceiver_id: int
    transceiver: str       # transceiver addr:port
    relay_port: int
    age_s: float           # since created
    idle_s: float          # since the last packet

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RelayView(RelayMaps, Protocol):
    name: str

    def stats(self) -> dict[str, int]:
        """Counter name (verdicts.h, lower-case, no STAT_ prefix) -> sum over CPUs."""
        ...

    def flows(self) -> list[FlowEntry]: ...

    def flow_count(self) -> int: ...

    def flow_capacity(self) -> int: ...


class RelayUnavailable(Exception):
    """The relay's maps cannot be opened; the message says what to do."""


def open_relay(name: str) -> RelayView:
    """The pinned maps of relay ``name`` (needs root, bcc, and a loaded relay)."""
    from orchestrator.relay_maps import open_pinned_relay  # bcc-dependent, imported late

    return open_pinned_relay(name)
