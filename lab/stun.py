# SPDX-License-Identifier: Apache-2.0
"""The little STUN that tests and the bench send to a relay (RFC 5389).

One builder of Binding Requests for every test tier and the bench, and the
reader of their routing token (the userspace relay's admission check):

* ``binding_request(token)``: USERNAME only, "<server ufrag>:<client ufrag>"
  with the server ufrag being the routing token (RFC 8445 7.2.2). It is the
  primer that makes a relay create a flow.
* ``ice_binding_request(username)``: what an ICE agent sends, USERNAME plus
  PRIORITY, ICE-CONTROLLED, MESSAGE-INTEGRITY and FINGERPRINT (random bytes:
  the relay never checks them), for the packet tables.
* ``message`` and ``attribute`` build anything else, malformed ones included.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
ATTR_USERNAME = 0x0006
ATTR_MESSAGE_INTEGRITY = 0x0008
ATTR_PRIORITY = 0x0024
ATTR_FINGERPRINT = 0x8028
ATTR_ICE_CONTROLLED = 0x8029
HEADER = struct.Struct(">HHI12s")
MAX_ATTRS = 16


def attribute(kind: int, value: bytes) -> bytes:
    """One TLV attribute, padded to a multiple of 4 bytes."""
    return struct.pack(">HH", kind, len(value)) + value + b"\x00" * (-len(value) % 4)


def message(attrs: Iterable[tuple[int, bytes]] = (), *, msg_type: int = BINDING_REQUEST,
            cookie: int = MAGIC_COOKIE, length_delta: int = 0,
            txid: bytes | None = None) -> bytes:
    """A STUN message; ``cookie`` and ``length_delta`` make wrong ones on purpose."""
    body = b"".join(attribute(k, v) for k, v in attrs)
    tid = os.urandom(12) if txid is None else txid
    if len(tid) != 12:
        raise ValueError(f"STUN transaction id must be 12 bytes, got {len(tid)}")
    return HEADER.pack(msg_type, len(body) + length_delta, cookie, tid) + body


def binding_request(token: str, client_ufrag: str = "cli1", txid: bytes | None = None) -> bytes:
    """A STUN Binding Request whose USERNAME is ``token:client_ufrag``."""
    username = f"{token}:{client_ufrag}".encode("ascii")
    return message([(ATTR_USERNAME, username)], txid=txid)


def ice_binding_request(username: str | bytes, *, before: int = 0,
                        txid: bytes | None = None) -> bytes:
    """A Binding Request as ICE sends it, with exactly ``username`` as USERNAME
    (whatever it holds: packet tables send malformed ones). ``before`` puts
    that many PRIORITY attributes ahead of USERNAME."""
    user = username.encode() if isinstance(username, str) else username
    priority = (ATTR_PRIORITY, struct.pack(">I", 0x6E7F1EFF))
    attrs = [priority] * before
    attrs += [
        (ATTR_USERNAME, user),
        priority,
        (ATTR_ICE_CONTROLLED, os.urandom(8)),
        (ATTR_MESSAGE_INTEGRITY, os.urandom(20)),
        (ATTR_FINGERPRINT, os.urandom(4)),
    ]
    return message(attrs, txid=txid)


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
