# SPDX-License-Identifier: Apache-2.0
"""Write ``orchestrator/abi.py``, the Python mirror of the relay's kernel ABI.

The C headers are the one source of truth; ``abi.py`` is generated from them
and committed, so that the orchestrator, the CLI and the metrics know the map
layouts and the counter numbers without compiling relay.c (3-20 s) on every
``voxrelay maps ...`` call, and so that a review sees every ABI change as a
diff of that file.

Where each part comes from:

- ``Stat``, ``STAT_MAX``, ``RETIRED``: ``enum relay_stat`` in bpf/verdicts.h,
  parsed here. The parser enforces the header's rules (explicit ``= N`` on
  every enumerator, ascending, ``STAT_RETIRED_<N>`` for retired numbers), since
  the C compiler cannot.
- ``STATS_MAP_SIZE`` and ``TRANSCEIVER_*``: ``#define`` lines of the headers.
- ``MAP_NAMES``: the ``RELAY_MAP(...)`` and ``RELAY_MAP_FLAGS(...)`` lines of
  bpf/maps.h (exactly the pinned maps), in their order.
- ``MAP_LAYOUTS`` and the ctypes structures: bcc compiles relay.c once and the
  kernel reports each map's type, key and value size (``BPF_OBJ_GET_INFO``);
  the structures are written from bcc's JSON description of each map's key
  and value (what bcc itself builds ``table.Key``/``table.Leaf`` from), so no
  field is ever copied by hand. Compiling needs root and bcc (CI has both).

``python -m orchestrator.genabi`` rewrites the file; ``--check`` exits 1
with a diff when the committed file is stale (tests/unit/test_abi.py runs it).
"""

from __future__ import annotations

import argparse
import ctypes
import difflib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# bpfprog imports the abi.py this module writes: that works while abi.py is
# stale, since compile_relay() without pins never checks layouts against it.
from orchestrator import bpfprog, bpfsys

ENUM_NAME = "relay_stat"
PREFIX = "STAT_"
RETIRED_PREFIX = "STAT_RETIRED_"
OUTPUT = Path(__file__).resolve().parent / "abi.py"

_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_ENUMERATOR = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?:=\s*(\S+))?$")
# A RELAY_MAP or RELAY_MAP_FLAGS declaration, possibly over several lines: group 1
# is the map type, group 2 the name, its 4th argument (keys and values hold no comma).
_RELAY_MAP = re.compile(r"^RELAY_MAP(?:_FLAGS)?\(\s*\"(\w+)\"\s*,\s*[^,]+,\s*[^,]+,\s*(\w+)\s*,",
                        re.MULTILINE)
_SIZE_ASSERT = re.compile(r"_Static_assert\(\s*sizeof\(struct\s+(\w+)\)\s*==\s*(\d+)")


