# SPDX-License-Identifier: Apache-2.0
"""voxrelay/token.py and bpf/token.h agree: mint in Python, verify in the kernel.

Each case builds a ufrag (valid, mutated, re-signed with other fields, or
signed with the wrong key), asks token.verify() for its verdict, sends it in
a Binding Request through the loaded relay, and compares the kernel's
counter with Python's reason (``drop_<reason>``, or a new flow when valid).
"""

from __future__ import annotations

import base64
import random
import string
import struct
import time

import pytest

pytestmark = pytest.mark.root

from lab import stun
from lab.packets import to_relay
from lab.relaylab import KEY1, KEY2, ProgTestRelay
from orchestrator.verdicts import from_label
from voxrelay import token

KEYS = {1: KEY1, 2: KEY2}
B64 = string.ascii_letters + string.digits + "+/"
CASES = 1500


def signed(version: int, key_id: int, txr: int, port: int, expiry: int, key: bytes) -> str:
    body = struct.pack(">BBIHII", version, key_id, txr, port, expiry, random.getrandbits(32))
    return base64.b64encode(body + struct.pack("<Q", token.siphash24(key, body))).decode()


def make_ufrag(rng: random.Random, now: int) -> str:
    """A valid token, then one mutation (or none)."""
    key_id = rng.choice([1, 2])
    ufrag = token.mint(KEYS[key_id], key_id=key_id, transceiver_id=7, port=50007,
                       ttl=3600, now=now)
    kind = rng.randrange(9)
    if kind == 0:
        return ufrag
    if kind == 1:  # one character replaced by another base64 character
        i = rng.randrange(32)
        return ufrag[:i] + rng.choice(B64.replace(ufrag[i], "")) + ufrag[i + 1:]
    if kind == 2:  # one character replaced by anything printable but ':'
        i = rng.randrange(32)
        pool = string.printable.replace(":", "").replace(ufrag[i], "").strip()
        return ufrag[:i] + rng.choice(pool) + ufrag[i + 1:]
    if kind == 3:  # shorter or longer
        n = rng.choice([0, 4, 16, 31, 33, 40, 64])
        return (ufrag * 3)[:n] if n else "x"
    if kind == 4:  # re-signed with the right key, other fields changed
        return signed(rng.choice([0, 1, 2, 255]), rng.choice([1, 2]), 7,
                      rng.choice([0, 50007]), now + rng.choice([-86400, -10, 10, 86400]),
                      KEYS[key_id] if rng.random() < 0.5 else KEYS[3 - key_id])
    if kind == 5:  # a key id that is not active
        kid = rng.choice([0, 3, 200, 255])
        return token.mint(KEY1, key_id=kid, transceiver_id=7, port=50007, now=now)
    if kind == 6:  # expired
        return token.mint(KEYS[key_id], key_id=key_id, transceiver_id=7, port=50007,
                          ttl=rng.choice([1, 60, 3600]), now=now - 7200)
    if kind == 7:  # MAC bytes swapped around
        raw = bytearray(base64.b64decode(ufrag))
        raw[16:24] = raw[16:24][::-1] if raw[16] != raw[23] else bytes(8)
        return base64.b64encode(bytes(raw)).decode()
    # random bytes under a valid version byte
    raw = bytes([1, key_id]) + rng.randbytes(22)
    return base64.b64encode(raw).decode()


def python_verdict(ufrag: str, now: int) -> str:
    try:
        token.verify(ufrag, KEYS, now=now)
    except token.TokenError as exc:
        return from_label("drop_" + exc.reason).name
    return "STAT_FWD_NEW_FLOW"


def test_kernel_agrees_with_python(lab: ProgTestRelay) -> None:
    rng = random.Random(20240611)
    lab.reset()
    seen: dict[str, int] = {}
    for i in range(CASES):
        if i % 100 == 0:  # keep the port range mostly free: no PORT_EXHAUSTED by chance
            lab.maps.clear_flow_state()
        now = int(time.time())
        ufrag = make_ufrag(rng, now)
        want = python_verdict(ufrag, now)
        # each case from its own client port, so no case meets another's flow
        pkt = to_relay(stun.ice_binding_request(f"{ufrag}:cLnT"), sport=1024 + i)
        res = lab.run(bytes(pkt))
        assert res.stat == want, f"{ufrag!r}: kernel {res.stat}, python {want}"
        seen[want] = seen.get(want, 0) + 1
    # the mutations reach every token verdict
    for verdict in ("STAT_FWD_NEW_FLOW", "STAT_DROP_TOKEN_MALFORMED",
                    "STAT_DROP_TOKEN_UNKNOWN_KEY", "STAT_DROP_TOKEN_BAD_MAC",
                    "STAT_DROP_TOKEN_EXPIRED"):
        assert seen.get(verdict, 0) >= 20, seen



def test_every_byte_value_in_a_token(lab: ProgTestRelay) -> None:
    """The kernel's base64 table: each of the 256 byte values at one place of a
    valid token is malformed unless it is in the alphabet (then the MAC or
    the body no longer matches, or it is the original character)."""
    lab.reset()
    now = int(time.time())
    ufrag = token.mint(KEY1, key_id=1, transceiver_id=7, port=50007, ttl=3600, now=now)
    seen: dict[str, int] = {}
    for pos in (0, 13, 31):
        lab.maps.clear_flow_state()
        for value in range(256):
            raw = ufrag.encode()[:pos] + bytes([value]) + ufrag.encode()[pos + 1:]
            if value < 128:
                want = python_verdict(raw.decode("ascii"), now)
            else:
                want = "STAT_DROP_TOKEN_MALFORMED"
            if chr(value) not in B64:
                assert want == "STAT_DROP_TOKEN_MALFORMED", (pos, value, want)
            pkt = to_relay(stun.ice_binding_request(raw + b":cLnT"), sport=20000 + pos * 256 + value)
            res = lab.run(bytes(pkt))
            assert res.stat == want, f"byte {value} at {pos}: kernel {res.stat}, python {want}"
            seen[want] = seen.get(want, 0) + 1
    assert seen["STAT_FWD_NEW_FLOW"] == 3, seen
    # 192 non-alphabet bytes per place, plus a changed version byte at place 0
    assert seen["STAT_DROP_TOKEN_MALFORMED"] == 3 * (256 - 64) + 63, seen
    assert seen["STAT_DROP_TOKEN_BAD_MAC"] == 2 * 63, seen
