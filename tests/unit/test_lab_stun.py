# SPDX-License-Identifier: Apache-2.0
"""lab/stun.py, the one STUN builder of tests and bench (more in bench/tests/test_report.py)."""

from __future__ import annotations

import struct

import pytest

from lab import stun


def attributes(msg: bytes) -> list[int]:
    kinds, off = [], stun.HEADER.size
    while off < len(msg):
        kind, length = struct.unpack_from(">HH", msg, off)
        kinds.append(kind)
        off += 4 + length + (-length % 4)
    assert off == len(msg)
    return kinds


def test_ice_binding_request_carries_what_ice_sends_and_its_token() -> None:
    msg = stun.ice_binding_request("T" * 32 + ":cLnT", before=2)
    assert attributes(msg) == [stun.ATTR_PRIORITY] * 2 + [
        stun.ATTR_USERNAME, stun.ATTR_PRIORITY, stun.ATTR_ICE_CONTROLLED,
        stun.ATTR_MESSAGE_INTEGRITY, stun.ATTR_FINGERPRINT]
    assert stun.token_of(msg) == "T" * 32


def test_binding_request_is_username_only() -> None:
    msg = stun.binding_request("tok", txid=b"\x02" * 12)
    assert attributes(msg) == [stun.ATTR_USERNAME]
    assert msg[8:20] == b"\x02" * 12
    assert msg[24:32] == b"tok:cli1"


def test_message_refuses_a_short_transaction_id() -> None:
    with pytest.raises(ValueError, match="STUN transaction id must be 12 bytes, got 4"):
        stun.message(txid=b"abcd")
