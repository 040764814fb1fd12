# SPDX-License-Identifier: Apache-2.0
"""``RelayView`` over the real pinned maps of a loaded relay, through bcc.

``open_relay(name)`` reopens ``/sys/fs/bpf/voxrelay/<name>/*`` without
loading or attaching anything: it compiles relay.c with the pin directory
through ``loader.open_maps`` (bcc's BPF_TABLE_PINNED opens each existing pin
instead of creating a map; every pin is checked), with the limits
(-D MAX_FLOWS=...) taken from the pinned maps' own sizes, so that a relay
loaded with other limits reopens too.
Before compiling it checks that every pin exists, so that opening can never
create an empty map beside a relay.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

from orchestrator import bpfprog, bpfsys, loader
from orchestrator.bccmaps import BlockedBy, IPNetwork, RelayMaps, TransceiverStatus
from orchestrator.pintables import open_pinned_tables, pinned_map_ids
from orchestrator.pinview import PinView, open_pinview
from orchestrator.relay import FlowEntry, RelayUnavailable, require_bpf, require_pinned
from orchestrator.sync import MapTransceiver

# Map name -> the consts.h limit that sizes it, so that the reopening compile
# declares each map with the size it was pinned with.
_LIMIT_OF_MAP = {
    "flows": "MAX_FLOWS",
    "transceivers": "MAX_TRANSCEIVERS",
    "keys": "MAX_KEYS",
    "rate": "MAX_RATE_SOURCES",
    "reverse": "MAX_RELAY_PORTS",
    "token_flows": "MAX_TOKENS_TRACKED",
    "blocked_sources": "MAX_BLOCKED_PREFIXES",
}

class BpfRelayView:
    """Implements ``RelayView`` (and so the sync's ``SyncMaps``) over ``bccmaps.RelayMaps``.

    Writes go through bcc (the typed writes live there); every read, the
    sync's included, comes from ``reader`` (a ``pinview.PinView`` over the
    same pins), so that there is one way to read the maps.
    """

    def __init__(self, name: str, relay_maps: RelayMaps, reader: PinView) -> None:
        self.name = name
        self.maps = relay_maps
        self.reader = reader
        self._status = TransceiverStatus
        self.map_ids = reader.map_ids()
        """Kernel ids of the maps this view writes and reads (``pins_replaced``)."""
        self._close_maps: Callable[[], None] = functools.partial(_cleanup, relay_maps)
        self.reopens = 0

    # --- following a reload -----------------------------------------------------
    def pins_replaced(self) -> bool:
        """True when every pin is there again but names other maps than the ones
        held: the relay was unloaded and loaded anew (``relay load`` after
        ``relay unload``), so this view writes maps no program reads any more.
        False meanwhile (pins missing) and after a ``--replace`` (same maps)."""
        now = pinned_map_ids(self.name)
        return now is not None and now != self.map_ids

    def reopen(self) -> None:
        """Hold the maps pinned now instead (fast: raw bpf(2) tables, no
        compile); the old fds are closed. The caller then resyncs: the new
        maps start empty but for what the loader wrote (config, blocked sources)."""
        tables = open_pinned_tables(self.name)
        try:
            reader = open_pinview(self.name)
            relay_maps = RelayMaps(tables)
        except BaseException:
            tables.close()
            raise
        old_reader, close_old = self.reader, self._close_maps
        self.maps, self.reader, self.map_ids = relay_maps, reader, reader.map_ids()
        self._close_maps = tables.close
        self.reopens += 1
        old_reader.close()
        close_old()

    # --- SyncMaps ---------------------------------------------------------------
    def transceivers(self) -> dict[int, MapTransceiver]:
        return self.reader.transceivers()

    def upsert_transceivers(self, entries: dict[int, MapTransceiver]) -> None:
        for txr_id, entry in entries.items():
            self.maps.set_transceiver(txr_id, entry.address, self._status[entry.status.upper()])

    def delete_transceivers(self, ids: Iterable[int]) -> None:
        for txr_id in ids:
            self.maps.delete_transceiver(txr_id)

    def delete_flows_of(self, ids: Iterable[int]) -> int:
        """Delete the flows (and their reverse entries) to transceivers ``ids``;
        how many went. For transceivers that are gone, not for drained ones."""
        gone = set(ids)
        return sum(self.maps.delete_flow(f.client_addr, f.client_port)
                   for f in self.maps.flows() if f.transceiver_id in gone)

    def keys(self) -> dict[int, bytes]:
        return self.reader.keys()

    def blocked_sources(self) -> dict[IPNetwork, BlockedBy]:
        return self.reader.blocked_sources()

    def set_keys(self, keys: dict[int, bytes]) -> None:
        for key_id, key in keys.items():
            self.maps.set_key(key_id, key)

    def retire_keys(self, ids: Iterable[int]) -> None:
        for key_id in ids:
            self.maps.retire_key(key_id)

    # --- RelayView --------------------------------------------------------------
    # --- RelayView: reads from the pins (one reader, the exporter's and the CLI's) ------
    def stats(self) -> dict[str, int]:
        return self.reader.stats()

    def flows(self) -> list[FlowEntry]:
        return self.reader.flows()

    def flow_count(self) -> int:
        return self.reader.flow_count()

    def flow_capacity(self) -> int:
        return self.reader.flow_capacity()

    def close(self) -> None:
        """Close the map fds (the pins, and so the maps, stay)."""
        self.reader.close()
        self._close_maps()


def _cleanup(relay_maps: RelayMaps) -> None:
    """Close the fds of the bcc object behind ``relay_maps``."""
    bpf = getattr(relay_maps.table("config"), "bpf", None)
    if bpf is not None:
        bpf.cleanup()


def open_relay(name: str) -> BpfRelayView:
    """The pinned maps of relay ``name`` (needs root, bcc, and a loaded relay)."""
    require_bpf("reading the relay's BPF maps")
    pin_dir = require_pinned(name)
    limits: dict[str, int] = {}
    known = bpfprog.tunable_limits()
    for map_name, limit in _LIMIT_OF_MAP.items():
        if limit not in known:
            continue
        limits[limit] = bpfsys.with_pinned_fd(pin_dir / map_name, bpfsys.map_info).max_entries
    try:
        relay_maps = loader.open_maps(name, limits=limits)
    except loader.LoaderError as exc:
        raise RelayUnavailable(f"relay {name!r}: {exc}") from None
    try:
        reader = open_pinview(name)
    except BaseException:
        _cleanup(relay_maps)
        raise
    return BpfRelayView(name, relay_maps, reader)
