# SPDX-License-Identifier: Apache-2.0
"""Random and mutated packets through the relay: >= 10,000, one loaded program.

Hypothesis draws batches of packet specs: valid Binding Requests with tokens
(some with mutated tokens or other keys), media from clients that may or may
not have a flow, transceiver replies to live or dead relay ports from right or
wrong sources, and random frames; then flips, truncates or extends bytes.
For every packet the oracle, computed in Python from the maps *before* the
run and from voxrelay/token.py, decides whether the packet may be forwarded:

  - public side, only arriving on the public interface: the client 5-tuple
    had a flow, or its source is in no blocked prefix and its USERNAME
    carries a token that token.verify() accepts for an active transceiver;
  - private side, only arriving on the private interface: the relay port had
    a reverse entry and the source is that entry's transceiver addr:port.

Clients are IPv4 or IPv6 (dual stack: each to its family's VIP, to IPv4
and IPv6 transceivers alike, so a forwarded packet may change family and
length by 20 bytes).

Checked: a packet the oracle refuses is never sent on (XDP_TX, XDP_REDIRECT,
or XDP_PASS with rewritten bytes) and a passed packet that may not be
forwarded is untouched; the program never aborts; after each batch the
per-verdict counters add up to STAT_RX_TOTAL.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

pytestmark = pytest.mark.root

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab import stun
from lab.bpftest import XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX
from lab.packets import from_transceiver, to_relay, to_relay6
from lab.relaylab import (
    KEY1,
    KEY2,
    PORT_MAX,
    PORT_MIN,
    PRIVATE,
    PRIVATE6,
    PUBLIC_PORT,
    TRANSCEIVERS,
    VIP,
    VIP6,
    ProgTestRelay,
    lab_relay_config,
)
from orchestrator.bccmaps import AF_INET6, IPNetwork, TransceiverStatus, set_relay_addr
from voxrelay import token

BATCH = 25
EXAMPLES = 420
TARGET_PACKETS = 10_000
KEYS = {1: KEY1, 2: KEY2}
ACTIVE_TXRS = {tid for tid, (_, _, status) in TRANSCEIVERS.items()
               if status == TransceiverStatus.ACTIVE}
VIP_BYTES = VIP.packed
PRIVATE_BYTES = PRIVATE.packed
VIP6_BYTES = VIP6.packed
PRIVATE6_BYTES = PRIVATE6.packed


@pytest.fixture(scope="module")
def lab() -> Iterator[ProgTestRelay]:
    with ProgTestRelay() as relay_lab:
        # limits on, so that their drops mix in; flows never go idle here
        relay_lab.reset(lab_relay_config(new_flows_per_sec=20, max_flows_per_token=4))
        yield relay_lab


@dataclass
class Spec:
    kind: str
    client: int
    cport: int
    txr: int
    key_id: int
    signer: int
    expired: bool
    reply_pick: int
    reply_src_ok: bool
    payload: bytes
    mutations: list[tuple[int, int]]
    cut: int | None
    extra: bytes
    wrong_ingress: bool
    """Arrives on the other interface than its side's (public: vpub, replies: vpriv)."""
    v6: bool
    """An IPv6 client (to VIP6); replies take the family of their transceiver."""

    @property
    def ingress(self) -> str:
        home, away = ("vpriv", "vpub") if self.kind == "reply" else ("vpub", "vpriv")
        return away if self.wrong_ingress else home


specs = st.builds(
    Spec,
    kind=st.sampled_from(["stun", "stun", "media", "reply", "reply", "random", "stunish"]),
    client=st.integers(0, 15),
    cport=st.integers(0, 7),
    txr=st.sampled_from(sorted(TRANSCEIVERS) + [99]),
    key_id=st.sampled_from([1, 2, 3]),
    signer=st.sampled_from([1, 1, 1, 2]),
    expired=st.sampled_from([False] * 9 + [True]),
    reply_pick=st.integers(0, 1000),
    reply_src_ok=st.sampled_from([True, True, True, False]),
    payload=st.binary(min_size=0, max_size=64),
    mutations=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)), max_size=3)
    | st.just([]),
    cut=st.none() | st.integers(14, 120),  # PROG_TEST_RUN needs an Ethernet header
    extra=st.sampled_from([b"", b"", b"", b"\x00" * 8]) | st.binary(max_size=16),
    wrong_ingress=st.sampled_from([False, False, False, True]),
    v6=st.sampled_from([False, False, True]),
)