def parse_verdicts(header_text: str) -> dict[str, int]:
    """Return ``{name: value}`` of ``enum relay_stat`` in ``header_text``, STAT_MAX last.

    Raises ValueError unless the enum keeps the ABI rules of bpf/verdicts.h:
    every name has the STAT_ prefix; every enumerator but STAT_MAX has an
    explicit integer ``= N`` (so that moving a line cannot renumber it);
    numbers are unique and ascending (a new reason goes at the end, and
    STAT_MAX, implicit, is then one past the highest); STAT_RX_TOTAL is 0;
    a ``STAT_RETIRED_<N>`` placeholder has the value N.
    """
    text = _COMMENTS.sub(" ", header_text)
    match = re.search(r"enum\s+" + ENUM_NAME + r"\s*\{(.*?)\}", text, re.DOTALL)
    if match is None:
        raise ValueError(f"enum {ENUM_NAME} not found")
    values: dict[str, int] = {}
    for raw in match.group(1).split(","):
        item = raw.strip()
        if not item:
            continue
        parsed = _ENUMERATOR.match(item)
        if parsed is None:
            raise ValueError(f"cannot parse enumerator {item!r} of enum {ENUM_NAME}")
        name, explicit = parsed.groups()
        if not name.startswith(PREFIX):
            raise ValueError(f"enumerator {name} of enum {ENUM_NAME} lacks the {PREFIX} prefix")
        if name in values:
            raise ValueError(f"enumerator {name} appears twice in enum {ENUM_NAME}")
        previous = max(values.values(), default=-1)
        if name == "STAT_MAX":
            if explicit is not None:
                raise ValueError("STAT_MAX must stay implicit (one past the highest number)")
            values[name] = previous + 1
            continue
        if "STAT_MAX" in values:
            raise ValueError(f"enum {ENUM_NAME} must end with STAT_MAX")
        if explicit is None:
            raise ValueError(f"enumerator {name} needs an explicit number (= N): "
                             "the numbers are a pinned-map ABI")
        try:
            value = int(explicit, 0)
        except ValueError:
            raise ValueError(
                f"enumerator {name} has a value that is not an integer: {explicit!r}"
            ) from None
        if value in values.values():
            raise ValueError(f"enumerator {name} repeats the value {value}")
        if value < previous:
            raise ValueError(f"enumerator {name} = {value} comes after {previous}: "
                             "numbers ascend, a new reason goes at the end")
        if name.startswith(RETIRED_PREFIX) and name != f"{RETIRED_PREFIX}{value}":
            raise ValueError(f"retired enumerator {name} must be named "
                             f"{RETIRED_PREFIX}{value} after its number")
        values[name] = value
    if values.get("STAT_RX_TOTAL") != 0:
        raise ValueError("STAT_RX_TOTAL must be the first enumerator, with value 0")
    if list(values)[-1] != "STAT_MAX":
        raise ValueError(f"enum {ENUM_NAME} must end with STAT_MAX")
    return values


def parse_define(header_text: str, name: str) -> int:
    """The integer value of ``#define <name> <value>`` in ``header_text``."""
    found = re.search(r"^#define\s+" + name + r"\s+(\w+)", header_text, re.MULTILINE)
    if found is None:
        raise ValueError(f"#define {name} not found")
    return int(found.group(1), 0)


def parse_pinned_maps(maps_header: str) -> tuple[str, ...]:
    """Names of the ``RELAY_MAP(...)`` declarations (the pinned maps), in order."""
    names = tuple(m[2] for m in _RELAY_MAP.finditer(_COMMENTS.sub(" ", maps_header)))
    if not names:
        raise ValueError("no RELAY_MAP(...) declaration found")
    return names


def parse_size_asserts(structs_header: str) -> dict[str, int]:
    """``{struct name: size}`` from ``_Static_assert(sizeof(struct x) == N, ...)``."""
    return {m[0]: int(m[1]) for m in _SIZE_ASSERT.findall(structs_header)}


# --- from bcc's map descriptions to ctypes source ----------------------------------------

# bcc's description names C types as clang spells them; fixed-width ctypes
# keep the generated file independent of the platform's long.
_SCALARS = {
    "char": "ctypes.c_char",
    "signed char": "ctypes.c_int8",
    "unsigned char": "ctypes.c_uint8",
    "short": "ctypes.c_int16",
    "unsigned short": "ctypes.c_uint16",
    "int": "ctypes.c_int32",
    "unsigned int": "ctypes.c_uint32",
    "long long": "ctypes.c_int64",
    "unsigned long long": "ctypes.c_uint64",
    "long": "ctypes.c_int64",
    "unsigned long": "ctypes.c_uint64",
}


def camel(c_name: str) -> str:
    """``"relay_config"`` -> ``"RelayConfig"``."""
    return "".join(part.capitalize() for part in c_name.split("_"))


@dataclass(frozen=True)
class StructSource:
    c_name: str
    packed: bool
    fields: tuple[tuple[str, str], ...]
    """(field name, ctypes expression)."""


