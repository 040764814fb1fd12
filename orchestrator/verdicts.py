"""The relay's verdicts and drop reasons, read from ``bpf/verdicts.h``.

``enum relay_stat`` in that header is the one source of truth: it indexes the
per-CPU ``stats`` map. This module parses it at import (it is never copied
here), so that a reason added in C shows up in Python, in metrics and in the
CLI without a second edit.

``RelayStat`` is an ``IntEnum`` named after the C enumerators
(``RelayStat.STAT_DROP_TRUNCATED == 7``); ``metric_label`` gives the
Prometheus label (``"drop_truncated"``).
"""

from __future__ import annotations

import enum
import re
from pathlib import Path

ENUM_NAME = "relay_stat"
PREFIX = "STAT_"

_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_ENUMERATOR = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?:=\s*(\S+))?$")


def parse_verdicts(header_text: str) -> dict[str, int]:
    """Return ``{name: value}`` of ``enum relay_stat`` in ``header_text``.

    Values follow C's rules (explicit ``= N`` or previous + 1). Raises
    ValueError when the enum is missing, an enumerator cannot be read, a name
    lacks the STAT_ prefix, two names share a value, STAT_RX_TOTAL is not 0,
    or the enum does not end with STAT_MAX.
    """
    text = _COMMENTS.sub(" ", header_text)
    match = re.search(r"enum\s+" + ENUM_NAME + r"\s*\{(.*?)\}", text, re.DOTALL)
    if match is None:
        raise ValueError(f"enum {ENUM_NAME} not found")
    values: dict[str, int] = {}
    next_value = 0
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
        if explicit is not None:
            try:
                next_value = int(explicit, 0)
            except ValueError:
                raise ValueError(
                    f"enumerator {name} has a value that is not an integer: {explicit!r}"
                ) from None
        if name in values:
            raise ValueError(f"enumerator {name} appears twice in enum {ENUM_NAME}")
        if next_value in values.values():
            raise ValueError(f"enumerator {name} repeats the value {next_value}")
        values[name] = next_value
        next_value += 1
    if values.get("STAT_RX_TOTAL") != 0:
        raise ValueError("STAT_RX_TOTAL must be the first enumerator, with value 0")
    if not values or list(values)[-1] != "STAT_MAX":
        raise ValueError(f"enum {ENUM_NAME} must end with STAT_MAX")
    return values


def _header_path() -> Path:
    from orchestrator.bpfprog import bpf_dir

    return bpf_dir() / "verdicts.h"


VERDICT_VALUES: dict[str, int] = parse_verdicts(_header_path().read_text())
"""``{C name: index}`` for every enumerator, STAT_MAX included."""

RelayStat = enum.IntEnum("RelayStat", VERDICT_VALUES)  # type: ignore[misc]
"""The stats indexes, named as in C."""

STAT_MAX: int = VERDICT_VALUES["STAT_MAX"]
"""Number of counters (the size of the ``stats`` map)."""


def metric_label(name: str) -> str:
    """``"STAT_DROP_TRUNCATED"`` -> ``"drop_truncated"``.

    Raises ValueError for a name that is not a verdict (STAT_MAX is a size,
    not a verdict).
    """
    if name not in VERDICT_VALUES or name == "STAT_MAX":
        raise ValueError(f"unknown verdict {name!r}")
    return name[len(PREFIX):].lower()


def verdict_names() -> list[str]:
    """Every counter's C name in index order, without STAT_MAX."""
    return [n for n, _ in sorted(VERDICT_VALUES.items(), key=lambda kv: kv[1]) if n != "STAT_MAX"]


def from_label(label: str) -> RelayStat:
    """Inverse of ``metric_label``: ``"drop_truncated"`` -> ``RelayStat.STAT_DROP_TRUNCATED``."""
    name = PREFIX + label.upper()
    if name not in VERDICT_VALUES or name == "STAT_MAX":
        raise ValueError(f"unknown verdict label {label!r}")
    return RelayStat[name]


def is_forwarded(stat: int) -> bool:
    """True for the verdicts that send a packet on (XDP_REDIRECT or XDP_TX)."""
    return RelayStat(stat).name.startswith("STAT_FWD_")


def is_drop(stat: int) -> bool:
    return RelayStat(stat).name.startswith("STAT_DROP_")