def build(spec: Spec, lab: ProgTestRelay) -> bytes:
    # IPv6 clients each in a /64 of their own: the rate window is per /64
    client = (f"2001:db8:7:{10 + spec.client:x}::1" if spec.v6
              else f"203.0.113.{10 + spec.client}")
    cport = 40000 + spec.cport

    def from_client(payload: bytes) -> bytes:
        if spec.v6:
            return bytes(to_relay6(payload, src=client, sport=cport))
        return bytes(to_relay(payload, src=client, sport=cport))
    if spec.kind in ("stun", "stunish"):
        ufrag = token.mint(KEYS.get(spec.signer, KEY1), key_id=spec.key_id,
                           transceiver_id=spec.txr, port=50000 + spec.txr,
                           ttl=60, now=time.time() - (3600 if spec.expired else 0))
        if spec.kind == "stun":
            payload = stun.ice_binding_request(f"{ufrag}:{spec.payload.hex()[:8]}")
        else:  # STUN-shaped with random attributes around the USERNAME
            payload = stun.message([(0x0024, spec.payload[:8]),
                                    (stun.ATTR_USERNAME, f"{ufrag}:x".encode()),
                                    (0x8028, spec.payload[8:12])])
        frame = from_client(payload)
    elif spec.kind == "media":
        frame = from_client(spec.payload)
    elif spec.kind == "reply":
        entries = lab.maps.reverse_entries()
        if entries and spec.reply_pick < 800:
            rev = entries[spec.reply_pick % len(entries)]
            port, src, sport = rev.relay_port, rev.transceiver_addr, rev.transceiver_port
        else:
            port, src, sport = PORT_MIN + spec.reply_pick % (PORT_MAX - PORT_MIN + 2), \
                TRANSCEIVERS[7][0], 50007
        if not spec.reply_src_ok:
            src = IPv6Address("fd00:77::66") if src.version == 6 else IPv4Address("10.77.0.66")
        frame = bytes(from_transceiver(spec.payload, port, src=src, sport=sport))
    else:
        frame = from_client(b"")[:14] + spec.payload
    data = bytearray(frame)
    for offset, xor in spec.mutations:
        if data:
            data[offset % len(data)] ^= xor
    if spec.cut is not None:
        del data[spec.cut:]
    return bytes(data) + spec.extra


# --- the oracle --------------------------------------------------------------

def udp_of(data: bytes) -> tuple[bytes, bytes, int, int, bytes] | None:
    """(src, dst, sport, dport, payload) of a plain IPv4/UDP or IPv6/UDP frame
    (no options, no extension header), else None."""
    if len(data) >= 62 and data[12:14] == b"\x86\xdd" and data[14] >> 4 == 6 and data[20] == 17:
        sport, dport, ulen = struct.unpack_from(">HHH", data, 54)
        return data[22:38], data[38:54], sport, dport, data[62:54 + ulen]
    if len(data) < 42 or data[12:14] != b"\x08\x00" or data[14] != 0x45 or data[23] != 17:
        return None
    sport, dport, ulen = struct.unpack_from(">HHH", data, 34)
    return data[26:30], data[30:34], sport, dport, data[42:34 + ulen]


def token_allows(payload: bytes) -> bool:
    """Does this payload carry, in a STUN USERNAME, a token that verifies?"""
    if len(payload) < 20 or struct.unpack_from(">I", payload, 4)[0] != stun.MAGIC_COOKIE:
        return False
    off = 20
    while off + 4 <= len(payload):
        kind, length = struct.unpack_from(">HH", payload, off)
        if kind == stun.ATTR_USERNAME:
            value = payload[off + 4: off + 4 + length]
            ufrag = value.split(b":", 1)[0].decode("latin-1")
            try:
                tok = token.verify(ufrag, KEYS)
            except token.TokenError:
                return False
            return tok.transceiver_id in ACTIVE_TXRS
        off += 4 + length + (-length % 4)
    return False


