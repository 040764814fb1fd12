# SPDX-License-Identifier: Apache-2.0
"""The relay's packet table: one row per path through bpf/relay.c.

Each ``Row`` names the input packet (built with scapy), the map setup before
it (including earlier packets), the arriving interface, and the expected
verdict: XDP action and the one counter that moves. Forwarded rows also build
the expected output packet independently with scapy (addresses, ports, MACs,
and IP/UDP checksums recomputed from scratch) for a byte-for-byte compare.
Pass and drop rows expect the packet back untouched.

The packets themselves, the lab's addresses and ``open_flow`` are lab
machinery (lab/packets.py, lab/relaylab.py), shared with bench/progcost.py;
what is here is what the tests assert. tests/bpf/test_bpf_packets.py runs
the table, once per row and repeat-N (``repeat_row``).
"""

from __future__ import annotations

import ipaddress
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from lab import stun
from lab.bpftest import XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX
from lab.packets import (
    CLIENT,
    CLIENT6,
    CLIENT_PORT,
    WIRE_MAC,
    Context,
    from_transceiver,
    mint,
    open_flow,
    to_relay,
    to_relay6,
    username,
)
from lab.relaylab import (
    EXTRA_PRIVATE,
    GATEWAY_MAC,
    KEY1,
    KEY2,
    ONLINK6_NO_NEIGH,
    ONLINK_NO_NEIGH,
    PORT_MAX,
    PORT_MIN,
    PRIVATE,
    PRIVATE6,
    PRIVATE6_NET,
    PRIVATE_NET,
    PUBLIC_PORT,
    TRANSCEIVERS,
    VIP,
    VIP6,
    VPRIV_MAC,
    VPUB_MAC,
    ProgTestRelay,
    lab_relay_config,
)
from voxrelay import token

# --- payloads ----------------------------------------------------------------

DTLS = bytes.fromhex("16fefd") + os.urandom(40)   # a DTLS record's first bytes
SRTP = bytes.fromhex("8078") + os.urandom(90)


def rebuilt(pkt: Any, *, smac: str, dmac: str, src: IPv4Address, dst: IPv4Address,
            sport: int, dport: int) -> bytes:
    """``pkt`` as the relay should send it, checksums recomputed from scratch."""
    out = pkt.copy()
    out[Ether].src, out[Ether].dst = smac, dmac
    out[IP].src, out[IP].dst = str(src), str(dst)
    out[UDP].sport, out[UDP].dport = sport, dport
    del out[IP].chksum
    del out[UDP].chksum
    return bytes(out.__class__(bytes(out)))


Addr = IPv4Address | IPv6Address


def relayed(pkt: Any, *, smac: str, dmac: str, src: Addr, dst: Addr,
            sport: int, dport: int) -> bytes:
    """``pkt`` (either family) as the relay should send it to ``dst``, in
    ``dst``'s family: rewritten in place within a family, else a fresh IP
    header of the other family (TTL/hop limit and TOS/traffic class carried
    over; IPv4 with DF and ID 0, as bpf/relay.c translates), every checksum
    recomputed from scratch by scapy."""
    ip_in = pkt[IPv6] if IPv6 in pkt else pkt[IP]
    if (IPv6 in pkt) == (dst.version == 6) and dst.version == 4:
        return rebuilt(pkt, smac=smac, dmac=dmac, src=IPv4Address(src), dst=IPv4Address(dst),
                       sport=sport, dport=dport)
    payload = bytes(pkt[UDP].payload)
    ttl = ip_in.hlim if IPv6 in pkt else ip_in.ttl
    tos = ip_in.tc if IPv6 in pkt else ip_in.tos
    ip: Any = (IPv6(src=str(src), dst=str(dst), hlim=ttl, tc=tos, fl=0) if dst.version == 6
               else IP(src=str(src), dst=str(dst), ttl=ttl, tos=tos, flags="DF", id=0))
    out = Ether(src=smac, dst=dmac) / ip / UDP(sport=sport, dport=dport) / Raw(payload)
    return bytes(Ether(bytes(out)))


def client_of(pkt: Any) -> tuple[Addr, int]:
    ip = pkt[IPv6] if IPv6 in pkt else pkt[IP]
    return ipaddress.ip_address(ip.src), pkt[UDP].sport


# --- rows --------------------------------------------------------------------

@dataclass
class Row:
    name: str
    packet: Callable[[Context], Any]
    action: int
    stat: str
    setup: Callable[[Context], None] | None = None
    ingress: str = "vpub"
    expect: Callable[[Context, Any], bytes] | None = None
    """Expected output bytes; None: the input, untouched."""
    check: Callable[[Context, Any], None] | None = None
    """Extra assertions on the map state after the packet."""
    raw: bool = False
    """``packet`` returns bytes, not a scapy packet."""


def to_txr(ctx: Context, pkt: Any, *, txr: int = 7, port: int = 50007) -> bytes:
    """Expected output of a public packet (either family) forwarded to
    transceiver ``txr`` (either family)."""
    flow = ctx.lab.maps.flow(*client_of(pkt))
    assert flow is not None, "the flow was not created"
    assert PORT_MIN <= flow.relay_port <= PORT_MAX
    addr, mac, _ = TRANSCEIVERS[txr]
    assert flow.transceiver_addr == addr and flow.transceiver_port == port
    smac = VPRIV_MAC if addr in PRIVATE_NET or addr in PRIVATE6_NET else VPUB_MAC
    # From the flow's own relay-side address: one of the relay's private IPv4
    # ones, or its private IPv6 one for an IPv6 transceiver.
    if addr.version == 6:
        assert flow.relay_addr == PRIVATE6
    else:
        assert flow.relay_addr in ctx.lab.maps.private_addrs()
    return relayed(pkt, smac=smac, dmac=mac or "", src=flow.relay_addr, dst=addr,
                   sport=flow.relay_port, dport=port)


def to_client(ctx: Context, pkt: Any) -> bytes:
    dst = ipaddress.ip_address((pkt[IPv6] if IPv6 in pkt else pkt[IP]).dst)
    rev = {(r.relay_addr, r.relay_port): r for r in ctx.lab.maps.reverse_entries()}[
        (dst, pkt[UDP].dport)]
    vip = VIP6 if rev.client_addr.version == 6 else VIP
    return relayed(pkt, smac=VPUB_MAC, dmac=GATEWAY_MAC, src=vip, dst=rev.client_addr,
                   sport=PUBLIC_PORT, dport=rev.client_port)