def _type_expr(desc: Any, structs: dict[str, StructSource]) -> str:
    """The ctypes expression for one bcc type description, collecting structs."""
    if isinstance(desc, str):
        if desc not in _SCALARS:
            raise ValueError(f"C type {desc!r} has no ctypes mapping in genabi")
        return _SCALARS[desc]
    c_name, fields, kind = desc[0], desc[1], desc[2]
    if kind not in ("struct", "struct_packed"):
        raise ValueError(f"{kind} {c_name}: only structs are mirrored")
    out = []
    for field in fields:
        if len(field) == 3 and isinstance(field[2], int):
            raise ValueError(f"struct {c_name}.{field[0]} is a bitfield: not mirrored")
        expr = _type_expr(field[1], structs)
        if len(field) == 3:
            for dim in reversed(field[2]):
                expr = f"{expr} * {dim}"
        out.append((field[0], expr))
    source = StructSource(c_name, kind == "struct_packed", tuple(out))
    if structs.setdefault(c_name, source) != source:
        raise ValueError(f"struct {c_name} is described two ways")
    return camel(c_name)


@dataclass(frozen=True)
class KernelMap:
    """One pinned map as bcc describes it and the kernel reports it."""

    name: str
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    key: Any
    """bcc's JSON description of the key (a C type name or a struct)."""
    value: Any
    """Same for the value (per CPU, for per-CPU maps)."""


def kernel_maps(names: Sequence[str]) -> list[KernelMap]:
    """Compile relay.c with bcc (default limits, no pins) and describe ``names``."""
    bcc = bpfprog.import_bcc()

    bpf = bpfprog.compile_relay()
    try:
        found = []
        for name in names:
            table = bpf.get_table(name)
            info = bpfsys.map_info(table.map_fd)
            key = json.loads(bcc.lib.bpf_table_key_desc(bpf.module, name.encode()))
            value = json.loads(bcc.lib.bpf_table_leaf_desc(bpf.module, name.encode()))
            found.append(KernelMap(name, info.type, info.key_size, info.value_size,
                                   info.max_entries, key, value))
        return found
    finally:
        bpf.cleanup()


# --- rendering ----------------------------------------------------------------------------

_HEADER = '''\
# SPDX-License-Identifier: Apache-2.0
"""The relay's kernel ABI: counter numbers, pinned maps, key and value layouts.

GENERATED by `python -m orchestrator.genabi` from bpf/verdicts.h, bpf/maps.h
and bpf/structs.h (compiled once with bcc). Do not edit: change the C and
regenerate; tests/bpf/test_abi_current.py fails while this file is stale.

Use ``orchestrator.verdicts`` for labels and classification of the counters.
"""

from __future__ import annotations

import ctypes
import enum
from typing import NamedTuple

from orchestrator.layouts import check_layouts
'''


_CHECK_LAYOUTS = """\
# Last, the generated text checks itself (orchestrator/layouts.py says why).
check_layouts(_STRUCT_SIZES, MAP_CTYPES, MAP_LAYOUTS)
"""


def _render_struct(struct: StructSource) -> list[str]:
    cls = camel(struct.c_name)
    lines = [f"class {cls}(ctypes.Structure):",
             f'    """``struct {struct.c_name}`` (bpf/structs.h)."""', ""]
    if struct.packed:
        # bcc packs its own ctypes view of this struct (any padding it finds
        # becomes explicit fields): so do we, so that both lay it out alike.
        lines.append("    _pack_ = 1")
    lines.append("    _fields_ = [")
    lines += [f'        ("{name}", {expr}),' for name, expr in struct.fields]
    lines.append("    ]")
    return lines


def _dependency_order(structs: dict[str, StructSource]) -> list[str]:
    """Struct names with every nested struct before its user (ctypes needs that)."""
    by_class = {camel(c_name): c_name for c_name in structs}
    ordered: list[str] = []

    def visit(c_name: str) -> None:
        if c_name in ordered:
            return
        for _, expr in structs[c_name].fields:
            inner = expr.split(" * ")[0]
            if inner in by_class:
                visit(by_class[inner])
        ordered.append(c_name)

    for c_name in structs:
        visit(c_name)
    return ordered


