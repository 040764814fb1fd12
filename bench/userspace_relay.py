# SPDX-License-Identifier: Apache-2.0
"""Baseline: the XDP relay's NAT done in userspace with Python asyncio.

Same behaviour as bpf/relay.c, so the comparison is fair:
- one public socket (VIP:3478);
- a packet from an unknown client must be a STUN Binding Request whose
  USERNAME carries a valid routing token (voxrelay/token.py); it creates a
  flow: a new socket on the private address (kernel-chosen port, the
  "relay-side port") towards the token's transceiver address and port;
- packets from a known client go out of its flow socket;
- replies on a flow socket from that flow's transceiver go back to the client
  from VIP:3478; anything else is dropped and counted.

The event loop's selector drives plain non-blocking sockets (``add_reader``),
draining each readable socket in a bounded batch: that is the cheapest honest
asyncio relay, so its numbers are a fair ceiling for Python.

Run: python -m bench.userspace_relay --public 10.77.1.1:3478 --private 10.77.2.1
       --key 1=<32 hex> --transceiver 1=10.77.2.2 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import resource
import signal
import socket
import sys
from dataclasses import dataclass, field

from lab.stun import token_of
from voxrelay.token import TokenError, verify

BATCH = 64  # datagrams drained per readiness callback, so one socket cannot starve the rest
Addr = tuple[str, int]


@dataclass
class Flow:
    client: Addr
    transceiver: Addr
    sock: socket.socket | None = None


@dataclass
class NatTable:
    """The relay's admission and lookup logic, free of I/O."""

    keys: dict[int, bytes]
    transceivers: dict[int, str]
    flows: dict[Addr, Flow] = field(default_factory=dict)
    stats: collections.Counter[str] = field(default_factory=collections.Counter)

    def from_client(self, data: bytes, client: Addr) -> tuple[Flow | None, bool]:
        """Route a datagram from ``client``: (flow, is_new), or (None, False)
        when it is dropped (the reason is counted in ``stats``)."""
        self.stats["rx_total"] += 1
        flow = self.flows.get(client)
        if flow is not None:
            self.stats["fwd_to_transceiver"] += 1
            return flow, False
        try:
            token = verify(token_of(data), self.keys)
        except TokenError as exc:
            self.stats[f"drop_{exc.reason}"] += 1
            return None, False
        except ValueError as exc:
            self.stats["drop_" + str(exc).split(":", 1)[0]] += 1
            return None, False
        addr = self.transceivers.get(token.transceiver_id)
        if addr is None:
            self.stats["drop_transceiver_unknown"] += 1
            return None, False
        flow = Flow(client=client, transceiver=(addr, token.port))
        self.flows[client] = flow
        self.stats["fwd_new_flow"] += 1
        return flow, True

    def from_transceiver(self, flow: Flow, source: Addr) -> bool:
        """A reply on ``flow``'s socket: forward only if it comes from the
        flow's transceiver (the spoofed-source check)."""
        self.stats["rx_total"] += 1
        if source != flow.transceiver:
            self.stats["drop_spoofed_source"] += 1
            return False
        self.stats["fwd_to_client"] += 1
        return True


class Relay:
    def __init__(self, table: NatTable, public: Addr, private_ip: str) -> None:
        self.table = table
        self.private_ip = private_ip
        self.loop = asyncio.get_running_loop()
        self.pub = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.pub.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.pub.bind(public)
        self.pub.setblocking(False)
        self.loop.add_reader(self.pub, self._on_public)

    def _on_public(self) -> None:
        recv, table = self.pub.recvfrom, self.table
        for _ in range(BATCH):
            try:
                data, client = recv(2048)
            except BlockingIOError:
                return
            flow, new = table.from_client(data, client)
            if flow is None:
                continue
            if new:
                self._open(flow)
            assert flow.sock is not None
            try:
                flow.sock.send(data)
            except OSError:
                table.stats["drop_send_error"] += 1

    def _open(self, flow: Flow) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((self.private_ip, 0))
        s.connect(flow.transceiver)  # the kernel then drops other sources for us...
        s.setblocking(False)
        flow.sock = s
        self.loop.add_reader(s, self._on_private, flow)

    def _on_private(self, flow: Flow) -> None:
        assert flow.sock is not None
        for _ in range(BATCH):
            try:
                data, src = flow.sock.recvfrom(2048)
            except (BlockingIOError, ConnectionRefusedError):
                return
            # ...but we still check, as the XDP program must.
            if self.table.from_transceiver(flow, src):
                self.pub.sendto(data, flow.client)

    def close(self) -> None:
        self.loop.remove_reader(self.pub)
        self.pub.close()
        for flow in self.table.flows.values():
            if flow.sock is not None:
                self.loop.remove_reader(flow.sock)
                flow.sock.close()


def _pair(text: str) -> tuple[int, str]:
    k, _, v = text.partition("=")
    if not v:
        raise argparse.ArgumentTypeError(f"expected ID=VALUE, got {text!r}")
    return int(k), v


async def serve(args: argparse.Namespace) -> NatTable:
    table = NatTable(
        keys={k: bytes.fromhex(v) for k, v in args.key},
        transceivers=dict(args.transceiver),
    )
    host, _, port = args.public.rpartition(":")
    relay = Relay(table, (host, int(port)), args.private)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.duration)
    except TimeoutError:
        pass
    finally:
        relay.close()
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--public", required=True, help="VIP:PORT to listen on")
    ap.add_argument("--private", required=True, help="private IP flow sockets bind to")
    ap.add_argument("--key", type=_pair, action="append", required=True, help="KEYID=HEX")
    ap.add_argument("--transceiver", type=_pair, action="append", required=True,
                    help="ID=IP")
    ap.add_argument("--duration", type=float, default=300.0, help="exit after this (bound)")
    args = ap.parse_args(argv)
    # One socket per flow: 10,000 flows need more than the default 1024 fds.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    table = asyncio.run(serve(args))
    json.dump({"flows": len(table.flows), "stats": dict(table.stats)}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
