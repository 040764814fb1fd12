"""orchestrator/verdicts.py reads enum relay_stat from bpf/verdicts.h."""

from __future__ import annotations

import re

import pytest

from orchestrator import verdicts
from orchestrator.bpfprog import bpf_dir
from voxrelay.token import TokenError, decode


def test_parse_follows_c_numbering() -> None:
    text = """
    /* a comment with enum relay_stat { STAT_FAKE } inside */
    enum relay_stat {
        STAT_RX_TOTAL = 0,   /* counted at entry */
        STAT_A,              // one
        STAT_B = 5,
        STAT_C,
        STAT_MAX
    };
    """
    assert verdicts.parse_verdicts(text) == {
        "STAT_RX_TOTAL": 0, "STAT_A": 1, "STAT_B": 5, "STAT_C": 6, "STAT_MAX": 7,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("enum other { STAT_RX_TOTAL, STAT_MAX };", "enum relay_stat not found"),
        ("enum relay_stat { STAT_RX_TOTAL, DROP_X, STAT_MAX };",
         "enumerator DROP_X of enum relay_stat lacks the STAT_ prefix"),
        ("enum relay_stat { STAT_A, STAT_RX_TOTAL, STAT_MAX };",
         "STAT_RX_TOTAL must be the first enumerator, with value 0"),
        ("enum relay_stat { STAT_RX_TOTAL, STAT_A };", "enum relay_stat must end with STAT_MAX"),
        ("enum relay_stat { STAT_RX_TOTAL, STAT_A = 0, STAT_MAX };",
         "enumerator STAT_A repeats the value 0"),
        ("enum relay_stat { STAT_RX_TOTAL, STAT_A = FOO, STAT_MAX };",
         "enumerator STAT_A has a value that is not an integer: 'FOO'"),
        ("enum relay_stat { STAT_RX_TOTAL, STAT_A B, STAT_MAX };",
         "cannot parse enumerator 'STAT_A B' of enum relay_stat"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        verdicts.parse_verdicts(text)
    assert str(info.value) == message


def test_real_header_matches_an_independent_count() -> None:
    # Count the enumerators with a different method than the parser: every
    # line inside the enum that starts with STAT_.
    text = (bpf_dir() / "verdicts.h").read_text()
    body = text[text.index("enum relay_stat {"):text.index("};")]
    names = re.findall(r"^\s*(STAT_[A-Z0-9_]+)", body, re.MULTILINE)
    assert names == list(verdicts.VERDICT_VALUES)
    assert list(verdicts.VERDICT_VALUES.values()) == list(range(len(names)))
    assert verdicts.STAT_MAX == len(names) - 1
    assert verdicts.RelayStat.STAT_RX_TOTAL == 0
    assert verdicts.verdict_names() == names[:-1]


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


def test_token_reasons_are_kernel_verdicts() -> None:
    # voxrelay/token.py names its reasons after the kernel's drop reasons.
    for ufrag in ("short", "A" * 31 + "=", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"):
        with pytest.raises(TokenError) as info:
            decode(ufrag)
        assert verdicts.from_label("drop_" + info.value.reason).name.startswith("STAT_DROP_TOKEN")
    for reason in ("token_unknown_key", "token_bad_mac", "token_expired"):
        assert verdicts.from_label("drop_" + reason)
