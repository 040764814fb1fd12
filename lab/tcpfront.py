# SPDX-License-Identifier: Apache-2.0
"""A TCP forwarder: the lab's stand-in for a public HTTPS load balancer.

In production, clients reach a transceiver's signaling (POST /v1/calls, the
browser page) through a load balancer or an ingress, never at the
transceiver's private address. The lab has no such thing, so this process
runs on a relay host, listens on its public side and copies bytes to the
transceiver's signaling port on the private side. It carries HTTP only: the
media still goes through the XDP program on UDP 3478.

    python -m lab.tcpfront LISTEN_HOST:PORT TARGET_HOST:PORT

Runs until SIGINT/SIGTERM; every connection is bounded by an idle timeout.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

from voxrelay.addr import parse_hostport

IDLE_SECONDS = 120.0
CHUNK = 65536


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until EOF or IDLE_SECONDS of silence (also lab.tlsfront's)."""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(CHUNK), IDLE_SECONDS)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (TimeoutError, OSError):
        pass
    finally:
        if writer.can_write_eof():
            try:
                writer.write_eof()
            except OSError:
                pass


def forward_to(target: tuple[str, int]) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                                    Awaitable[None]]:
    """A ``start_server`` handler that carries each connection to ``target``
    both ways (lab.tlsfront serves the same handler behind TLS)."""
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.wait_for(asyncio.open_connection(*target), 5)
        except (TimeoutError, OSError):
            client_w.close()
            return
        try:
            await asyncio.gather(pipe(client_r, upstream_w), pipe(upstream_r, client_w))
        finally:
            for w in (client_w, upstream_w):
                w.close()

    return handle


async def serve(listen: tuple[str, int], target: tuple[str, int], stop: asyncio.Event) -> None:
    server = await asyncio.start_server(forward_to(target), *listen)
    print(f"tcpfront {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m lab.tcpfront LISTEN_HOST:PORT TARGET_HOST:PORT", file=sys.stderr)
        return 2
    try:
        listen = parse_hostport(argv[0], allow_zero=True)
        target = parse_hostport(argv[1], allow_zero=True)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(listen, target, stop)

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"error: cannot listen on {argv[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
