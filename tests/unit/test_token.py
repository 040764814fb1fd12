# SPDX-License-Identifier: Apache-2.0
"""The Python half of the routing-token contract (bpf/token.h is the other)."""

import base64
import re

import pytest

from voxrelay import token as tk

KEY = bytes(range(16))


def test_siphash_reference_vectors():
    # From the SipHash paper's test vectors (key 00..0f, message 00..n-1).
    assert tk.siphash24(KEY, b"") == 0x726FDB47DD0E0E31
    assert tk.siphash24(KEY, bytes(range(15))) == 0xA129CA6149BE45E5
    assert tk.siphash24(KEY, bytes(range(16))) == 0x3F2ACC7F57C29BDB


def test_mint_is_a_valid_ice_ufrag_and_round_trips():
    ufrag = tk.mint(KEY, key_id=3, transceiver_id=42, port=40123, ttl=60, now=1_000_000)
    assert re.fullmatch(r"[A-Za-z0-9+/]{32}", ufrag)
    got = tk.verify(ufrag, {3: KEY}, now=1_000_030)
    assert (got.key_id, got.transceiver_id, got.port, got.expiry) == (3, 42, 40123, 1_000_060)


def test_two_mints_differ_by_nonce():
    a = tk.mint(KEY, key_id=1, transceiver_id=1, port=1000, now=0)
    b = tk.mint(KEY, key_id=1, transceiver_id=1, port=1000, now=0)
    assert a != b


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda u: u[:-1], "token_malformed"),
        (lambda u: u[:-1] + "=", "token_malformed"),
        (lambda u: u[0] + "A" + u[2:], "token_malformed"),  # version byte 0
        (lambda u: u[:-1] + "-", "token_malformed"),  # not an ICE char
    ],
)
def test_malformed(mutate, reason):
    ufrag = tk.mint(KEY, key_id=1, transceiver_id=1, port=1000, now=0)
    with pytest.raises(tk.TokenError) as exc:
        tk.verify(mutate(ufrag), {1: KEY}, now=0)
    assert exc.value.reason == reason


def test_altered_field_fails_mac():
    ufrag = tk.mint(KEY, key_id=1, transceiver_id=7, port=1000, now=0)
    raw = bytearray(base64.b64decode(ufrag))
    raw[5] ^= 1  # transceiver id 7 -> 6
    with pytest.raises(tk.TokenError) as exc:
        tk.verify(base64.b64encode(raw).decode(), {1: KEY}, now=0)
    assert exc.value.reason == "token_bad_mac"


def test_expired_and_unknown_key():
    ufrag = tk.mint(KEY, key_id=1, transceiver_id=7, port=1000, ttl=10, now=100)
    with pytest.raises(tk.TokenError) as exc:
        tk.verify(ufrag, {1: KEY}, now=111)
    assert exc.value.reason == "token_expired"
    with pytest.raises(tk.TokenError) as exc:
        tk.verify(ufrag, {2: KEY}, now=100)
    assert exc.value.reason == "token_unknown_key"


def test_rotation_two_keys_active():
    old, new = tk.new_key(), tk.new_key()
    a = tk.mint(old, key_id=1, transceiver_id=7, port=1000, now=0)
    b = tk.mint(new, key_id=2, transceiver_id=7, port=1000, now=0)
    keys = {1: old, 2: new}
    assert tk.verify(a, keys, now=0).key_id == 1
    assert tk.verify(b, keys, now=0).key_id == 2


def test_bad_fields_rejected_at_mint():
    with pytest.raises(ValueError, match="token port must not be 0"):
        tk.mint(KEY, key_id=1, transceiver_id=1, port=0)
    with pytest.raises(ValueError, match="key_id 256 is outside 0..255"):
        tk.mint(KEY, key_id=256, transceiver_id=1, port=1)
    with pytest.raises(ValueError, match="siphash key must be 16 bytes"):
        tk.mint(b"short", key_id=1, transceiver_id=1, port=1)
