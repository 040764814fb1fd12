# SPDX-License-Identifier: Apache-2.0
"""The routing token: the server-side ICE ufrag that names a call's transceiver.

This module is one half of the only contract that C and Python share. The
other half is ``bpf/token.h``, which verifies the same bytes inside the XDP
program. If you change the layout here, change it there, and run
``tests/unit/test_token_kernel.py``, which checks that the two agree.

Layout (24 bytes, big-endian, then base64 without padding -> 32 ICE chars)::

    offset size field
    0      1    version        (TOKEN_VERSION)
    1      1    key_id         index into the ``keys`` BPF map (0..255)
    2      4    transceiver_id key of the ``transceivers`` BPF map
    6      2    port           the transceiver's UDP port for this call
    8      4    expiry         unix seconds; the relay refuses the token after
    12     4    nonce          random, so that every call has its own ufrag
    16     8    mac            SipHash-2-4(key, bytes 0..15), little-endian u64

The alphabet is the standard base64 one (``A-Z a-z 0-9 + /``), which is
exactly RFC 8445's ``ice-char`` set, so the token is a valid ufrag as it is.
32 characters sit inside ICE's 4..256 range.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
import time
from dataclasses import dataclass

TOKEN_VERSION = 1
TOKEN_BYTES = 24
TOKEN_CHARS = 32
KEY_BYTES = 16
MAX_KEY_ID = 255

_BODY = struct.Struct(">BBIHII")  # version, key_id, transceiver_id, port, expiry, nonce
_MASK64 = (1 << 64) - 1


class TokenError(ValueError):
    """A ufrag that is not a valid routing token. ``reason`` mirrors the
    kernel's drop reason names (see ``bpf/verdicts.h``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK64


def siphash24(key: bytes, data: bytes) -> int:
    """SipHash-2-4 of ``data`` under a 16-byte ``key``, as a 64-bit integer.

    A plain reference implementation (Aumasson and Bernstein). The kernel side
    runs the same rounds over the fixed 16-byte token body.
    """
    if len(key) != KEY_BYTES:
        raise ValueError(f"siphash key must be {KEY_BYTES} bytes, got {len(key)}")
    k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _MASK64
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _MASK64
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _MASK64
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _MASK64
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    full = len(data) - len(data) % 8
    for off in range(0, full, 8):
        m = int.from_bytes(data[off:off + 8], "little")
        v3 ^= m
        rounds(2)
        v0 ^= m
    tail = data[full:] + b"\x00" * (7 - len(data) % 8)
    b = int.from_bytes(tail, "little") | ((len(data) & 0xFF) << 56)
    v3 ^= b
    rounds(2)
    v0 ^= b
    v2 ^= 0xFF
    rounds(4)
    return v0 ^ v1 ^ v2 ^ v3


@dataclass(frozen=True)
class Token:
    """The decoded fields of a routing token."""

    key_id: int
    transceiver_id: int
    port: int
    expiry: int
    nonce: int
    version: int = TOKEN_VERSION

    def body(self) -> bytes:
        for name, value, hi in (
            ("version", self.version, 0xFF),
            ("key_id", self.key_id, MAX_KEY_ID),
            ("transceiver_id", self.transceiver_id, 0xFFFFFFFF),
            ("port", self.port, 0xFFFF),
            ("expiry", self.expiry, 0xFFFFFFFF),
            ("nonce", self.nonce, 0xFFFFFFFF),
        ):
            if not 0 <= value <= hi:
                raise ValueError(f"token {name} {value} is outside 0..{hi}")
        if self.port == 0:
            raise ValueError("token port must not be 0")
        return _BODY.pack(
            self.version, self.key_id, self.transceiver_id, self.port, self.expiry, self.nonce
        )


def mint(
    key: bytes,
    *,
    key_id: int,
    transceiver_id: int,
    port: int,
    ttl: int = 3600,
    now: float | None = None,
    nonce: int | None = None,
) -> str:
    """Return a 32-character ufrag that routes to ``transceiver_id:port``.

    ``ttl`` bounds how long a client may start (or re-start, after a NAT
    rebinding) a flow with this token; flows that exist keep going.
    """
    if ttl <= 0:
        raise ValueError(f"token ttl must be positive, got {ttl}")
    issued = int(time.time() if now is None else now)
    token = Token(
        key_id=key_id,
        transceiver_id=transceiver_id,
        port=port,
        expiry=issued + ttl,
        nonce=int.from_bytes(os.urandom(4), "big") if nonce is None else nonce,
    )
    return encode(token, key)


def encode(token: Token, key: bytes) -> str:
    body = token.body()
    mac = siphash24(key, body)
    return base64.b64encode(body + struct.pack("<Q", mac)).decode("ascii")


def decode(ufrag: str) -> tuple[Token, int]:
    """Parse a ufrag without checking its MAC: returns (token, mac).

    Raises ``TokenError`` with reason ``token_malformed`` for anything that is
    not 32 base64 characters holding a version-1 body.
    """
    if len(ufrag) != TOKEN_CHARS:
        raise TokenError(
            "token_malformed", f"token must be {TOKEN_CHARS} characters, got {len(ufrag)}"
        )
    if "=" in ufrag:
        raise TokenError("token_malformed", "token must not contain '=' (not an ICE char)")
    try:
        raw = base64.b64decode(ufrag.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise TokenError("token_malformed", f"token is not base64: {exc}") from None
    if len(raw) != TOKEN_BYTES:  # unreachable for 32 valid chars; kept as a guard
        raise TokenError("token_malformed", f"token decodes to {len(raw)} bytes")
    version, key_id, transceiver_id, port, expiry, nonce = _BODY.unpack_from(raw)
    if version != TOKEN_VERSION:
        raise TokenError(
            "token_malformed", f"token version {version} is not {TOKEN_VERSION}"
        )
    if port == 0:  # body() refuses it too; the kernel counts it as malformed
        raise TokenError("token_malformed", "token port must not be 0")
    (mac,) = struct.unpack_from("<Q", raw, 16)
    return Token(key_id, transceiver_id, port, expiry, nonce, version), mac


def verify(ufrag: str, keys: dict[int, bytes], *, now: float | None = None) -> Token:
    """Check a ufrag as the kernel does, in the kernel's order.

    ``keys`` maps the active key ids to their 16-byte keys. Raises
    ``TokenError`` whose ``reason`` is the kernel's drop reason.
    """
    token, mac = decode(ufrag)
    key = keys.get(token.key_id)
    if key is None:
        raise TokenError("token_unknown_key", f"token key id {token.key_id} is not active")
    if siphash24(key, token.body()) != mac:
        raise TokenError("token_bad_mac", "token MAC does not verify")
    current = int(time.time() if now is None else now)
    if token.expiry < current:
        raise TokenError(
            "token_expired", f"token expired {current - token.expiry} s ago"
        )
    return token


def new_key() -> bytes:
    """A fresh random 16-byte SipHash key."""
    return os.urandom(KEY_BYTES)