def with_config(**changes: Any) -> Callable[[Context], None]:
    def setup(ctx: Context) -> None:
        ctx.lab.configure(lab_relay_config(**changes))
    return setup


def stun_with(ufrag: str) -> Callable[[Context], Any]:
    return lambda ctx: to_relay(stun.ice_binding_request(username(ufrag)))


def flip(ufrag: str, index: int) -> str:
    """Change one base64 character (to another valid one)."""
    c = ufrag[index]
    return ufrag[:index] + ("B" if c != "B" else "C") + ufrag[index + 1:]


def version2_token() -> str:
    body = struct.pack(">BBIHII", 2, 1, 7, 50007, int(time.time()) + 600, 1)
    mac = token.siphash24(KEY1, body)
    import base64
    return base64.b64encode(body + struct.pack("<Q", mac)).decode()


def _check_flow_to(txr: int, port: int = 50007) -> Callable[[Context, Any], None]:
    def check(ctx: Context, pkt: Any) -> None:
        flow = ctx.lab.maps.flow(pkt[IP].src, pkt[UDP].sport)
        assert flow is not None and flow.transceiver_id == txr
        assert flow.transceiver_port == port
        rev = {r.relay_port: r for r in ctx.lab.maps.reverse_entries()}[flow.relay_port]
        assert (rev.client_addr, rev.client_port) == (IPv4Address(pkt[IP].src), pkt[UDP].sport)
        assert rev.transceiver_addr == TRANSCEIVERS[txr][0] and rev.transceiver_port == port
        # the next hop is cached in the flow for the packets that follow
        assert flow.next_hop is not None
        assert flow.next_hop.dmac == TRANSCEIVERS[txr][1]
        assert flow.next_hop.smac == VPRIV_MAC
    return check


def _setup_known(ctx: Context) -> None:
    ctx.values["relay_port"] = open_flow(ctx)


# --- several private addresses -------------------------------------------------

MANY_PRIVATE = {"extra_private_addresses": [str(a) for a in EXTRA_PRIVATE]}
SPREAD_FLOWS = 24
"""Flows opened to see them spread: all on one of 3 addresses has odds 3^-23."""


def _setup_many_private(ctx: Context) -> None:
    ctx.lab.configure(lab_relay_config(**MANY_PRIVATE))


def _check_spread(ctx: Context, pkt: Any) -> None:
    for n in range(SPREAD_FLOWS):
        open_flow(ctx, sport=6000 + n, ufrag=mint())  # a token each: the per-token cap
    flows = ctx.lab.maps.flows()
    used = {f.relay_addr for f in flows}
    assert used <= {PRIVATE, *EXTRA_PRIVATE} and len(used) >= 2, used
    # Every flow's (address, port) is its own, and its reverse entry is keyed by both.
    pairs = {(f.relay_addr, f.relay_port) for f in flows}
    assert len(pairs) == len(flows)
    assert {(r.relay_addr, r.relay_port) for r in ctx.lab.maps.reverse_entries()} == pairs


def _setup_flow_on_extra(ctx: Context) -> None:
    """A flow whose relay-side address is an extra one (bounded search)."""
    _setup_many_private(ctx)
    for n in range(64):
        port = open_flow(ctx, sport=7000 + n, ufrag=mint())
        flow = ctx.lab.maps.flow(CLIENT, 7000 + n)
        assert flow is not None
        if flow.relay_addr != PRIVATE:
            ctx.values.update(relay_port=port, relay_addr=flow.relay_addr, sport=7000 + n)
            return
    raise AssertionError("64 new flows, none on an extra private address")


def _reply_to_extra(ctx: Context) -> Any:
    return from_transceiver(SRTP, ctx.values["relay_port"], dst=ctx.values["relay_addr"])


def _reply_to_other_private(ctx: Context) -> Any:
    """The flow's port on a private address the flow does not hold (nor any other flow)."""
    taken = {(r.relay_addr, r.relay_port) for r in ctx.lab.maps.reverse_entries()}
    other = next(a for a in (PRIVATE, *EXTRA_PRIVATE)
                 if (a, ctx.values["relay_port"]) not in taken)
    return from_transceiver(SRTP, ctx.values["relay_port"], dst=other)


def _setup_rebinding(ctx: Context) -> None:
    ctx.values["ufrag"] = mint()
    ctx.values["first_port"] = open_flow(ctx, client="203.0.113.7", sport=51000)


def _check_rebinding(ctx: Context, pkt: Any) -> None:
    flows = {(str(f.client_addr), f.client_port): f for f in ctx.lab.maps.flows()}
    old, new = flows[("203.0.113.7", 51000)], flows[("203.0.113.99", 62000)]
    assert old.transceiver_id == new.transceiver_id == 7
    assert old.token_mac == new.token_mac
    assert old.relay_port != new.relay_port
    assert len(ctx.lab.maps.reverse_entries()) == 2


def _setup_cap(ctx: Context) -> None:
    ctx.lab.configure(lab_relay_config(max_flows_per_token=2))
    ctx.values["ufrag"] = mint()
    open_flow(ctx, client="203.0.113.30")
    open_flow(ctx, client="203.0.113.31")


def _setup_rate(ctx: Context) -> None:
    ctx.lab.configure(lab_relay_config(new_flows_per_sec=1))
    open_flow(ctx, sport=1000)


def _setup_one_port(ctx: Context) -> None:
    ctx.lab.configure(lab_relay_config(port_min=40500, port_max=40500))
    ctx.values["ufrag"] = mint()
    open_flow(ctx, client="203.0.113.40")


def _setup_reclaim(ctx: Context) -> None:
    _setup_one_port(ctx)
    ctx.lab.age_all_flows(3600)


def _check_reclaim(ctx: Context, pkt: Any) -> None:
    flows = ctx.lab.maps.flows()
    assert [(str(f.client_addr), f.relay_port) for f in flows] == [(str(CLIENT), 40500)]
    assert [r.client_addr for r in ctx.lab.maps.reverse_entries()] == [CLIENT]


def _setup_idle(ctx: Context) -> None:
    ctx.values["relay_port"] = open_flow(ctx)
    ctx.lab.age_all_flows(3600)


def _check_idle_reopened(ctx: Context, pkt: Any) -> None:
    flow = ctx.lab.maps.flow(CLIENT, CLIENT_PORT)
    assert flow is not None
    ports = [r.relay_port for r in ctx.lab.maps.reverse_entries()]
    assert ports == [flow.relay_port], "the idle flow's old port must be freed"


