# SPDX-License-Identifier: Apache-2.0
"""The verdict numbers are an ABI: bpf/verdicts.h, its generated mirror abi.py, verdicts.py.

The pinned ``stats`` map outlives programs and dashboards keep a counter by its
label, so a number, once given, means the same reason forever. ``LEDGER``
below is the record of every number ever given; it only ever grows.
"""

from __future__ import annotations

import ctypes
import re

import pytest

from orchestrator import abi, genabi, verdicts
from orchestrator.bpfprog import bpf_dir
from voxrelay.token import TokenError, decode

# Every number ever given in enum relay_stat, with the name it was given.
# Append a line when adding a reason; never edit or remove one. A retired
# reason keeps its number as STAT_RETIRED_<n> (test_ledger allows that).
LEDGER = {
    0: "STAT_RX_TOTAL",
    1: "STAT_PASS_NOT_RELAY",
    2: "STAT_PASS_NO_NEIGH",
    3: "STAT_PASS_UNCONFIGURED",
    4: "STAT_FWD_NEW_FLOW",
    5: "STAT_FWD_TO_TRANSCEIVER",
    6: "STAT_FWD_TO_CLIENT",
    7: "STAT_DROP_TRUNCATED",
    8: "STAT_DROP_IP_OPTIONS",
    9: "STAT_DROP_FRAGMENT",
    10: "STAT_DROP_BAD_LENGTH",
    11: "STAT_DROP_NOT_STUN",
    12: "STAT_DROP_NOT_BINDING",
    13: "STAT_DROP_NO_USERNAME",
    14: "STAT_DROP_TOKEN_MALFORMED",
    15: "STAT_DROP_TOKEN_UNKNOWN_KEY",
    16: "STAT_DROP_TOKEN_BAD_MAC",
    17: "STAT_DROP_TOKEN_EXPIRED",
    18: "STAT_DROP_TRANSCEIVER_UNKNOWN",
    19: "STAT_DROP_TRANSCEIVER_DRAINING",
    20: "STAT_DROP_RATE_LIMITED",
    21: "STAT_DROP_TOKEN_FLOW_CAP",
    22: "STAT_DROP_PORT_EXHAUSTED",
    23: "STAT_DROP_NO_REVERSE",
    24: "STAT_DROP_SPOOFED_SOURCE",
    25: "STAT_DROP_FIB_FAIL",
    26: "STAT_DROP_IPV6",
    27: "STAT_DROP_INGRESS_NOT_PUBLIC",
    28: "STAT_DROP_INGRESS_NOT_PRIVATE",
    29: "STAT_DROP_BLOCKED_SOURCE",
    30: "STAT_FWD_TO_CLIENT_LEARNT_NH",
    31: "STAT_FWD_NEW_FLOW6",
    32: "STAT_FWD_TO_TRANSCEIVER6",
    33: "STAT_FWD_TO_CLIENT6",
    34: "STAT_FWD_TO_CLIENT6_LEARNT_NH",
    35: "STAT_DROP_IPV6_EXT_HDR",
    36: "STAT_DROP_UDP6_ZERO_CSUM",
    37: "STAT_DROP_NO_CSUM_TO_IPV6",
    38: "STAT_DROP_HEADROOM",
}


def test_ledger() -> None:
    # Renumbering, reusing a number or reordering shows up here, not on a dashboard.
    for number, name in LEDGER.items():
        assert abi.Stat(number).name in (name, f"STAT_RETIRED_{number}"), number
    new = sorted({s.value for s in abi.Stat} - set(LEDGER))
    assert not new, f"numbers {new} are not in LEDGER: add them (and never change them)"


def test_retired_numbers_are_kept_and_not_verdicts() -> None:
    for number in abi.RETIRED:
        assert abi.Stat(number).name == f"STAT_RETIRED_{number}"
        assert abi.Stat(number).name not in verdicts.verdict_names()
        with pytest.raises(ValueError, match="unknown verdict"):
            verdicts.metric_label(abi.Stat(number).name)
    assert abi.RETIRED == {s.value for s in abi.Stat if s.name.startswith("STAT_RETIRED_")}


def test_numbers_are_unique_and_fit_the_map() -> None:
    values = [s.value for s in abi.Stat]
    assert len(values) == len(set(values))  # IntEnum would alias a repeated number silently
    assert len(abi.Stat.__members__) == len(values)
    assert abi.STAT_MAX == max(values) + 1
    assert abi.STAT_MAX <= abi.STATS_MAP_SIZE
    assert abi.MAP_LAYOUTS["stats"] == abi.MapLayout(abi.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8)


