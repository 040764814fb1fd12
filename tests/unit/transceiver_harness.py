# SPDX-License-Identifier: Apache-2.0
"""Test harness for the transceiver: a loopback stand-in for the XDP relay,
a transceiver factory, and leak probes.

The relay path proper (XDP) is covered by tests/netns. Here a userspace
``LoopbackRelay`` does what the kernel relay does, on 127.0.0.1: the first
packet from a client address must be a STUN Binding Request whose USERNAME
starts with a routing token that verifies; it then forwards that client's
datagrams, both ways, from a relay-side socket to the token's port. So the
transceiver sees the relay's address as a peer-reflexive candidate, exactly
as behind the real relay, and the client only ever talks to the relay.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aioice import stun

from transceiver.call import CallSettings
from transceiver.ice import PortPool, RelaySpec, relay_candidates
from transceiver.modellink import Backoff
from transceiver.signaling import ServiceSettings, Transceiver
from voxrelay import token as tokens
from voxrelay.directory import Directory


class _Public(asyncio.DatagramProtocol):
    def __init__(self, relay: LoopbackRelay) -> None:
        self.relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.from_client(data, addr)


class _Flow(asyncio.DatagramProtocol):
    def __init__(self, relay: LoopbackRelay, client: tuple[str, int]) -> None:
        self.relay, self.client = relay, client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.to_client(data, self.client)


@dataclass
class LoopbackRelay:
    keys: dict[int, bytes]
    """The active routing-token keys, as the relay's ``keys`` map holds them."""
    transceiver_address: str = "127.0.0.1"
    counters: dict[str, int] = field(default_factory=lambda: {
        "forwarded_in": 0, "forwarded_out": 0, "new_flow": 0, "drop_not_stun": 0,
        "drop_bad_token": 0})
    flows: dict[tuple[str, int], Any] = field(default_factory=dict)
    blocked: bool = False
    """Drop everything, both ways (the client's network is gone)."""
    delay: float = 0.0
    """Seconds each datagram of an open flow from the client waits before it
    goes on (a caller behind a deep uplink buffer: its answers come late)."""
    seen_ufrags: list[str] = field(default_factory=list)

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._public, _ = await loop.create_datagram_endpoint(
            lambda: _Public(self), local_addr=("127.0.0.1", 0))
        self.address = self._public.get_extra_info("sockname")[:2]
        return self.address

    def from_client(self, data: bytes, client: tuple[str, int]) -> None:
        if self.blocked:
            return
        flow = self.flows.get(client)
        if flow is None:
            try:
                message = stun.parse_message(data)
                ufrag = message.attributes["USERNAME"].split(":")[0]
            except (ValueError, KeyError):
                self.counters["drop_not_stun"] += 1
                return
            try:
                token = tokens.verify(ufrag, self.keys)
            except tokens.TokenError:
                self.counters["drop_bad_token"] += 1
                return
            self.seen_ufrags.append(ufrag)
            self.counters["new_flow"] += 1
            flow = self.flows[client] = asyncio.get_running_loop().create_task(
                self._open(client, token.port))
            flow.add_done_callback(lambda t, d=data: self._send_first(t, d))
            return
        if isinstance(flow, asyncio.Task):
            return  # still opening: dropped, ICE retransmits
        if self.delay > 0:
            asyncio.get_running_loop().call_later(self.delay, self._forward_late, client, data)
            return
        flow.sendto(data)
        self.counters["forwarded_in"] += 1

    def _forward_late(self, client: tuple[str, int], data: bytes) -> None:
        flow = self.flows.get(client)
        if flow is not None and not isinstance(flow, asyncio.Task) and not self.blocked:
            flow.sendto(data)
            self.counters["forwarded_in"] += 1

    async def _open(self, client: tuple[str, int], port: int) -> asyncio.DatagramTransport:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Flow(self, client), local_addr=("127.0.0.1", 0),
            remote_addr=(self.transceiver_address, port))
        self.flows[client] = transport
        return transport

    def _send_first(self, task: asyncio.Task[Any], data: bytes) -> None:
        if not task.cancelled() and task.exception() is None:
            task.result().sendto(data)
            self.counters["forwarded_in"] += 1

    def to_client(self, data: bytes, client: tuple[str, int]) -> None:
        if self.blocked:
            return
        self._public.sendto(data, client)
        self.counters["forwarded_out"] += 1

    def rebind(self) -> None:
        """Forget every client's flow, as a NAT in front of the clients that
        gives each a new source port would make the relay do: each client's
        next packet must be a STUN check with its token again, and reaches the
        transceiver from a new relay-side port; the old ports are closed."""
        for flow in self.flows.values():
            if isinstance(flow, asyncio.Task):
                flow.cancel()
            else:
                flow.close()
        self.flows.clear()

    def close(self) -> None:
        for flow in self.flows.values():
            if isinstance(flow, asyncio.Task):
                flow.cancel()
            else:
                flow.close()
        self.flows.clear()
        self._public.close()


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to sockets bound to port 0."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port_range(size: int = 40) -> tuple[int, int]:
    """The calls' port range for this test process: below the kernel's
    ephemeral range, so that no socket bound to port 0 (a client's ICE
    gatherer, a resolver's query, another process on the machine) can land in
    it and look like a port the transceiver leaked; and spread by pid, so that
    parallel runs do not collide."""
    top = _ephemeral_low() - size
    span = max(1, top - 10000)
    base = 10000 + (os.getpid() * 97) % span
    return base, base + size - 1


async def start_transceiver(
    directory: Directory,
    relays: list[tuple[str, int]],
    model_target: str,
    *,
    api_keys: list[str] | None = ["secret"],  # noqa: B006 - never mutated
    max_calls: int = 50,
    probe_port: int = 0,
    cors_origins: list[str] | None = None,
    **call_options: Any,
) -> Transceiver:
    low, high = free_port_range()
    calls = CallSettings(
        transceiver_id=7,
        ports=PortPool("127.0.0.1", low, high),
        advertised=relay_candidates([RelaySpec(h, p) for h, p in relays]),
        model_target=model_target,
        max_calls=max_calls,
        model_backoff=Backoff(initial=0.1, maximum=0.5),
        **call_options,
    )
    service = Transceiver(
        ServiceSettings("127.0.0.1", 0, "127.0.0.1", api_keys=api_keys,
                        heartbeat_seconds=0.2, drain_grace_seconds=1.0,
                        probe_port=probe_port, cors_origins=cors_origins or []),
        calls, directory)
    await service.start()
    return service


def open_udp_ports(low: int, high: int) -> list[int]:
    """Ports of the range that are bound right now (by anyone)."""
    bound = []
    for port in range(low, high + 1):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            bound.append(port)
        finally:
            s.close()
    return bound


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))
