# SPDX-License-Identifier: Apache-2.0
"""A minimal TURN client (RFC 8656) to load coturn with the bench's generator.

For each client source port: Allocate (UDP), then ChannelBind one channel to
the transceiver's address. The sockets are then closed; the allocations stay
(their lifetime outlives a bench run), so the raw-socket generator can send
ChannelData from the same 5-tuples. coturn runs with --no-auth in the bench
(the lab is private), so no MESSAGE-INTEGRITY is needed.

Run in the client namespace:
  python -m bench.turn --server 10.77.1.1:3478 --peer 10.77.2.2:5004
         --sport-base 40000 --flows 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import struct
import sys

from lab.stun import HEADER, MAGIC_COOKIE

ALLOCATE = 0x0003
CHANNEL_BIND = 0x0009
SUCCESS = 0x0100  # class bits: request type | 0x0100 is its success response
ATTR_CHANNEL_NUMBER = 0x000C
ATTR_XOR_PEER_ADDRESS = 0x0012
ATTR_REQUESTED_TRANSPORT = 0x0019
ATTR_LIFETIME = 0x000D
CHANNEL = 0x4000


def _attr(atype: int, value: bytes) -> bytes:
    return struct.pack(">HH", atype, len(value)) + value + b"\x00" * ((-len(value)) % 4)


def _message(mtype: int, attrs: bytes, txid: bytes) -> bytes:
    return HEADER.pack(mtype, len(attrs), MAGIC_COOKIE, txid) + attrs


def allocate_request(txid: bytes, lifetime: int = 3600) -> bytes:
    return _message(
        ALLOCATE,
        _attr(ATTR_REQUESTED_TRANSPORT, bytes([17, 0, 0, 0]))
        + _attr(ATTR_LIFETIME, struct.pack(">I", lifetime)),
        txid,
    )


def xor_peer_address(ip: str, port: int) -> bytes:
    addr = struct.unpack(">I", socket.inet_aton(ip))[0] ^ MAGIC_COOKIE
    return struct.pack(">BBHI", 0, 1, port ^ (MAGIC_COOKIE >> 16), addr)


def channel_bind_request(txid: bytes, peer: tuple[str, int], channel: int = CHANNEL) -> bytes:
    if not 0x4000 <= channel <= 0x4FFF:
        raise ValueError(f"TURN channel must be in 0x4000..0x4FFF, got 0x{channel:x}")
    return _message(
        CHANNEL_BIND,
        _attr(ATTR_CHANNEL_NUMBER, struct.pack(">HH", channel, 0))
        + _attr(ATTR_XOR_PEER_ADDRESS, xor_peer_address(*peer)),
        txid,
    )


def channel_data(payload: bytes, channel: int = CHANNEL) -> bytes:
    """ChannelData framing: what the generator sends through coturn."""
    return struct.pack(">HH", channel, len(payload)) + payload


def response_ok(data: bytes, request_type: int, txid: bytes) -> bool:
    """True for the success response to ``request_type`` with ``txid``;
    False for its error response; ValueError for anything else."""
    if len(data) < HEADER.size:
        raise ValueError("TURN response shorter than a STUN header")
    mtype, _, cookie, tid = HEADER.unpack_from(data)
    if cookie != MAGIC_COOKIE or tid != txid:
        raise ValueError("TURN response for another transaction")
    if mtype == request_type | SUCCESS:
        return True
    if mtype == request_type | 0x0110:
        return False
    raise ValueError(f"unexpected TURN message type 0x{mtype:04x}")


def _transact(sock: socket.socket, msg: bytes, rtype: int, txid: bytes) -> bool:
    for _ in range(4):
        sock.send(msg)
        sock.settimeout(0.5)
        try:
            while True:
                data = sock.recv(2048)
                try:
                    return response_ok(data, rtype, txid)
                except ValueError:
                    continue
        except TimeoutError:
            continue
    return False


def setup_port(server: tuple[str, int], src: tuple[str, int], peer: tuple[str, int]) -> bool:
    """Allocate + ChannelBind from ``src``; True when both succeeded."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(src)
        s.connect(server)
        t1, t2 = os.urandom(12), os.urandom(12)
        return _transact(s, allocate_request(t1), ALLOCATE, t1) and _transact(
            s, channel_bind_request(t2, peer), CHANNEL_BIND, t2
        )


async def setup_many(server: tuple[str, int], src_ip: str, ports: list[int],
                     peer: tuple[str, int], concurrency: int = 64) -> int:
    sem = asyncio.Semaphore(concurrency)

    async def one(port: int) -> bool:
        async with sem:
            return await asyncio.to_thread(setup_port, server, (src_ip, port), peer)

    return sum(await asyncio.gather(*(one(p) for p in ports)))


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="TURN Allocate + ChannelBind per source port")
    ap.add_argument("--server", type=_addr, required=True)
    ap.add_argument("--peer", type=_addr, required=True)
    ap.add_argument("--src", default="0.0.0.0")
    ap.add_argument("--sport-base", type=int, required=True)
    ap.add_argument("--flows", type=int, required=True)
    args = ap.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    ports = list(range(args.sport_base, args.sport_base + args.flows))
    ok = asyncio.run(setup_many(args.server, args.src, ports, args.peer))
    print(json.dumps({"requested": len(ports), "ok": ok}))
    return 0 if ok == len(ports) else 1


if __name__ == "__main__":
    sys.exit(main())
