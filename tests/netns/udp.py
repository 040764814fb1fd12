# SPDX-License-Identifier: Apache-2.0
"""A UDP responder on a thread, for sockets made inside a lab namespace.

One loop serves the tests' echo server (the transceiver end of a relayed flow)
and the orchestrator tests' STUN probe responder: ``answer(data, peer)``
returns the reply, or None to stay silent.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


def echo(data: bytes, peer: tuple[str, int]) -> bytes:
    return data


class UdpResponder:
    """Answers datagrams on ``sock`` until closed; keeps what it received."""

    def __init__(self, sock: socket.socket,
                 answer: Callable[[bytes, tuple[str, int]], bytes | None] = echo) -> None:
        self.sock = sock
        self.answer = answer
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.count = 0
        """Replies sent."""
        self.stop = threading.Event()
        sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._run, name="udp-responder", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((data, peer))
            reply = self.answer(data, peer)
            if reply is not None:
                self.count += 1
                self.sock.sendto(reply, peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()
