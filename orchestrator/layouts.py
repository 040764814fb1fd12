# SPDX-License-Identifier: Apache-2.0
"""The import-time check of ``orchestrator/abi.py``: its ctypes lay out as bcc did.

abi.py is generated data (classes and tables); this is the logic it runs on
itself when imported, kept out of the generated text so that it is written,
typed and read once.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping

_REGENERATE = "regenerate with python -m orchestrator.genabi"


def check_layouts(struct_sizes: Mapping[type[ctypes.Structure], tuple[str, int]],
                  map_ctypes: Mapping[str, tuple[type, type]],
                  map_layouts: Mapping[str, tuple[int, int, int]]) -> None:
    """Refuse (RuntimeError) where ctypes lays a struct or a map out otherwise than bcc did.

    A hand edit of abi.py, or a platform whose ctypes packs differently:
    either way a map read or write through these classes would be garbage.
    ``struct_sizes`` maps each class to its C name and size; ``map_layouts``
    gives (type, key size, value size) per map.
    """
    for cls, (c_name, size) in struct_sizes.items():
        if ctypes.sizeof(cls) != size:
            raise RuntimeError(f"orchestrator.abi: struct {c_name} is {size} bytes in bpf/, "
                               f"ctypes makes {ctypes.sizeof(cls)}: {_REGENERATE}")
    for name, (key, value) in map_ctypes.items():
        sizes = (ctypes.sizeof(key), ctypes.sizeof(value))
        if sizes != tuple(map_layouts[name][1:]):
            raise RuntimeError(f"orchestrator.abi: map {name} has key/value sizes "
                               f"{tuple(map_layouts[name][1:])} in bpf/, ctypes makes {sizes}: "
                               f"{_REGENERATE}")
