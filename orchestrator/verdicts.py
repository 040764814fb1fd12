# SPDX-License-Identifier: Apache-2.0
"""The relay's verdicts and drop reasons: labels and classes over ``orchestrator.abi``.

``enum relay_stat`` in ``bpf/verdicts.h`` is the one source of truth: it
indexes the per-CPU ``stats`` map, and its numbers are an ABI (explicit,
never renumbered, never reused; a retired reason stays as
``STAT_RETIRED_<N>``). ``orchestrator/abi.py`` is generated from it by
``python -m orchestrator.genabi`` and committed, so importing this module
reads no C and needs no compiler; a test fails while abi.py is stale.

``RelayStat`` is the ``IntEnum`` named after the C enumerators
(``RelayStat.STAT_DROP_TRUNCATED == 7``); ``metric_label`` gives the
Prometheus label (``"drop_truncated"``). Retired numbers are members of the
enum (so that any index of the map has a name) but are not verdicts: they
have no label and are left out of ``verdict_names``.
"""

from __future__ import annotations

# RelayStat, the name the orchestrator uses, as an import alias rather than
# `RelayStat = Stat`: mypy then treats it as the class itself (a type, and
# subscriptable by member name).
from orchestrator.abi import RETIRED, STAT_MAX, STATS_MAP_SIZE, Stat
from orchestrator.abi import Stat as RelayStat

__all__ = [
    "PREFIX", "RETIRED", "STATS_MAP_SIZE", "STAT_MAX", "VERDICT_VALUES", "RelayStat",
    "from_label", "is_drop", "is_forwarded", "is_pass", "metric_label", "verdict_names",
]

PREFIX = "STAT_"

VERDICT_VALUES: dict[str, int] = {**{s.name: s.value for s in Stat}, "STAT_MAX": STAT_MAX}
"""``{C name: index}`` for every enumerator of the C enum, STAT_MAX included."""

_VERDICTS: tuple[Stat, ...] = tuple(s for s in Stat if s.value not in RETIRED)
_BY_LABEL: dict[str, Stat] = {s.name[len(PREFIX):].lower(): s for s in _VERDICTS}


def metric_label(name: str) -> str:
    """``"STAT_DROP_TRUNCATED"`` -> ``"drop_truncated"``.

    Raises ValueError for a name that is not a verdict (STAT_MAX is a size,
    not a verdict; a retired number counts nothing any more).
    """
    label = name[len(PREFIX):].lower() if name.startswith(PREFIX) else ""
    if _BY_LABEL.get(label) is None or _BY_LABEL[label].name != name:
        raise ValueError(f"unknown verdict {name!r}")
    return label


def verdict_names() -> list[str]:
    """Every live counter's C name in index order (no STAT_MAX, no retired number)."""
    return [s.name for s in _VERDICTS]


def from_label(label: str) -> RelayStat:
    """Inverse of ``metric_label``: ``"drop_truncated"`` -> ``RelayStat.STAT_DROP_TRUNCATED``."""
    stat = _BY_LABEL.get(label)
    if stat is None:
        raise ValueError(f"unknown verdict label {label!r}")
    return stat


def is_forwarded(stat: int) -> bool:
    """True for the verdicts that send a packet on (XDP_REDIRECT or XDP_TX)."""
    return RelayStat(stat).name.startswith("STAT_FWD_")


def is_drop(stat: int) -> bool:
    """True for the drop reasons (XDP_DROP)."""
    return RelayStat(stat).name.startswith("STAT_DROP_")


def is_pass(stat: int) -> bool:
    """True for the verdicts that hand the packet to the kernel stack (XDP_PASS)."""
    return RelayStat(stat).name.startswith("STAT_PASS_")
