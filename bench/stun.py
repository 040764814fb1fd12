"""The little STUN the bench needs: build a Binding Request that carries a
routing token (the primer that makes a relay create a flow) and read the
token back out of one (the userspace relay's admission check).

Only what RFC 5389 requires for these two jobs: the 20-byte header, the magic
cookie and the USERNAME attribute ("<server ufrag>:<client ufrag>", the
server ufrag being the token)."""

from __future__ import annotations

import os
import struct

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
ATTR_USERNAME = 0x0006
HEADER = struct.Struct(">HHI12s")
MAX_ATTRS = 16


def binding_request(token: str, client_ufrag: str = "bnch", txid: bytes | None = None) -> bytes:
    """A STUN Binding Request whose USERNAME is ``token:client_ufrag``."""
    username = f"{token}:{client_ufrag}".encode("ascii")
    pad = (-len(username)) % 4
    attr = struct.pack(">HH", ATTR_USERNAME, len(username)) + username + b"\x00" * pad
    tid = os.urandom(12) if txid is None else txid
    if len(tid) != 12:
        raise ValueError(f"STUN transaction id must be 12 bytes, got {len(tid)}")
    return HEADER.pack(BINDING_REQUEST, len(attr), MAGIC_COOKIE, tid) + attr


def token_of(data: bytes) -> str:
    """The server ufrag (routing token) of a STUN Binding Request.

    Raises ValueError naming what is wrong, with the same reasons the XDP
    relay counts as drops (not_stun, not_binding, no_username)."""
    if len(data) < HEADER.size or data[0] & 0xC0:
        raise ValueError("not_stun: too short or top bits set")
    msg_type, length, cookie, _ = HEADER.unpack_from(data)
    if cookie != MAGIC_COOKIE:
        raise ValueError("not_stun: bad magic cookie")
    if HEADER.size + length > len(data):
        raise ValueError("not_stun: length runs past the datagram")
    if msg_type != BINDING_REQUEST:
        raise ValueError(f"not_binding: message type 0x{msg_type:04x}")
    off = HEADER.size
    end = HEADER.size + length
    for _ in range(MAX_ATTRS):
        if off + 4 > end:
            break
        atype, alen = struct.unpack_from(">HH", data, off)
        if off + 4 + alen > end:
            raise ValueError("not_stun: attribute runs past the message")
        if atype == ATTR_USERNAME:
            value = data[off + 4 : off + 4 + alen].decode("ascii", errors="replace")
            return value.split(":", 1)[0]
        off += 4 + alen + ((-alen) % 4)
    raise ValueError("no_username: Binding Request without USERNAME")