def _setup_retired(ctx: Context) -> None:
    ctx.lab.maps.retire_key(1)


def _setup_no_private6(ctx: Context) -> None:
    ctx.lab.configure(lab_relay_config(), private6=False)


def _unconfigure(ctx: Context) -> None:
    ctx.lab.maps.clear_config()


def _known_padded(ctx: Context) -> bytes:
    pkt = to_relay(b"\x17\xfe\xfd" + b"x")  # a 4-byte payload: frame padded to 60
    frame = bytes(pkt)
    return frame + b"\x00" * (60 - len(frame))


def _expect_padded(ctx: Context, frame: bytes) -> bytes:
    pkt = Ether(frame[: 14 + 20 + 8 + 4])
    return to_txr(ctx, pkt) + b"\x00" * (len(frame) - 46)


def _no_neigh_expect(ctx: Context, pkt: Any) -> bytes:
    flow = ctx.lab.maps.flow(pkt[IP].src, pkt[UDP].sport)
    assert flow is not None and flow.next_hop is None
    # rewritten for the transceiver; the MACs are left for the stack to fill in
    return rebuilt(pkt, smac=WIRE_MAC, dmac=VPUB_MAC, src=PRIVATE, dst=TRANSCEIVERS[9][0],
                   sport=flow.relay_port, dport=50009)


def _private_reply(ctx: Context, **kw: Any) -> Any:
    return from_transceiver(SRTP, ctx.values["relay_port"], **kw)


def _no_udp_csum(ctx: Context) -> Any:
    pkt = to_relay(DTLS)
    pkt[UDP].chksum = 0
    return Ether(bytes(pkt))


def _expect_no_udp_csum(ctx: Context, pkt: Any) -> bytes:
    expected = Ether(to_txr(ctx, pkt))
    expected[UDP].chksum = 0
    return bytes(expected)


def _first_fragment(ctx: Context) -> Any:
    return to_relay(stun.ice_binding_request(username(mint())), flags="MF")


def _later_fragment(ctx: Context) -> Any:
    pkt = to_relay(b"\x00" * 16, frag=100)
    return pkt


def _ip_options(ctx: Context) -> Any:
    from scapy.layers.inet import IPOption_RR
    return to_relay(stun.ice_binding_request(username(mint())), options=[IPOption_RR()])


def _truncated_udp(ctx: Context) -> bytes:
    return bytes(to_relay(b""))[: 14 + 20 + 4]


def _ip_len_too_long(ctx: Context) -> Any:
    pkt = to_relay(stun.ice_binding_request(username(mint())))
    pkt[IP].len = len(pkt[IP]) + 40
    return Ether(bytes(pkt))


def _udp_len_wrong(ctx: Context) -> Any:
    pkt = to_relay(stun.ice_binding_request(username(mint())))
    pkt[UDP].len = len(pkt[UDP]) - 4
    return Ether(bytes(pkt))


def _truncated_ip(ctx: Context) -> bytes:
    return bytes(to_relay(b""))[: 14 + 12]


# --- where packets come from (issue #10) ---------------------------------------