def test_parse_follows_c_numbering() -> None:
    text = """
    /* a comment with enum relay_stat { STAT_FAKE } inside */
    enum relay_stat {
        STAT_RX_TOTAL = 0,   /* counted at entry */
        STAT_A = 1,          // one
        STAT_RETIRED_2 = 2,  /* was STAT_B */
        STAT_C = 0x5,
        STAT_MAX
    };
    """
    assert genabi.parse_verdicts(text) == {
        "STAT_RX_TOTAL": 0, "STAT_A": 1, "STAT_RETIRED_2": 2, "STAT_C": 5, "STAT_MAX": 6,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("enum other { STAT_RX_TOTAL = 0, STAT_MAX };", "enum relay_stat not found"),
        ("enum relay_stat { STAT_RX_TOTAL = 0, DROP_X = 1, STAT_MAX };",
         "enumerator DROP_X of enum relay_stat lacks the STAT_ prefix"),
        ("enum relay_stat { STAT_A = 1, STAT_RX_TOTAL = 2, STAT_MAX };",
         "STAT_RX_TOTAL must be the first enumerator, with value 0"),
        ("enum relay_stat { STAT_RX_TOTAL = 0, STAT_A = 1 };",
         "enum relay_stat must end with STAT_MAX"),
        ("enum relay_stat { STAT_RX_TOTAL = 0, STAT_MAX, STAT_A = 1 };",
         "enum relay_stat must end with STAT_MAX"),
        ("enum relay_stat { STAT_RX_TOTAL = 0, STAT_A = 0, STAT_MAX };",
         "enumerator STAT_A repeats the value 0"),
        ("enum relay_stat { STAT_RX_TOTAL = 0, STAT_A = FOO, STAT_MAX };",
         "enumerator STAT_A has a value that is not an integer: 'FOO'"),
        ("enum relay_stat { STAT_RX_TOTAL = 0, STAT_A B, STAT_MAX };",
         "cannot parse enumerator 'STAT_A B' of enum relay_stat"),
        # The ABI rules, which C itself would accept:
        ("enum relay_stat { STAT_RX_TOTAL = 0, STAT_A, STAT_MAX };",
         "enumerator STAT_A needs an explicit number (= N): the numbers are a pinned-map ABI"),
        ("enum relay_stat { STAT_RX_TOTAL = 0, STAT_A = 2, STAT_B = 1, STAT_MAX };",
         "enumerator STAT_B = 1 comes after 2: numbers ascend, a new reason goes at the end"),
        ("enum relay_stat { STAT_RX_TOTAL = 0, STAT_RETIRED_3 = 1, STAT_MAX };",
         "retired enumerator STAT_RETIRED_3 must be named STAT_RETIRED_1 after its number"),
        ("enum relay_stat { STAT_RX_TOTAL = 0, STAT_A = 1, STAT_MAX = 9 };",
         "STAT_MAX must stay implicit (one past the highest number)"),
        ("enum relay_stat { STAT_RX_TOTAL = 0, STAT_A = 1, STAT_A = 2, STAT_MAX };",
         "enumerator STAT_A appears twice in enum relay_stat"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        genabi.parse_verdicts(text)
    assert str(info.value) == message


def test_real_header_matches_abi_by_an_independent_read() -> None:
    # Read the header with a different method than genabi's parser: every
    # line inside the enum that starts with STAT_, with its explicit number.
    text = (bpf_dir() / "verdicts.h").read_text()
    body = text[text.index("enum relay_stat {"):text.index("};")]
    entries = re.findall(r"^\s*(STAT_[A-Z0-9_]+)(?:\s*=\s*(\d+))?", body, re.MULTILINE)
    assert entries[-1] == ("STAT_MAX", "")
    assert [(s.name, str(s.value)) for s in abi.Stat] == entries[:-1]
    define = re.search(r"^#define STATS_MAP_SIZE (\d+)$", text, re.MULTILINE)
    assert define is not None and int(define.group(1)) == abi.STATS_MAP_SIZE
    assert list(verdicts.VERDICT_VALUES) == [n for n, _ in entries]
    assert verdicts.STAT_MAX == abi.STAT_MAX
    assert verdicts.RelayStat.STAT_RX_TOTAL == 0
    assert verdicts.verdict_names() == [
        n for n, _ in entries[:-1] if not n.startswith("STAT_RETIRED_")]


def test_maps_and_structs_match_the_headers() -> None:
    # The C side of what abi.py claims, read without bcc: the RELAY_MAP lines
    # and the _Static_assert sizes. (test_abi.py regenerates abi.py with bcc.)
    maps_h = (bpf_dir() / "maps.h").read_text()
    assert abi.MAP_NAMES == tuple(re.findall(
        r"^RELAY_MAP(?:_FLAGS)?\(\"\w+\", [^,]+, [^,]+, (\w+), \w+(?:,\s+\w+)?\);$", maps_h,
        re.MULTILINE))
    assert set(abi.MAP_LAYOUTS) == set(abi.MAP_CTYPES) == set(abi.MAP_NAMES)
    structs_h = (bpf_dir() / "structs.h").read_text()
    asserted = dict(re.findall(r"sizeof\(struct (\w+)\) == (\d+)", structs_h))
    assert asserted, "structs.h asserts no size"
    for c_name, size in asserted.items():
        cls = getattr(abi, genabi.camel(c_name))
        assert ctypes.sizeof(cls) == int(size), c_name
    for name, (key, value) in abi.MAP_CTYPES.items():
        layout = abi.MAP_LAYOUTS[name]
        assert (ctypes.sizeof(key), ctypes.sizeof(value)) == (layout.key_size, layout.value_size)
    consts_h = (bpf_dir() / "consts.h").read_text()
    assert f"#define TRANSCEIVER_ACTIVE {abi.TRANSCEIVER_ACTIVE}\n" in consts_h
    assert f"#define TRANSCEIVER_DRAINING {abi.TRANSCEIVER_DRAINING}\n" in consts_h
    assert f"#define SOURCE_PREFIX_HDR_BITS {abi.SOURCE_PREFIX_HDR_BITS}\n" in consts_h


def test_abi_says_it_is_generated() -> None:
    head = (bpf_dir().parent / "orchestrator" / "abi.py").read_text()[:400]
    assert "GENERATED by `python -m orchestrator.genabi`" in head
    assert "Do not edit" in head


def test_metric_labels() -> None:
    assert verdicts.metric_label("STAT_DROP_TRUNCATED") == "drop_truncated"
    assert verdicts.metric_label("STAT_FWD_NEW_FLOW") == "fwd_new_flow"
    assert verdicts.from_label("drop_truncated") == verdicts.RelayStat.STAT_DROP_TRUNCATED
    labels = [verdicts.metric_label(n) for n in verdicts.verdict_names()]
    assert len(set(labels)) == len(labels)
    assert all(re.fullmatch(r"[a-z0-9_]+", label) for label in labels)
    for bad in ("STAT_MAX", "STAT_NOPE", "drop_truncated"):
        with pytest.raises(ValueError, match="unknown verdict"):
            verdicts.metric_label(bad)
    with pytest.raises(ValueError, match="unknown verdict label 'max'"):
        verdicts.from_label("max")


def test_classification() -> None:
    rs = verdicts.RelayStat
    assert verdicts.is_forwarded(rs.STAT_FWD_TO_CLIENT)
    assert not verdicts.is_forwarded(rs.STAT_PASS_NO_NEIGH)
    assert verdicts.is_drop(rs.STAT_DROP_SPOOFED_SOURCE)
    assert not verdicts.is_drop(rs.STAT_RX_TOTAL)
    assert verdicts.is_pass(rs.STAT_PASS_NO_NEIGH)
    # Every verdict but the entry counter is exactly one of pass, forward, drop.
    for stat in rs:
        if stat.value in abi.RETIRED or stat is rs.STAT_RX_TOTAL:
            continue
        kinds = (verdicts.is_pass(stat), verdicts.is_forwarded(stat), verdicts.is_drop(stat))
        assert kinds.count(True) == 1, stat.name


def test_token_reasons_are_kernel_verdicts() -> None:
    # voxrelay/token.py names its reasons after the kernel's drop reasons.
    for ufrag in ("short", "A" * 31 + "=", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"):
        with pytest.raises(TokenError) as info:
            decode(ufrag)
        assert verdicts.from_label("drop_" + info.value.reason).name.startswith("STAT_DROP_TOKEN")
    for reason in ("token_unknown_key", "token_bad_mac", "token_expired"):
        assert verdicts.from_label("drop_" + reason)