def _struct_sizes(ordered: Sequence[str], structs: dict[str, StructSource],
                  c_sizes: dict[str, int]) -> dict[str, int]:
    """What ctypes makes of each struct, refused where C's _Static_assert says otherwise."""
    source = "import ctypes\n" + "\n".join(
        line for c_name in ordered for line in _render_struct(structs[c_name]))
    namespace: dict[str, Any] = {}
    # Our own rendering of bcc's description, run to let ctypes lay it out.
    exec(compile(source, "<genabi structs>", "exec"), namespace)  # noqa: S102
    sizes = {}
    for c_name in ordered:
        size = ctypes.sizeof(namespace[camel(c_name)])
        if c_name in c_sizes and c_sizes[c_name] != size:
            raise ValueError(f"struct {c_name}: C asserts {c_sizes[c_name]} bytes, "
                             f"bcc's layout gives {size}")
        sizes[c_name] = size
    return sizes


def render(verdicts: dict[str, int], stats_map_size: int, consts: dict[str, int],
           maps: Sequence[KernelMap], c_sizes: dict[str, int]) -> str:
    """The text of abi.py."""
    structs: dict[str, StructSource] = {}
    ctypes_of: dict[str, tuple[str, str]] = {}
    for m in maps:
        ctypes_of[m.name] = (_type_expr(m.key, structs), _type_expr(m.value, structs))
    ordered = _dependency_order(structs)
    sizes = _struct_sizes(ordered, structs, c_sizes)

    stats = {n: v for n, v in verdicts.items() if n != "STAT_MAX"}
    retired = sorted(v for n, v in stats.items() if n.startswith(RETIRED_PREFIX))
    out = [_HEADER, ""]
    out.append("class Stat(enum.IntEnum):")
    out.append('    """``enum relay_stat``: the index of the ``stats`` map.')
    out.append("")
    out.append("    Numbers never change and are never reused (bpf/verdicts.h).")
    out.append('    """')
    out.append("")
    out += [f"    {name} = {value}" for name, value in stats.items()]
    out += ["", ""]
    out.append(f"STAT_MAX = {verdicts['STAT_MAX']}")
    out.append('"""One past the highest number in use (not the map\'s size)."""')
    out.append("")
    out.append(f"RETIRED: frozenset[int] = frozenset({{{', '.join(map(str, retired))}}})"
               if retired else "RETIRED: frozenset[int] = frozenset()")
    out.append('"""Numbers of retired reasons (``Stat.STAT_RETIRED_<n>``): kept, never reused."""')
    out.append("")
    out.append(f"STATS_MAP_SIZE = {stats_map_size}")
    out.append('"""Entries of the ``stats`` map: fixed, with headroom for new reasons."""')
    out.append("")
    for name, value in consts.items():
        out.append(f"{name} = {value}")
        out.append(f'"""{CONSTS.get(name, "bpf/consts.h")}"""')
    out += ["", ""]
    types = sorted({(m.map_type, _MAP_TYPE_NAMES.get(m.map_type, "")) for m in maps})
    for number, type_name in types:
        if not type_name:
            raise ValueError(f"map type {number} has no name in genabi")
        out.append(f"BPF_MAP_TYPE_{type_name} = {number}")
    out += ["", ""]
    out.append("class MapLayout(NamedTuple):")
    out.append('    """A pinned map\'s shape as the kernel reports it.')
    out.append("")
    out.append("    Not max_entries: that varies with the -D limits a relay is compiled with.")
    out.append('    """')
    out.append("")
    out.append("    map_type: int")
    out.append("    key_size: int")
    out.append("    value_size: int")
    out += ["", ""]
    for c_name in ordered:
        out += _render_struct(structs[c_name])
        out += ["", ""]
    out.append("_STRUCT_SIZES: dict[type[ctypes.Structure], tuple[str, int]] = {")
    out += [f'    {camel(c_name)}: ("{c_name}", {sizes[c_name]}),' for c_name in ordered]
    out.append("}")
    out.append('"""Each struct\'s C name and size as bcc laid it out (and structs.h asserts)."""')
    out += ["", ""]
    out.append("MAP_NAMES: tuple[str, ...] = (")
    out += [f'    "{m.name}",' for m in maps]
    out.append(")")
    out.append('"""The pinned maps in bpf/maps.h order: every pin in a relay\'s pin directory."""')
    out.append("")
    out.append("MAP_LAYOUTS: dict[str, MapLayout] = {")
    for m in maps:
        out.append(f'    "{m.name}": MapLayout(BPF_MAP_TYPE_{_MAP_TYPE_NAMES[m.map_type]}, '
                   f"{m.key_size}, {m.value_size}),")
    out.append("}")
    out.append("")
    out.append("MAP_CTYPES: dict[str, tuple[type, type]] = {")
    for m in maps:
        key_expr, value_expr = ctypes_of[m.name]
        out.append(f'    "{m.name}": ({key_expr}, {value_expr}),')
    out.append("}")
    out.append('"""(key, value) ctypes per map; the value is one CPU\'s for per-CPU maps."""')
    out.append("")
    out += ["", _CHECK_LAYOUTS]
    return "\n".join(out)