def _flow_state(ctx: Context) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every XDP-written map, raw, to show that a dropped packet changed none of them."""
    return {name: sorted((bytes(k), bytes(v)) for k, v in ctx.lab.maps.table(name).items())
            for name in ("flows", "reverse", "rate", "token_flows")}


def _then_snapshot(setup: Callable[[Context], None] | None = None,
                   **config: Any) -> Callable[[Context], None]:
    """Run ``setup`` (with the rate limit and per-token cap on, so that both maps
    would be touched), then keep the flow state for ``_unchanged``."""
    def run(ctx: Context) -> None:
        ctx.lab.configure(lab_relay_config(**{"new_flows_per_sec": 5,
                                              "max_flows_per_token": 4, **config}))
        if setup is not None:
            setup(ctx)
        ctx.values["state"] = _flow_state(ctx)
    return run


def _unchanged(ctx: Context, pkt: Any) -> None:
    """Nothing allocated or refreshed: no flow, no port, no rate window, no token count,
    no last_seen touched."""
    assert _flow_state(ctx) == ctx.values["state"]


def _stun_from(src: IPv4Address | str, **kw: Any) -> Callable[[Context], Any]:
    return lambda ctx: to_relay(stun.ice_binding_request(username(mint(**kw))), src=src)


def _open_flow_from(client: IPv4Address | str, **frame: Any) -> Callable[[Context], None]:
    def setup(ctx: Context) -> None:
        pkt = to_relay(stun.ice_binding_request(username(mint())), src=client)
        for field_name, value in frame.items():
            setattr(pkt[Ether], field_name, value)
        res = ctx.lab.run(bytes(pkt))
        assert res.stat == "STAT_FWD_NEW_FLOW", res.stat
        flow = ctx.lab.maps.flow(client, CLIENT_PORT)
        assert flow is not None
        ctx.values["relay_port"] = flow.relay_port
    return setup


def _to_learnt_hop(ctx: Context, pkt: Any) -> bytes:
    """A reply sent to the MAC the client's Binding Request came from (WIRE_MAC),
    from the MAC it was sent to (the VIP's), out of the public interface."""
    rev = {r.relay_port: r for r in ctx.lab.maps.reverse_entries()}[pkt[UDP].dport]
    return rebuilt(pkt, smac=VPUB_MAC, dmac=WIRE_MAC, src=VIP, dst=rev.client_addr,
                   sport=PUBLIC_PORT, dport=rev.client_port)


def _check_learnt_stays_stale(ctx: Context, pkt: Any) -> None:
    """The learnt hop is never validated: the next reply asks the fib again."""
    rev = {r.relay_port: r for r in ctx.lab.maps.reverse_entries()}[pkt[UDP].dport]
    config = ctx.lab.maps.read_config()
    assert config is not None and rev.next_hop is not None
    assert (rev.next_hop.ifindex, rev.next_hop.smac, rev.next_hop.dmac) == (
        ctx.lab.ifindex["vpub"], VPUB_MAC, WIRE_MAC)
    assert rev.next_hop.generation != config.nh_generation


def _rewritten_for_stack(ctx: Context, pkt: Any) -> bytes:
    """A reply rewritten for its client but passed up: MACs as they arrived."""
    rev = {r.relay_port: r for r in ctx.lab.maps.reverse_entries()}[pkt[UDP].dport]
    return rebuilt(pkt, smac=pkt[Ether].src, dmac=pkt[Ether].dst, src=VIP, dst=rev.client_addr,
                   sport=PUBLIC_PORT, dport=rev.client_port)


# --- IPv6, dual stack (issue #13) ----------------------------------------------

def stun6_with(ufrag: str, **kw: Any) -> Callable[[Context], Any]:
    return lambda ctx: to_relay6(stun.ice_binding_request(username(ufrag)), **kw)


def _stun6_from(src: str, **kw: Any) -> Callable[[Context], Any]:
    return lambda ctx: to_relay6(stun.ice_binding_request(username(mint(**kw))), src=src)


def _setup_known6(ctx: Context) -> None:
    ctx.values["relay_port"] = open_flow(ctx, client=str(CLIENT6))


def _setup_known6_v6txr(ctx: Context) -> None:
    ctx.values["ufrag"] = mint(transceiver_id=13, port=50013)
    ctx.values["relay_port"] = open_flow(ctx, client=str(CLIENT6))


def _setup_known4_v6txr(ctx: Context) -> None:
    ctx.values["ufrag"] = mint(transceiver_id=13, port=50013)
    ctx.values["relay_port"] = open_flow(ctx)


def _reply13(ctx: Context) -> Any:
    return from_transceiver(SRTP, ctx.values["relay_port"], txr=13, sport=50013)


def _check_flow6(txr: int, port: int) -> Callable[[Context, Any], None]:
    def check(ctx: Context, pkt: Any) -> None:
        flow = ctx.lab.maps.flow(*client_of(pkt))
        assert flow is not None and flow.transceiver_id == txr
        assert (flow.transceiver_addr, flow.transceiver_port) == (TRANSCEIVERS[txr][0], port)
        rev = {r.relay_port: r for r in ctx.lab.maps.reverse_entries()}[flow.relay_port]
        assert (rev.client_addr, rev.client_port) == client_of(pkt)
        assert rev.transceiver_addr == TRANSCEIVERS[txr][0]
    return check


def _setup_rate6(ctx: Context) -> None:
    ctx.lab.configure(lab_relay_config(new_flows_per_sec=1))
    open_flow(ctx, client="2001:db8:7::1", sport=1000)


def _v6_zero_csum(ctx: Context) -> bytes:
    frame = bytearray(bytes(to_relay6(stun.ice_binding_request(username(mint())))))
    frame[14 + 40 + 6:14 + 40 + 8] = b"\0\0"
    return bytes(frame)


def _v6_payload_len(delta: int) -> Callable[[Context], Any]:
    def build(ctx: Context) -> Any:
        pkt = to_relay6(stun.ice_binding_request(username(mint())))
        pkt[IPv6].plen = len(pkt[UDP]) + delta
        return Ether(bytes(pkt))
    return build


def _v6_bad_version(ctx: Context) -> bytes:
    frame = bytearray(bytes(to_relay6(stun.ice_binding_request(username(mint())))))
    frame[14] = (4 << 4) | (frame[14] & 0x0F)
    return bytes(frame)


def _v4_reply_no_csum(ctx: Context) -> Any:
    pkt = _private_reply(ctx)
    pkt[UDP].chksum = 0
    return Ether(bytes(pkt))


def _to_learnt_hop6(ctx: Context, pkt: Any) -> bytes:
    rev = {r.relay_port: r for r in ctx.lab.maps.reverse_entries()}[pkt[UDP].dport]
    return relayed(pkt, smac=VPUB_MAC, dmac=WIRE_MAC, src=VIP6, dst=rev.client_addr,
                   sport=PUBLIC_PORT, dport=rev.client_port)


ROWS6: list[Row] = [
    # new flows and known flows, both ways, every pair of families
    Row("IPv6 client, valid token: flow to an IPv4 transceiver, translated to IPv4",
        stun6_with(mint()), XDP_REDIRECT, "STAT_FWD_NEW_FLOW6", expect=to_txr,
        check=_check_flow6(7, 50007)),
    Row("IPv6 client, traffic class carried into the IPv4 TOS",
        stun6_with(mint(), tc=0xB8), XDP_REDIRECT, "STAT_FWD_NEW_FLOW6", expect=to_txr),
    Row("IPv6 client, known flow: DTLS translated to the IPv4 transceiver",
        lambda ctx: to_relay6(DTLS), XDP_REDIRECT, "STAT_FWD_TO_TRANSCEIVER6",
        setup=_setup_known6, expect=to_txr),
    Row("IPv4 transceiver's reply to an IPv6 client: translated, from VIP6:3478",
        _private_reply, XDP_REDIRECT, "STAT_FWD_TO_CLIENT6", setup=_setup_known6,
        ingress="vpriv", expect=to_client),
    Row("IPv6 client to an IPv6 transceiver: rewritten in place",
        stun6_with(mint(transceiver_id=13, port=50013)), XDP_REDIRECT, "STAT_FWD_NEW_FLOW6",
        expect=lambda ctx, pkt: to_txr(ctx, pkt, txr=13, port=50013),
        check=_check_flow6(13, 50013)),
    Row("IPv6 transceiver's reply to an IPv6 client",
        _reply13, XDP_REDIRECT, "STAT_FWD_TO_CLIENT6", setup=_setup_known6_v6txr,
        ingress="vpriv", expect=to_client),
    Row("IPv4 client to an IPv6 transceiver: translated to IPv6",
        stun_with(mint(transceiver_id=13, port=50013)), XDP_REDIRECT, "STAT_FWD_NEW_FLOW",
        expect=lambda ctx, pkt: to_txr(ctx, pkt, txr=13, port=50013),
        check=_check_flow6(13, 50013)),
    Row("IPv4 client, known flow to an IPv6 transceiver",
        lambda ctx: to_relay(SRTP), XDP_REDIRECT, "STAT_FWD_TO_TRANSCEIVER",
        setup=_setup_known4_v6txr, expect=lambda ctx, pkt: to_txr(ctx, pkt, txr=13, port=50013)),
    Row("IPv6 transceiver's reply to an IPv4 client: translated to IPv4",
        _reply13, XDP_REDIRECT, "STAT_FWD_TO_CLIENT", setup=_setup_known4_v6txr,
        ingress="vpriv", expect=to_client),
    Row("first reply to an on-link IPv6 client with no neighbour entry: to its MAC",
        _private_reply, XDP_REDIRECT, "STAT_FWD_TO_CLIENT6_LEARNT_NH",
        setup=lambda ctx: ctx.values.update(relay_port=open_flow(ctx, client=str(ONLINK6_NO_NEIGH))),
        ingress="vpriv", expect=_to_learnt_hop6),
    # drops
    Row("IPv6 with a hop-by-hop header to VIP6: the relay walks no extension header",
        lambda ctx: Ether(src=WIRE_MAC, dst=VPUB_MAC) / IPv6(src=str(CLIENT6), dst=str(VIP6))
        / IPv6ExtHdrHopByHop() / UDP(sport=CLIENT_PORT, dport=PUBLIC_PORT)
        / Raw(stun.ice_binding_request(username(mint()))),
        XDP_DROP, "STAT_DROP_IPV6_EXT_HDR", setup=_then_snapshot(), check=_unchanged),
    Row("IPv6 fragment to VIP6",
        lambda ctx: Ether(src=WIRE_MAC, dst=VPUB_MAC) / IPv6(src=str(CLIENT6), dst=str(VIP6))
        / IPv6ExtHdrFragment(m=1) / UDP(sport=CLIENT_PORT, dport=PUBLIC_PORT)
        / Raw(stun.ice_binding_request(username(mint()))),
        XDP_DROP, "STAT_DROP_IPV6_EXT_HDR"),
    Row("UDP over IPv6 with checksum 0", _v6_zero_csum, XDP_DROP, "STAT_DROP_UDP6_ZERO_CSUM",
        raw=True, setup=_then_snapshot(), check=_unchanged),
    Row("IPv4 reply without a UDP checksum, to an IPv6 client",
        _v4_reply_no_csum, XDP_DROP, "STAT_DROP_NO_CSUM_TO_IPV6", setup=_setup_known6,
        ingress="vpriv"),
    Row("IPv6 payload length beyond the frame", _v6_payload_len(40), XDP_DROP,
        "STAT_DROP_BAD_LENGTH"),
    Row("IPv6 payload length disagrees with UDP", _v6_payload_len(-4), XDP_DROP,
        "STAT_DROP_BAD_LENGTH"),
    Row("IPv6 ethertype, IPv4 version nibble", _v6_bad_version, XDP_DROP,
        "STAT_DROP_BAD_LENGTH", raw=True),
    Row("IPv6 UDP header cut short",
        lambda ctx: bytes(to_relay6(b""))[: 14 + 40 + 4], XDP_DROP, "STAT_DROP_TRUNCATED",
        raw=True),
    Row("IPv6 to VIP6 arriving on the private interface",
        stun6_with(mint()), XDP_DROP, "STAT_DROP_INGRESS_NOT_PUBLIC", ingress="vpriv",
        setup=_then_snapshot(), check=_unchanged),
    Row("IPv6 reply to a relay port arriving on the public interface",
        _reply13, XDP_DROP, "STAT_DROP_INGRESS_NOT_PRIVATE", setup=_setup_known6_v6txr),
    Row("IPv6 reply from another address of the private subnet is spoofed",
        lambda ctx: from_transceiver(SRTP, ctx.values["relay_port"], txr=13, sport=50013,
                                     src="fd00:77::22"),
        XDP_DROP, "STAT_DROP_SPOOFED_SOURCE", setup=_setup_known6_v6txr, ingress="vpriv"),
    # The reverse key carries the relay-side address: the IPv6 transceiver's
    # flow holds (private_addr6, port), so the same port on the IPv4 address
    # is no flow at all.
    Row("IPv4 reply to an IPv6 transceiver's relay port finds no reverse entry",
        lambda ctx: from_transceiver(SRTP, ctx.values["relay_port"], txr=7, sport=50013),
        XDP_DROP, "STAT_DROP_NO_REVERSE", setup=_setup_known6_v6txr, ingress="vpriv"),
    Row("IPv6 client from the relay's own VIP6 is blocked",
        _stun6_from(str(VIP6)), XDP_DROP, "STAT_DROP_BLOCKED_SOURCE",
        setup=_then_snapshot(), check=_unchanged),
    Row("IPv6 client from the private IPv6 subnet is blocked",
        _stun6_from("fd00:77::99"), XDP_DROP, "STAT_DROP_BLOCKED_SOURCE",
        setup=_then_snapshot(), check=_unchanged),
    Row("IPv6 link-local source is blocked (default list)",
        _stun6_from("fe80::1"), XDP_DROP, "STAT_DROP_BLOCKED_SOURCE",
        setup=_then_snapshot(), check=_unchanged),
    Row("IPv6 v4-mapped source is blocked (default list)",
        _stun6_from("::ffff:203.0.113.7"), XDP_DROP, "STAT_DROP_BLOCKED_SOURCE",
        setup=_then_snapshot(), check=_unchanged),
    Row("second new flow from another address of one IPv6 /64 within a second: rate limited",
        _stun6_from("2001:db8:7::2"), XDP_DROP, "STAT_DROP_RATE_LIMITED", setup=_setup_rate6),
    Row("IPv6 client, bad token MAC",
        lambda ctx: to_relay6(stun.ice_binding_request(username(flip(mint(), 25)))),
        XDP_DROP, "STAT_DROP_TOKEN_BAD_MAC"),
    Row("IPv6 client, DTLS first: not STUN", lambda ctx: to_relay6(DTLS), XDP_DROP,
        "STAT_DROP_NOT_STUN"),
    # not for the relay
    Row("IPv6 UDP to another port of VIP6 passes", stun6_with(mint(), dport=53), XDP_PASS,
        "STAT_PASS_NOT_RELAY"),
    Row("IPv6 to the IPv4-mapped VIP (::ffff:VIP) is not the VIP: passes",
        stun6_with(mint(), dst=f"::ffff:{VIP}"), XDP_PASS, "STAT_PASS_NOT_RELAY"),
    Row("ICMPv6 to VIP6 passes (neighbour discovery, ping)",
        lambda ctx: Ether(dst=VPUB_MAC) / IPv6(src=str(CLIENT6), dst=str(VIP6))
        / ICMPv6EchoRequest(), XDP_PASS, "STAT_PASS_NOT_RELAY"),
    Row("IPv6 to VIP6:3478 passes when no IPv6 VIP is configured", stun6_with(mint()),
        XDP_PASS, "STAT_PASS_NOT_RELAY",
        setup=lambda ctx: ctx.lab.configure(lab_relay_config(), ipv6=False, private6=False)),
]

ROWS: list[Row] = [
    # --- new flows ---
    Row("valid token opens a flow and goes to its transceiver",
        stun_with(mint()), XDP_REDIRECT, "STAT_FWD_NEW_FLOW",
        expect=to_txr, check=_check_flow_to(7)),
    Row("USERNAME after other attributes is still found",
        lambda ctx: to_relay(stun.ice_binding_request(username(mint(transceiver_id=8, port=50111)),
                                             before=3)),
        XDP_REDIRECT, "STAT_FWD_NEW_FLOW",
        expect=lambda ctx, pkt: to_txr(ctx, pkt, txr=8, port=50111),
        check=_check_flow_to(8, 50111)),
    Row("second active key (rotation) opens a flow too",
        stun_with(mint(KEY2, key_id=2)), XDP_REDIRECT, "STAT_FWD_NEW_FLOW", expect=to_txr),
    Row("NAT rebinding: same token from a new address makes a new flow, same transceiver",
        lambda ctx: to_relay(stun.ice_binding_request(username(ctx.values["ufrag"])),
                             src="203.0.113.99", sport=62000),
        XDP_REDIRECT, "STAT_FWD_NEW_FLOW", setup=_setup_rebinding, expect=to_txr,
        check=_check_rebinding),
    Row("egress interface == ingress interface: XDP_TX (a transceiver on the public side)",
        stun_with(mint(transceiver_id=12, port=50012)), XDP_TX, "STAT_FWD_NEW_FLOW",
        expect=lambda ctx, pkt: to_txr(ctx, pkt, txr=12, port=50012)),
    Row("an idle flow's port is reclaimed when the port range is full",
        stun_with(mint()), XDP_REDIRECT, "STAT_FWD_NEW_FLOW", setup=_setup_reclaim,
        expect=to_txr, check=_check_reclaim),
    Row("an idle flow is gone: a new Binding Request reopens it and frees the old port",
        stun_with(mint()), XDP_REDIRECT, "STAT_FWD_NEW_FLOW", setup=_setup_idle,
        expect=to_txr, check=_check_idle_reopened),
    # --- known flows ---
    Row("known flow: DTLS is forwarded whatever the payload",
        lambda ctx: to_relay(DTLS), XDP_REDIRECT, "STAT_FWD_TO_TRANSCEIVER",
        setup=_setup_known, expect=to_txr),
    Row("known flow: a later STUN request (no token check) is forwarded",
        lambda ctx: to_relay(stun.ice_binding_request("not-a-token:x")), XDP_REDIRECT,
        "STAT_FWD_TO_TRANSCEIVER", setup=_setup_known, expect=to_txr),
    Row("known flow: UDP checksum 0 (none) stays 0",
        _no_udp_csum, XDP_REDIRECT, "STAT_FWD_TO_TRANSCEIVER", setup=_setup_known,
        expect=_expect_no_udp_csum),
    Row("known flow: Ethernet padding after a short datagram is kept",
        _known_padded, XDP_REDIRECT, "STAT_FWD_TO_TRANSCEIVER", setup=_setup_known,
        expect=_expect_padded, raw=True),
    Row("known idle flow: treated as absent, non-STUN is dropped",
        lambda ctx: to_relay(DTLS), XDP_DROP, "STAT_DROP_NOT_STUN", setup=_setup_idle),
    # --- private side ---
    Row("transceiver reply goes to the client from VIP:3478",
        _private_reply, XDP_REDIRECT, "STAT_FWD_TO_CLIENT", setup=_setup_known,
        ingress="vpriv", expect=to_client),
    Row("several private addresses: new flows spread over them, each sent from its own",
        stun_with(mint()), XDP_REDIRECT, "STAT_FWD_NEW_FLOW", setup=_setup_many_private,
        expect=to_txr, check=_check_spread),
    Row("reply to a flow on an extra private address goes to its client",
        _reply_to_extra, XDP_REDIRECT, "STAT_FWD_TO_CLIENT", setup=_setup_flow_on_extra,
        ingress="vpriv", expect=to_client),
    Row("reply to the flow's port on another private address has no reverse entry",
        _reply_to_other_private, XDP_DROP, "STAT_DROP_NO_REVERSE",
        setup=_setup_flow_on_extra, ingress="vpriv"),
    Row("UDP to a private address the relay is not configured with passes",
        lambda ctx: from_transceiver(SRTP, PORT_MIN, dst=EXTRA_PRIVATE[1]), XDP_PASS,
        "STAT_PASS_NOT_RELAY", setup=with_config(extra_private_addresses=[str(EXTRA_PRIVATE[0])]),
        ingress="vpriv"),
    Row("reply to an unallocated relay port is dropped",
        lambda ctx: from_transceiver(SRTP, 40999 if ctx.values["relay_port"] != 40999
                                     else 40998),
        XDP_DROP, "STAT_DROP_NO_REVERSE", setup=_setup_known, ingress="vpriv"),
    Row("reply from another transceiver address is spoofed",
        lambda ctx: _private_reply(ctx, src="10.77.0.22"), XDP_DROP,
        "STAT_DROP_SPOOFED_SOURCE", setup=_setup_known, ingress="vpriv"),
    Row("reply from another port of the right transceiver is spoofed",
        lambda ctx: _private_reply(ctx, sport=50008), XDP_DROP, "STAT_DROP_SPOOFED_SOURCE",
        setup=_setup_known, ingress="vpriv"),
    # --- ingress interface: each side only from its own interface ---
    Row("transceiver-shaped reply arriving on the public interface is dropped",
        _private_reply, XDP_DROP, "STAT_DROP_INGRESS_NOT_PRIVATE",
        setup=_then_snapshot(_setup_known), ingress="vpub", check=_unchanged),
    Row("reply to an unallocated port arriving on the public interface is dropped",
        lambda ctx: from_transceiver(SRTP, PORT_MIN), XDP_DROP,
        "STAT_DROP_INGRESS_NOT_PRIVATE", setup=_then_snapshot(), ingress="vpub",
        check=_unchanged),
    Row("valid Binding Request arriving on the private interface is dropped",
        stun_with(mint()), XDP_DROP, "STAT_DROP_INGRESS_NOT_PUBLIC",
        setup=_then_snapshot(), ingress="vpriv", check=_unchanged),
    Row("known client's media arriving on the private interface is dropped",
        lambda ctx: to_relay(DTLS), XDP_DROP, "STAT_DROP_INGRESS_NOT_PUBLIC",
        setup=_then_snapshot(_setup_known), ingress="vpriv", check=_unchanged),
    # --- client sources that no client can have ---
    Row("valid token from a source in the relay's private subnet is dropped",
        _stun_from("10.77.0.21"), XDP_DROP, "STAT_DROP_BLOCKED_SOURCE",
        setup=_then_snapshot(), check=_unchanged),
    Row("valid token from the private subnet's far end (10.77.0.255) is dropped",
        _stun_from("10.77.0.255"), XDP_DROP, "STAT_DROP_BLOCKED_SOURCE",
        setup=_then_snapshot(), check=_unchanged),
    Row("valid token from the relay's own VIP is dropped",
        _stun_from(VIP), XDP_DROP, "STAT_DROP_BLOCKED_SOURCE",
        setup=_then_snapshot(), check=_unchanged),
    Row("valid token from loopback (default list) is dropped",
        _stun_from("127.0.0.1"), XDP_DROP, "STAT_DROP_BLOCKED_SOURCE",
        setup=_then_snapshot(), check=_unchanged),
    Row("valid token from a multicast source (default list) is dropped",
        _stun_from("239.1.2.3"), XDP_DROP, "STAT_DROP_BLOCKED_SOURCE",
        setup=_then_snapshot(), check=_unchanged),
    Row("valid token from an operator-listed prefix is dropped",
        _stun_from("172.20.1.2"), XDP_DROP, "STAT_DROP_BLOCKED_SOURCE",
        setup=_then_snapshot(blocked_source_prefixes=["172.16.0.0/12"]), check=_unchanged),
    Row("junk from a blocked source is dropped as blocked, before any parsing",
        lambda ctx: to_relay(DTLS, src="10.77.0.50"), XDP_DROP, "STAT_DROP_BLOCKED_SOURCE",
        setup=_then_snapshot(), check=_unchanged),
    # --- no neighbour entry for the client's next hop ---
    Row("first reply to an on-link client with no neighbour entry: to the MAC it came from",
        _private_reply, XDP_REDIRECT, "STAT_FWD_TO_CLIENT_LEARNT_NH",
        setup=_open_flow_from(ONLINK_NO_NEIGH), ingress="vpriv", expect=_to_learnt_hop,
        check=_check_learnt_stays_stale),
    Row("first reply to a client behind an unresolved gateway: to the MAC it came from",
        _private_reply, XDP_REDIRECT, "STAT_FWD_TO_CLIENT_LEARNT_NH",
        setup=_open_flow_from("203.0.113.200"), ingress="vpriv", expect=_to_learnt_hop,
        check=_check_learnt_stays_stale),
    Row("no neighbour, and the client's route leaves by the other interface: passed up",
        _private_reply, XDP_PASS, "STAT_PASS_NO_NEIGH",
        setup=_open_flow_from("203.0.113.70"), ingress="vpriv", expect=_rewritten_for_stack),
    Row("no neighbour, and the flow was opened by a broadcast frame (nothing learnt): passed up",
        _private_reply, XDP_PASS, "STAT_PASS_NO_NEIGH",
        setup=_open_flow_from(ONLINK_NO_NEIGH, dst="ff:ff:ff:ff:ff:ff"), ingress="vpriv",
        expect=_rewritten_for_stack),
    # --- header drops ---
    Row("UDP header cut short", _truncated_udp, XDP_DROP, "STAT_DROP_TRUNCATED", raw=True),
    Row("IPv4 options", _ip_options, XDP_DROP, "STAT_DROP_IP_OPTIONS"),
    Row("first fragment", _first_fragment, XDP_DROP, "STAT_DROP_FRAGMENT"),
    Row("IP total length beyond the frame", _ip_len_too_long, XDP_DROP,
        "STAT_DROP_BAD_LENGTH"),
    Row("UDP length disagrees with IP", _udp_len_wrong, XDP_DROP, "STAT_DROP_BAD_LENGTH"),
    # --- STUN drops ---
    Row("unknown client, DTLS first: not STUN", lambda ctx: to_relay(DTLS), XDP_DROP,
        "STAT_DROP_NOT_STUN"),
    Row("payload shorter than a STUN header", lambda ctx: to_relay(b"\x00\x01\x00\x00"),
        XDP_DROP, "STAT_DROP_NOT_STUN"),
    Row("wrong magic cookie",
        lambda ctx: to_relay(stun.message([(stun.ATTR_USERNAME, username(mint()).encode())],
                                          cookie=0x2112A443)),
        XDP_DROP, "STAT_DROP_NOT_STUN"),
    Row("STUN length disagrees with UDP",
        lambda ctx: to_relay(stun.message([(stun.ATTR_USERNAME, username(mint()).encode())],
                                          length_delta=4)),
        XDP_DROP, "STAT_DROP_NOT_STUN"),
    Row("attribute runs past the message",
        lambda ctx: to_relay(struct.pack(">HHI", 1, 8, stun.MAGIC_COOKIE) + os.urandom(12)
                             + struct.pack(">HH", stun.ATTR_PRIORITY, 12) + b"\x00" * 4),
        XDP_DROP, "STAT_DROP_NOT_STUN"),
    Row("Binding success response, not a request",
        lambda ctx: to_relay(stun.message([(stun.ATTR_USERNAME, username(mint()).encode())],
                                          msg_type=0x0101)),
        XDP_DROP, "STAT_DROP_NOT_BINDING"),
    Row("Binding indication, not a request",
        lambda ctx: to_relay(stun.message([], msg_type=0x0011)), XDP_DROP,
        "STAT_DROP_NOT_BINDING"),
    Row("Binding Request without USERNAME",
        lambda ctx: to_relay(stun.message([(stun.ATTR_PRIORITY, b"\x00" * 4)] * 3)), XDP_DROP,
        "STAT_DROP_NO_USERNAME"),
    # --- token drops ---
    Row("ufrag too short", stun_with("abcd"), XDP_DROP, "STAT_DROP_TOKEN_MALFORMED"),
    Row("USERNAME without ':' after 32 chars",
        lambda ctx: to_relay(stun.ice_binding_request(mint() + "x")), XDP_DROP,
        "STAT_DROP_TOKEN_MALFORMED"),
    Row("ufrag with a non-base64 character",
        lambda ctx: to_relay(stun.ice_binding_request(username("-" + mint()[1:]))), XDP_DROP,
        "STAT_DROP_TOKEN_MALFORMED"),
    Row("token version 2", lambda ctx: to_relay(stun.ice_binding_request(username(version2_token()))),
        XDP_DROP, "STAT_DROP_TOKEN_MALFORMED"),
    Row("token key id not in the map", stun_with(mint(key_id=3)), XDP_DROP,
        "STAT_DROP_TOKEN_UNKNOWN_KEY"),
    Row("token key retired", stun_with(mint()), XDP_DROP, "STAT_DROP_TOKEN_UNKNOWN_KEY",
        setup=_setup_retired),
    Row("token MAC altered", lambda ctx: to_relay(stun.ice_binding_request(username(flip(mint(), 25)))),
        XDP_DROP, "STAT_DROP_TOKEN_BAD_MAC"),
    Row("token body altered (port)",
        lambda ctx: to_relay(stun.ice_binding_request(username(flip(mint(), 9)))), XDP_DROP,
        "STAT_DROP_TOKEN_BAD_MAC"),
    Row("token signed with another key under key id 1",
        stun_with(mint(KEY2, key_id=1)), XDP_DROP, "STAT_DROP_TOKEN_BAD_MAC"),
    Row("token expired", stun_with(mint(ttl=60, now=time.time() - 3600)), XDP_DROP,
        "STAT_DROP_TOKEN_EXPIRED"),
    # --- transceiver and limit drops ---
    Row("token names an unknown transceiver", stun_with(mint(transceiver_id=99)), XDP_DROP,
        "STAT_DROP_TRANSCEIVER_UNKNOWN"),
    Row("draining transceiver takes no new flows", stun_with(mint(transceiver_id=11)),
        XDP_DROP, "STAT_DROP_TRANSCEIVER_DRAINING"),
    Row("IPv6 transceiver, but the relay has no private IPv6 address",
        stun_with(mint(transceiver_id=13, port=50013)), XDP_DROP, "STAT_DROP_IPV6",
        setup=_setup_no_private6),
    Row("second new flow from one address within a second: rate limited",
        lambda ctx: to_relay(stun.ice_binding_request(username(mint())), sport=1001), XDP_DROP,
        "STAT_DROP_RATE_LIMITED", setup=_setup_rate),
    Row("third flow of one token: flow cap",
        lambda ctx: to_relay(stun.ice_binding_request(username(ctx.values["ufrag"])),
                             src="203.0.113.32"),
        XDP_DROP, "STAT_DROP_TOKEN_FLOW_CAP", setup=_setup_cap),
    Row("no free relay port", stun_with(mint()), XDP_DROP, "STAT_DROP_PORT_EXHAUSTED",
        setup=_setup_one_port),
    # --- next hop ---
    Row("transceiver neighbour unresolved: rewritten, passed to the stack",
        stun_with(mint(transceiver_id=9, port=50009)), XDP_PASS, "STAT_PASS_NO_NEIGH",
        expect=_no_neigh_expect),
    Row("no route to the transceiver", stun_with(mint(transceiver_id=10)), XDP_DROP,
        "STAT_DROP_FIB_FAIL"),
    # --- not for the relay ---
    Row("TCP to VIP:3478 passes", lambda ctx: Ether(dst=VPUB_MAC) / IP(dst=str(VIP))
        / TCP(dport=PUBLIC_PORT), XDP_PASS, "STAT_PASS_NOT_RELAY"),
    Row("UDP to another port of the VIP passes",
        lambda ctx: to_relay(stun.ice_binding_request(username(mint())), dport=53), XDP_PASS,
        "STAT_PASS_NOT_RELAY"),
    Row("UDP to another address passes",
        lambda ctx: to_relay(stun.ice_binding_request(username(mint())), dst="198.51.100.77"),
        XDP_PASS, "STAT_PASS_NOT_RELAY"),
    Row("UDP to the private address outside the port range passes",
        lambda ctx: from_transceiver(SRTP, PORT_MAX + 1), XDP_PASS, "STAT_PASS_NOT_RELAY",
        ingress="vpriv"),
    Row("ARP passes", lambda ctx: Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=str(VIP)),
        XDP_PASS, "STAT_PASS_NOT_RELAY"),
    Row("IPv6 UDP to port 3478 of another address passes",
        lambda ctx: Ether(dst=VPUB_MAC) / IPv6(dst="2001:db8::1") / UDP(dport=PUBLIC_PORT)
        / Raw(stun.ice_binding_request("x:y")), XDP_PASS, "STAT_PASS_NOT_RELAY"),
    Row("a later fragment (no UDP header) passes; its first fragment was dropped",
        _later_fragment, XDP_PASS, "STAT_PASS_NOT_RELAY"),
    Row("IPv4 header cut short passes (its destination is unknown)", _truncated_ip, XDP_PASS,
        "STAT_PASS_NOT_RELAY", raw=True),
    Row("unconfigured relay passes everything", stun_with(mint()), XDP_PASS,
        "STAT_PASS_UNCONFIGURED", setup=_unconfigure),
    *ROWS6,
]


