# SPDX-License-Identifier: Apache-2.0
"""A read-only view of a loaded relay, straight from its pins: no compile, no bcc.

``open_pinview(name)`` opens every map pinned under
``/sys/fs/bpf/voxrelay/<name>/`` with ``BPF_OBJ_GET``, checks each one's
type, key size and value size against ``abi.MAP_LAYOUTS``
(``pins.check_layout``: a pin of another build is refused with a
``MapLayoutError`` that says so), and then reads with raw bpf(2) lookups
(``BPF_MAP_LOOKUP_ELEM``, ``BPF_MAP_GET_NEXT_KEY``), decoding keys and
values with the ctypes structs of ``orchestrator.abi``.

This is what ``voxrelay maps ...`` and ``voxrelay token`` read through: a
bcc compile costs seconds of CPU, and reading needs none of it. Writing
(the sync, the upkeep) goes through bcc (``bccview``), which owns the
typed writes.

Per-CPU maps (``stats``): a lookup returns one 8-byte-aligned slot per
possible CPU (``bpfsys.possible_cpus``), and the view sums them.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
import time
from typing import Any

from orchestrator import abi, bpfsys, pins
from orchestrator.bccmaps import BlockedBy, IPNetwork, endpoint, port_of, relay_addr_of
from orchestrator.errors import MapLayoutError
from orchestrator.media import ConsentRtt, FlowMedia, MediaStats
from orchestrator.relay import FlowEntry, RelayUnavailable, require_pinned, require_root
from orchestrator.sync import MapTransceiver
from orchestrator.verdicts import RelayStat, metric_label, verdict_names

_STATUS_NAMES = {abi.TRANSCEIVER_ACTIVE: "active", abi.TRANSCEIVER_DRAINING: "draining"}


class PinView:
    """``relay.RelayReader`` over the pinned maps of relay ``name`` (open fds, read-only).

    Every read goes to the kernel; nothing is cached. ``close()`` closes the
    fds (the pins, and so the maps, stay).
    """

    def __init__(self, name: str, fds: dict[str, int]) -> None:
        self.name = name
        self._fds = fds
        self._cpus = bpfsys.possible_cpus()

    # --- raw access -------------------------------------------------------------
    def _sizes(self, map_name: str) -> tuple[int, int]:
        layout = abi.MAP_LAYOUTS[map_name]
        return layout.key_size, layout.value_size

    def _lookup(self, map_name: str, key: bytes) -> bytes | None:
        return bpfsys.map_lookup(self._fds[map_name], key, self._sizes(map_name)[1])

    def _keys(self, map_name: str) -> list[bytes]:
        """Every key of the map, each once (see ``bpfsys.map_next_key`` on restarts)."""
        fd, (key_size, _) = self._fds[map_name], self._sizes(map_name)
        seen: dict[bytes, None] = {}
        key = bpfsys.map_next_key(fd, None, key_size)
        while key is not None and key not in seen:
            seen[key] = None
            key = bpfsys.map_next_key(fd, key, key_size)
        return list(seen)

    def _items(self, map_name: str) -> list[tuple[Any, Any]]:
        """(key, value) decoded with the map's abi ctypes; entries deleted meanwhile are skipped."""
        key_type: Any
        value_type: Any
        key_type, value_type = abi.MAP_CTYPES[map_name]  # ctypes types: from_buffer_copy
        out = []
        for raw_key in self._keys(map_name):
            raw_value = self._lookup(map_name, raw_key)
            if raw_value is None:
                continue
            out.append((key_type.from_buffer_copy(raw_key),
                        value_type.from_buffer_copy(raw_value)))
        return out

    # --- RelayReader --------------------------------------------------------------
    def counter(self, index: int) -> int | None:
        """``stats[index]`` summed over CPUs, for any slot of the map (also one a
        newer program counts that this build has no name for); None when the
        map has no such slot."""
        slot = 8  # per-CPU values are 8-byte aligned slots
        value_size = self._sizes("stats")[1]
        raw = bpfsys.map_lookup(self._fds["stats"], struct.pack("=I", index), slot * self._cpus)
        if raw is None:
            return None
        return sum(int.from_bytes(raw[cpu * slot:cpu * slot + value_size], sys.byteorder)
                   for cpu in range(self._cpus))

    def stats(self) -> dict[str, int]:
        """Counter label -> sum over CPUs, for every verdict (as ``bccview`` gives it)."""
        return {metric_label(name): self.counter(RelayStat[name]) or 0
                for name in verdict_names()}

    def transceivers(self) -> dict[int, MapTransceiver]:
        return {
            int(k.value): MapTransceiver(str(relay_addr_of(v.addr, v.family)),
                                         _STATUS_NAMES.get(v.status, f"status {v.status}"))
            for k, v in self._items("transceivers")
        }

    def blocked_sources(self) -> dict[IPNetwork, BlockedBy]:
        """``blocked_sources``: prefix -> why (as ``RelayMaps.blocked_sources``)."""
        out: dict[IPNetwork, BlockedBy] = {}
        for k, v in self._items("blocked_sources"):
            if k.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            bits = int(k.prefixlen) - abi.SOURCE_PREFIX_HDR_BITS
            addr = relay_addr_of(k.addr, k.family)
            out[ipaddress.ip_network(f"{addr}/{bits}")] = BlockedBy(int(v.value))
        return out

    def keys(self) -> dict[int, bytes]:
        """Active key slots: id -> the 16 key bytes (as ``voxrelay.token`` uses them)."""
        return {
            int(k.value): int(v.k0).to_bytes(8, "little") + int(v.k1).to_bytes(8, "little")
            for k, v in self._items("keys")
            if v.active
        }

    def flow_idle_seconds(self) -> float:
        """The relay's flow_idle_seconds, from its ``config`` map (0: never idle)."""
        raw = self._lookup("config", struct.pack("=I", 0))
        if raw is None:
            return 0.0
        return int(abi.RelayConfig.from_buffer_copy(raw).flow_idle_ns) / 1e9

    def flows(self) -> list[FlowEntry]:
        now_ns = time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC
        idle_limit = self.flow_idle_seconds()
        # The transceiver's packets refresh the reverse entry only: a flow is
        # idle when neither direction has seen a packet (as relay.c decides).
        replies = {(bytes(k.addr), int(k.relay_port)): (v, int(v.last_seen_ns))
                   for k, v in self._items("reverse")}
        rows = []
        for k, v in self._items("flows"):
            last_seen = int(v.last_seen_ns)
            reply = replies.get((bytes(v.relay_addr), int(v.relay_port)))
            if reply is not None and bytes(reply[0].client) != bytes(k):
                reply = None  # the port went to another flow since
            if reply is not None:
                last_seen = max(last_seen, reply[1])
            rows.append(FlowEntry(
                client=endpoint(relay_addr_of(k.addr, k.family), port_of(k.port)),
                transceiver_id=int(v.transceiver_id),
                transceiver=endpoint(relay_addr_of(v.txr_addr, v.txr_family), port_of(v.txr_port)),
                relay_port=port_of(v.relay_port),
                age_s=max(0, now_ns - v.created_ns) / 1e9,
                idle_s=max(0, now_ns - last_seen) / 1e9,
                idle_limit_s=idle_limit,
                relay_addr=str(relay_addr_of(v.relay_addr, v.txr_family)),
                media=FlowMedia(
                    to_transceiver=MediaStats.from_map(v.rtp),
                    to_client=None if reply is None else MediaStats.from_map(reply[0].rtp),
                    client_rtt=ConsentRtt.from_map(v.client_rtt),
                    transceiver_rtt=(None if reply is None
                                     else ConsentRtt.from_map(reply[0].transceiver_rtt)),
                ),
            ))
        return rows

    def flow_count(self) -> int:
        return len(self._keys("flows"))

    def flow_capacity(self) -> int:
        return bpfsys.map_info(self._fds["flows"]).max_entries

    def map_ids(self) -> dict[str, int]:
        """Kernel id of each map held open (a reload pins new maps: new ids)."""
        return {name: bpfsys.map_info(fd).id for name, fd in self._fds.items()}

    def close(self) -> None:
        for fd in self._fds.values():
            bpfsys.close(fd)
        self._fds = {}

    def __enter__(self) -> PinView:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_pinview(name: str) -> PinView:
    """The pinned maps of the loaded relay ``name``, read-only (needs root, not bcc).

    Raises RelayUnavailable when the relay is not loaded, and MapLayoutError
    (with what to do) when a pin's type or sizes are not this build's.
    """
    require_root("reading the relay's BPF maps")
    pin_dir = require_pinned(name)
    fds: dict[str, int] = {}
    try:
        for map_name in abi.MAP_NAMES:
            fds[map_name] = bpfsys.obj_get(str(pin_dir / map_name))
            try:
                pins.check_layout(map_name, bpfsys.map_info(fds[map_name]))
            except MapLayoutError as exc:
                raise MapLayoutError(f"relay {name!r}: {exc}. {pins.RELOAD_ADVICE}") from None
    except bpfsys.BpfError as exc:
        for fd in fds.values():
            bpfsys.close(fd)
        raise RelayUnavailable(f"relay {name!r}: cannot open its pins: {exc}") from None
    except BaseException:
        for fd in fds.values():
            bpfsys.close(fd)
        raise
    return PinView(name, fds)
