# SPDX-License-Identifier: Apache-2.0
"""Packets for the relay lab (lab/relaylab.py), and the one setup every user needs.

The builders make the frames that arrive at the relay in a ``ProgTestRelay``: a
client's datagram to the public port, a transceiver's reply to a relay port,
a token minted with the lab's key. ``open_flow`` sends a valid Binding
Request and returns the relay port of the flow it opened. tests/bpf's packet
table (rows, expected output, checks) and bench/progcost.py (the same
packets, timed) are both built on these, so the two measure one thing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from lab import stun
from lab.relaylab import (
    KEY1,
    PRIVATE,
    PRIVATE6,
    PUBLIC_PORT,
    TRANSCEIVERS,
    VIP,
    VIP6,
    VPRIV_MAC,
    VPUB_MAC,
    ProgTestRelay,
)
from voxrelay import token

CLIENT = IPv4Address("203.0.113.7")
CLIENT_PORT = 51000
CLIENT6 = IPv6Address("2001:db8:7::7")
WIRE_MAC = "02:00:00:00:09:09"  # whoever sent the frame to the relay


def mint(key: bytes = KEY1, *, key_id: int = 1, transceiver_id: int = 7, port: int = 50007,
         ttl: int = 3600, now: float | None = None) -> str:
    return token.mint(key, key_id=key_id, transceiver_id=transceiver_id, port=port, ttl=ttl,
                      now=now)


def username(ufrag: str) -> str:
    return f"{ufrag}:cLnT"


def to_relay(payload: bytes, *, src: IPv4Address | str = CLIENT, sport: int = CLIENT_PORT,
             dst: IPv4Address | str = VIP, dport: int = PUBLIC_PORT, **ip: Any) -> Any:
    """A client's UDP datagram to the relay's public port (scapy packet)."""
    return (Ether(src=WIRE_MAC, dst=VPUB_MAC) / IP(src=str(src), dst=str(dst), ttl=57, **ip)
            / UDP(sport=sport, dport=dport) / Raw(payload))


def to_relay6(payload: bytes, *, src: IPv6Address | str = CLIENT6, sport: int = CLIENT_PORT,
              dst: IPv6Address | str = VIP6, dport: int = PUBLIC_PORT, **ip: Any) -> Any:
    """An IPv6 client's UDP datagram to the relay's IPv6 VIP (scapy packet)."""
    return (Ether(src=WIRE_MAC, dst=VPUB_MAC) / IPv6(src=str(src), dst=str(dst), hlim=57, **ip)
            / UDP(sport=sport, dport=dport) / Raw(payload))


def from_transceiver(payload: bytes, relay_port: int, *, txr: int = 7,
                     sport: int = 50007, src: IPv4Address | IPv6Address | str | None = None,
                     dst: IPv4Address | IPv6Address | str | None = None) -> Any:
    """A transceiver's UDP reply to a private address of the relay and a relay
    port: ``dst``, by default the config's private address (its private IPv6
    address for an IPv6 transceiver)."""
    addr = ipaddress.ip_address(TRANSCEIVERS[txr][0] if src is None else src)
    ip: Any = (IPv6(src=str(addr), dst=str(PRIVATE6 if dst is None else dst), hlim=64)
               if addr.version == 6
               else IP(src=str(addr), dst=str(PRIVATE if dst is None else dst), ttl=64))
    return (Ether(src=WIRE_MAC, dst=VPRIV_MAC) / ip
            / UDP(sport=sport, dport=relay_port) / Raw(payload))


@dataclass
class Context:
    """What a row's setup leaves for its packet and expectation."""

    lab: ProgTestRelay
    values: dict[str, Any] = field(default_factory=dict)


def send(ctx: Context, pkt: Any, stat: str, ingress: str = "vpub") -> None:
    res = ctx.lab.run(bytes(pkt), ingress)
    assert res.stat == stat, f"setup packet: expected {stat}, got {res.stat}"


def open_flow(ctx: Context, *, client: str = str(CLIENT), sport: int = CLIENT_PORT,
              ufrag: str | None = None) -> int:
    """Create a flow with a valid Binding Request (from an IPv6 client if
    ``client`` is one, to the IPv6 VIP); returns its relay port."""
    ufrag = ufrag or ctx.values.setdefault("ufrag", mint())
    request = stun.ice_binding_request(username(ufrag))
    if ipaddress.ip_address(client).version == 6:
        send(ctx, to_relay6(request, src=client, sport=sport), "STAT_FWD_NEW_FLOW6")
    else:
        send(ctx, to_relay(request, src=client, sport=sport), "STAT_FWD_NEW_FLOW")
    flow = ctx.lab.maps.flow(client, sport)
    assert flow is not None
    return flow.relay_port