# uapi enum bpf_map_type, for the ones a relay may use.
_MAP_TYPE_NAMES = {1: "HASH", 2: "ARRAY", 5: "PERCPU_HASH", 6: "PERCPU_ARRAY", 9: "LRU_HASH",
                   10: "LRU_PERCPU_HASH", 11: "LPM_TRIE"}


CONSTS = {
    "TRANSCEIVER_ACTIVE": "``transceiver.status``: takes new flows (bpf/consts.h).",
    "TRANSCEIVER_DRAINING": "``transceiver.status``: keeps its flows, gets no new ones.",
    "SOURCE_PREFIX_HDR_BITS": "``struct source_prefix``: prefixlen bits before the address.",
    "MAX_PRIVATE_ADDRS": "``struct private_addrs``: slots for the relay's private addresses.",
    "MEDIA_JITTER_SAMPLE": "bpf/media.h: RTP packets timed for jitter: 1 in this many (default).",
}
"""The #defines of bpf/consts.h that abi.py mirrors, with their docstrings."""


def generate() -> str:
    """Read the headers, compile relay.c once, and return the text of abi.py."""
    src = bpfprog.bpf_dir()
    verdicts_h = (src / "verdicts.h").read_text()
    consts_h = (src / "consts.h").read_text()
    verdicts = parse_verdicts(verdicts_h)
    stats_map_size = parse_define(verdicts_h, "STATS_MAP_SIZE")
    consts = {n: parse_define(consts_h, n) for n in CONSTS}
    maps = kernel_maps(parse_pinned_maps((src / "maps.h").read_text()))
    stats = next(m for m in maps if m.name == "stats")
    if (stats.key_size, stats.value_size, stats.max_entries) != (4, 8, stats_map_size):
        raise ValueError(f"stats must be __u32 -> __u64 per CPU, {stats_map_size} entries "
                         "(bpf/maps.h sizes it with STATS_MAP_SIZE)")
    text = render(verdicts, stats_map_size, consts, maps,
                  parse_size_asserts((src / "structs.h").read_text()))
    namespace: dict[str, Any] = {}
    # Import the text once before anyone commits it: its own size asserts must hold.
    exec(compile(text, str(OUTPUT), "exec"), namespace)  # noqa: S102
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.genabi",
        description="Write orchestrator/abi.py from bpf/ (needs root and bcc).")
    parser.add_argument("--check", action="store_true",
                        help="do not write: exit 1 with a diff if the file is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = generate()
    current = args.output.read_text() if args.output.exists() else ""
    if args.check:
        if current == text:
            return 0
        sys.stdout.writelines(difflib.unified_diff(
            current.splitlines(keepends=True), text.splitlines(keepends=True),
            f"{args.output} (committed)", f"{args.output} (from bpf/)"))
        sys.stderr.write(f"\n{args.output} is stale: run python -m orchestrator.genabi\n")
        return 1
    if current != text:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