def may_forward(lab: ProgTestRelay, data: bytes, ingress: str,
                blocked: list[IPNetwork]) -> bool:
    parsed = udp_of(data)
    if parsed is None:
        return False
    src, dst, sport, dport, payload = parsed
    if dst in (VIP_BYTES, VIP6_BYTES) and dport == PUBLIC_PORT:
        if ingress != "vpub":
            return False
        client = ip_address(src)
        if lab.maps.flow(client, sport) is not None:
            return True
        if any(client in net for net in blocked if net.version == client.version):
            return False
        return token_allows(payload)
    if dst in (PRIVATE_BYTES, PRIVATE6_BYTES) and PORT_MIN <= dport <= PORT_MAX:
        if ingress != "vpriv":
            return False
        table = lab.maps.table("reverse")
        try:
            # Keyed by the relay-side address too: the same port may hold an
            # IPv4 transceiver's flow on PRIVATE and an IPv6 one's on PRIVATE6.
            key = table.Key(relay_port=int.from_bytes(struct.pack(">H", dport), "little"))
            set_relay_addr(key.addr, ip_address(dst))
            rev = table[key]
        except KeyError:
            return False
        txr_addr = bytes(rev.txr_addr) if rev.txr_family == AF_INET6 else bytes(rev.txr_addr)[:4]
        return (txr_addr == src
                and rev.txr_port == int.from_bytes(struct.pack(">H", sport), "little"))
    return False


class Counter:
    packets = 0
    forwarded = 0
    examples = 0


def test_random_and_mutated_packets(lab: ProgTestRelay) -> None:
    counter = Counter()
    blocked = list(lab.maps.blocked_sources())
    assert blocked, "the lab writes the private subnet and the default prefixes"

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])
    @given(batch=st.lists(specs, min_size=BATCH, max_size=BATCH))
    def run_batch(batch: list[Spec]) -> None:
        counter.examples += 1
        if counter.examples % 50 == 0:  # keep the client space fresh
            lab.maps.clear_flow_state()
        for spec in batch:
            data = build(spec, lab)
            allowed = may_forward(lab, data, spec.ingress, blocked)
            res = lab.run_raw(data, spec.ingress)
            counter.packets += 1
            assert res.retval in (XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT), res.retval
            sent = res.retval in (XDP_TX, XDP_REDIRECT) or (
                res.retval == XDP_PASS and res.data_out != data)
            # only a packet that changed family changes length, by the 20
            # bytes between an IPv4 and an IPv6 header (also one dropped after
            # its translation, e.g. with no route to its transceiver)
            assert len(res.data_out) - len(data) in (0, 20, -20)
            if sent:
                counter.forwarded += 1
                assert allowed, f"forwarded a packet the oracle refuses: {data.hex()}"
            elif res.retval == XDP_PASS:
                assert res.data_out == data
        stats = lab.maps.stats()
        total = stats.pop("STAT_RX_TOTAL")
        assert sum(stats.values()) == total, stats

    run_batch()
    assert counter.packets >= TARGET_PACKETS, counter.packets
    # the mix must exercise forwarding, not only drops
    assert counter.forwarded >= TARGET_PACKETS // 20, counter.forwarded
    stats = lab.maps.stats()
    assert stats["STAT_RX_TOTAL"] >= TARGET_PACKETS
    for verdict in ("STAT_FWD_NEW_FLOW", "STAT_FWD_TO_TRANSCEIVER", "STAT_FWD_TO_CLIENT",
                    "STAT_FWD_NEW_FLOW6", "STAT_FWD_TO_TRANSCEIVER6", "STAT_FWD_TO_CLIENT6",
                    "STAT_DROP_NO_REVERSE", "STAT_DROP_SPOOFED_SOURCE",
                    "STAT_DROP_TOKEN_BAD_MAC", "STAT_DROP_NOT_STUN", "STAT_PASS_NOT_RELAY",
                    "STAT_DROP_INGRESS_NOT_PUBLIC", "STAT_DROP_INGRESS_NOT_PRIVATE"):
        assert stats[verdict] > 0, (verdict, stats)