# --- repeat-N runs -------------------------------------------------------------

# Rows whose first packet changes the state its repetitions would see (it
# creates a flow, so every later copy is a known flow).
_NOT_STEADY = {"STAT_FWD_NEW_FLOW", "STAT_FWD_NEW_FLOW6", "STAT_PASS_NO_NEIGH",
               "STAT_DROP_FIB_FAIL"}


def steady_rows(rows: list[Row] | None = None) -> list[Row]:
    """Rows that give the same verdict however often they are repeated."""
    return [r for r in (rows or ROWS) if r.stat not in _NOT_STEADY]


def repeat_row(lab: ProgTestRelay, row: Row, repeat: int) -> int:
    """Set the row up, run its packet ``repeat`` times, check that every copy
    got the row's verdict, and return the kernel's mean ns per packet.

    One BPF_PROG_TEST_RUN per copy: with the kernel's own repeat the program
    would see its rewritten output from the second run on, and live frames
    reuse pages that hold an earlier rewrite (see prog_test_run). The test
    checks only the verdicts: tests make no timing claims (bench/progcost.py
    does, on its own cases)."""
    lab.reset()
    ctx = Context(lab)
    if row.setup is not None:
        row.setup(ctx)
    pkt = row.packet(ctx)
    data = pkt if row.raw else bytes(pkt)
    before = lab.maps.stat(row.stat)
    total_ns = 0
    for _ in range(repeat):
        total_ns += lab.run_raw(data, row.ingress).duration_ns
    moved = lab.maps.stat(row.stat) - before
    if moved != repeat:
        raise AssertionError(f"{row.name}: {moved} of {repeat} copies counted {row.stat}")
    return total_ns // repeat
