# SPDX-License-Identifier: Apache-2.0
"""The liveness probe: one STUN Binding Request through relay -> transceiver.

How it works (and what the transceiver must run):

1. The prober mints a routing token for ``transceiver_id`` and the
   transceiver's *probe port* (``probe_port`` in its directory record), with
   a short expiry, and sends a STUN Binding Request whose USERNAME is
   ``<token>:probe`` to the relay's public address and port.
2. The XDP program verifies the token as it would for a call, creates a flow
   and forwards the request to ``transceiver address:probe_port``.
3. The transceiver runs a ``ProbeResponder`` (``voxrelay/probe.py``, the wire
   contract both rooms share) on that port: it answers every
   Binding Request with a Binding Success Response carrying the same
   transaction id and the sender's address in XOR-MAPPED-ADDRESS (as a STUN
   server does). It checks nothing else: the relay already checked the token.
4. The answer comes back through the relay's reverse entry, from the relay's
   public address. The prober accepts it only from that address (a connected
   socket) and only with its transaction id.

Why a dedicated port instead of a call's ICE port: aioice answers a Binding
Request only when USERNAME names one of its live sessions and
MESSAGE-INTEGRITY verifies with that session's password, which a prober does
not have. The probe port exercises the same path (token check, flow
creation, both rewrites) without a call.

Send the probe from where clients are: a probe sent from the relay host
itself to its own public address is delivered locally and never meets XDP.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

from aioice import stun

from voxrelay import token as tk
from voxrelay.probe import build_request


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    relay: str
    transceiver_id: int | None
    rtt_ms: float | None = None
    reason: str = ""
    mapped_address: str | None = None
    """The address the transceiver saw: the relay's private address and flow port."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def probe(relay: tuple[str, int], ufrag: str, *, timeout: float = 2.0, attempts: int = 3,
          transceiver_id: int | None = None) -> ProbeResult:
    """Send the probe and wait for the answer (blocking; bounded by
    ``attempts * timeout``). Retries reuse the token: it is the same flow."""
    where = f"{relay[0]}:{relay[1]}"
    if transceiver_id is None:
        # A token from outside (`voxrelay probe --token`): what it routes to, and
        # whether it is still alive, are in it.
        try:
            decoded = tk.decode(ufrag)[0]
        except tk.TokenError as exc:
            return ProbeResult(False, where, None, reason=f"the probe token is malformed: {exc}")
        transceiver_id = decoded.transceiver_id
        if decoded.expiry <= time.time():
            # The relay would drop it (drop_token_expired): say so instead of timing out.
            return ProbeResult(False, where, transceiver_id, reason=(
                f"the probe token expired {time.time() - decoded.expiry:.0f} s ago; mint another "
                f"on a relay host: voxrelay token mint --probe --transceiver {transceiver_id}"))
    request = build_request(ufrag)
    family = socket.AF_INET6 if ":" in relay[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(relay)  # replies from anywhere else are not the relay's
        except OSError as exc:
            return ProbeResult(False, where, transceiver_id,
                               reason=f"cannot reach {where}: {exc.strerror}")
        for _ in range(max(1, attempts)):
            started = time.perf_counter()
            try:
                sock.send(bytes(request))
                while True:
                    data = sock.recv(2048)
                    try:
                        answer = stun.parse_message(data)
                    except ValueError:
                        continue  # not STUN: not ours
                    if answer.transaction_id != request.transaction_id:
                        continue
                    rtt = (time.perf_counter() - started) * 1000
                    if answer.message_class != stun.Class.RESPONSE:
                        return ProbeResult(
                            False, where, transceiver_id, rtt,
                            reason=f"transceiver {transceiver_id} answered with a STUN error "
                                   f"({answer.error_code})",
                        )
                    mapped = answer.attributes.get("XOR-MAPPED-ADDRESS")
                    return ProbeResult(
                        True, where, transceiver_id, rtt,
                        mapped_address=f"{mapped[0]}:{mapped[1]}" if mapped else None)
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                return ProbeResult(
                    False, where, transceiver_id,
                    reason=f"{where} refused the probe (ICMP port unreachable): "
                           "nothing listens there and no XDP relay is attached",
                )
            except OSError as exc:
                return ProbeResult(False, where, transceiver_id,
                                   reason=f"send to {where} failed: {exc.strerror}")
    return ProbeResult(
        False, where, transceiver_id,
        reason=f"no answer from transceiver {transceiver_id} through {where} after "
               f"{max(1, attempts)} x {timeout:g} s; `voxrelay maps stats` on the relay host "
               "tells where it stopped: a drop_* counter that grew is the relay's drop; "
               "fwd_new_flow or fwd_to_transceiver that grew means the relay forwarded it and "
               "the transceiver did not answer (probe responder down, a firewall, or on veth "
               "a sender with TX checksum offload on: InCsumErrors in the transceiver's "
               "/proc/net/snmp; docs/deployment.md, \"veth\")",
    )


async def probe_async(relay: tuple[str, int], ufrag: str, *, timeout: float = 2.0,
                      attempts: int = 3, transceiver_id: int | None = None) -> ProbeResult:
    """``probe`` on a worker thread, so that the event loop keeps running."""
    return await asyncio.to_thread(probe, relay, ufrag, timeout=timeout, attempts=attempts,
                                   transceiver_id=transceiver_id)
