# SPDX-License-Identifier: Apache-2.0
"""The liveness probe's wire contract, spoken by both rooms.

The orchestrator sends the probe (``orchestrator/probe.py``); the transceiver
answers it (``ProbeResponder`` on its probe port). Both sides live above this
floor, so what they share (the port, the token, the request and the answer)
lives here. How the probe travels is described in ``orchestrator/probe.py``.
"""

from __future__ import annotations

import asyncio
from typing import cast

from aioice import stun

from voxrelay import token as tk
from voxrelay.directory.records import DEFAULT_PROBE_PORT

__all__ = [
    "DEFAULT_PROBE_PORT",
    "PROBE_TOKEN_TTL",
    "ProbeResponder",
    "build_answer",
    "build_request",
    "mint_probe_token",
]

PROBE_TOKEN_TTL = 60
"""Seconds a probe token lives: long enough for retries, short enough that a
leaked one opens nothing for long."""


def build_request(ufrag: str) -> stun.Message:
    """The probe: a Binding Request whose USERNAME is ``<token>:probe``."""
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    request.attributes["USERNAME"] = f"{ufrag}:probe"
    request.add_fingerprint()
    return request


def build_answer(data: bytes, sender: tuple[str, int]) -> bytes | None:
    """The responder's reply to ``data`` from ``sender``, or None to stay silent."""
    try:
        request = stun.parse_message(data)
    except ValueError:
        return None
    if (request.message_method, request.message_class) != (stun.Method.BINDING, stun.Class.REQUEST):
        return None
    answer = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, request.transaction_id)
    answer.attributes["XOR-MAPPED-ADDRESS"] = (sender[0], sender[1])
    answer.add_fingerprint()
    return bytes(answer)


def mint_probe_token(keys: dict[int, bytes], current: int, transceiver_id: int, port: int) -> str:
    """A short-lived routing token for ``transceiver_id``'s probe ``port``."""
    return tk.mint(keys[current], key_id=current, transceiver_id=transceiver_id, port=port,
                   ttl=PROBE_TOKEN_TTL)


class ProbeResponder(asyncio.DatagramProtocol):
    """Answers STUN Binding Requests on the transceiver's probe port.

    ``await ProbeResponder.serve("0.0.0.0", probe_port)`` returns the
    transport; close it on shutdown. It checks nothing but the STUN shape:
    the relay already verified the token on the way in."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.answered = 0

    @classmethod
    async def serve(cls, host: str, port: int) -> tuple[asyncio.DatagramTransport, ProbeResponder]:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(cls, local_addr=(host, port))
        return transport, protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram endpoint's transport; CPython's class does not derive from
        # asyncio.DatagramTransport, so an isinstance check would refuse it.
        self.transport = cast("asyncio.DatagramTransport", transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = build_answer(data, addr)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)
            self.answered += 1
