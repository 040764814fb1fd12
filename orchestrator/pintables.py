# SPDX-License-Identifier: Apache-2.0
"""bcc-shaped tables over a relay's pins, without compiling relay.c.

``bccmaps.RelayMaps`` writes through objects that look like bcc tables
(``Key``, ``Leaf``, ``t[k]``, ``t[k] = v``, ``del t[k]``, ``items()``,
``get_fd()``). ``open_pinned_tables(name)`` gives it those objects over the
pinned maps opened with ``BPF_OBJ_GET``, with the key and value types of
``orchestrator.abi`` (generated from bpf/structs.h, so there is still one
source of truth), and raw bpf(2) lookups and updates.

Why: reopening a relay through bcc compiles relay.c (3-20 s of CPU here).
An orchestrator that sees the relay unloaded and loaded again (new maps under
the same pins) must write the directory's state into the new maps within a
second, so its reopen cannot wait for a compile.

Per-CPU maps (``stats``) are read through ``pinview.PinView`` (which sums
the CPUs); these tables refuse them rather than return one CPU's slot.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import Any

from orchestrator import abi, bpfsys, pins
from orchestrator.errors import MapLayoutError
from orchestrator.relay import RelayUnavailable, require_pinned

_PER_CPU = {abi.BPF_MAP_TYPE_PERCPU_ARRAY}


class PinnedTable:
    """One pinned map as a bcc-like table (keys and values are abi ctypes)."""

    def __init__(self, name: str, fd: int, info: bpfsys.MapInfo) -> None:
        self.name = name
        self._fd = fd
        self.info = info
        key_type, leaf_type = abi.MAP_CTYPES[name]
        self.Key: Any = key_type
        self.Leaf: Any = leaf_type
        self._per_cpu = info.type in _PER_CPU

    def get_fd(self) -> int:
        return self._fd

    def _check_scalar(self) -> None:
        if self._per_cpu:
            raise TypeError(f"map {self.name!r} is per-CPU: read it through pinview.PinView")

    def __getitem__(self, key: Any) -> Any:
        self._check_scalar()
        raw = bpfsys.map_lookup(self._fd, bytes(key), ctypes.sizeof(self.Leaf))
        if raw is None:
            raise KeyError(key)
        return self.Leaf.from_buffer_copy(raw)

    def __setitem__(self, key: Any, leaf: Any) -> None:
        self._check_scalar()
        bpfsys.map_update(self._fd, bytes(key), bytes(leaf))

    def __delitem__(self, key: Any) -> None:
        if not bpfsys.map_delete(self._fd, bytes(key)):
            raise KeyError(key)

    def _raw_keys(self) -> Iterator[bytes]:
        """Every key once (a hash walk restarts when a key goes meanwhile)."""
        seen: set[bytes] = set()
        size = ctypes.sizeof(self.Key)
        key = bpfsys.map_next_key(self._fd, None, size)
        while key is not None and key not in seen:
            seen.add(key)
            yield key
            key = bpfsys.map_next_key(self._fd, key, size)

    def items(self) -> list[tuple[Any, Any]]:
        self._check_scalar()
        out = []
        for raw in self._raw_keys():
            value = bpfsys.map_lookup(self._fd, raw, ctypes.sizeof(self.Leaf))
            if value is not None:
                out.append((self.Key.from_buffer_copy(raw), self.Leaf.from_buffer_copy(value)))
        return out


class PinnedTables:
    """Map name -> ``PinnedTable`` of one relay; ``close()`` closes every fd."""

    def __init__(self, tables: dict[str, PinnedTable]) -> None:
        self._tables = tables

    def __getitem__(self, name: str) -> PinnedTable:
        return self._tables[name]

    def map_ids(self) -> dict[str, int]:
        """Kernel map id of each table (what a reload changes)."""
        return {name: t.info.id for name, t in self._tables.items()}

    def close(self) -> None:
        for table in self._tables.values():
            bpfsys.close(table.get_fd())
        self._tables = {}


def open_pinned_tables(name: str) -> PinnedTables:
    """Every pinned map of relay ``name``, layout-checked (needs root, not bcc)."""
    pin_dir = require_pinned(name)
    tables: dict[str, PinnedTable] = {}
    try:
        for map_name in abi.MAP_NAMES:
            fd = bpfsys.obj_get(str(pin_dir / map_name))
            try:
                info = bpfsys.map_info(fd)
                pins.check_layout(map_name, info)
            except BaseException:
                bpfsys.close(fd)
                raise
            tables[map_name] = PinnedTable(map_name, fd, info)
    except MapLayoutError as exc:
        PinnedTables(tables).close()
        raise MapLayoutError(f"relay {name!r}: {exc}. {pins.RELOAD_ADVICE}") from None
    except bpfsys.BpfError as exc:
        PinnedTables(tables).close()
        raise RelayUnavailable(f"relay {name!r}: cannot open its pins: {exc}") from None
    except BaseException:
        PinnedTables(tables).close()
        raise
    return PinnedTables(tables)


def pinned_map_ids(name: str) -> dict[str, int] | None:
    """Kernel id of each map pinned for relay ``name`` now; None unless all are pinned
    (between an unload and the next load, or while a load is pinning)."""
    try:
        pin_dir = pins.pin_dir_for(name)
    except ValueError:
        return None
    ids: dict[str, int] = {}
    for map_name in abi.MAP_NAMES:
        try:
            ids[map_name] = bpfsys.with_pinned_fd(pin_dir / map_name, bpfsys.map_info).id
        except OSError:
            return None
    return ids
