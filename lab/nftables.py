# SPDX-License-Identifier: Apache-2.0
"""nftables in a lab namespace: a caller whose network drops every UDP packet.

The ICE-TCP demo and test (``voxrelay demo --transport tcp``,
tests/netns/test_ice_tcp.py) put this table in the client namespace, and only
there: the browser's UDP candidates (host, and the relay's 3478) then fail,
and ICE falls back to the answer's ``tcp 443 tcptype passive`` candidate.
The table counts what it dropped, so a run can show that UDP was tried.
``drop_ipv4_tcp_to`` adds the IPv6 case (``--transport tcp --ipv6``): the
relay's IPv4 TCP VIP is dropped too, so ICE-TCP can only use the IPv6 one.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable, Iterator

NO_UDP_TABLE = "vxlab_noudp"
NO_V4_TCP_TABLE = "vxlab_no4tcp"
NO_V4_TCP = """
table inet %(table)s {
  chain output {
    type filter hook output priority 0; policy accept;
    ip daddr %(address)s tcp dport %(port)d counter drop;
  }
}
"""
NO_UDP = """
table inet %(table)s {
  chain output { type filter hook output priority 0; policy accept; meta l4proto udp counter drop; }
  chain input { type filter hook input priority 0; policy accept; meta l4proto udp counter drop; }
}
"""


RTP_LOSS_TABLE = "vxlab_rtploss"
RTP_LOSS = """
table inet %(table)s {
  chain output {
    type filter hook output priority 0; policy accept;
    udp dport %(port)d @th,64,2 2 @th,73,7 != 64-95 numgen inc mod %(every)d 0 counter drop
  }
}
"""
"""Every n-th RTP packet (RFC 7983: first byte 128..191; not RTCP, PT 64..95
masked) that ``netns`` sends to UDP ``port``: loss at a known rate, with the
drops counted, and nothing else touched (STUN, DTLS, RTCP)."""


class NftError(RuntimeError):
    """nft refused a script or a listing (its stderr is the message)."""


def nft(netns: str, script: str | None = None, *args: str) -> str:
    """Run ``nft -f -`` with ``script`` (or ``nft -j ARGS``) in ``netns``; its stdout."""
    from orchestrator.netlink import popen_in_netns

    argv = ["nft", "-f", "-"] if script is not None else ["nft", "-j", *args]
    try:
        proc = popen_in_netns(netns, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise NftError("nft is not installed (apt: nftables; scripts/setup.sh installs it)") \
            from None
    out, err = proc.communicate(script, timeout=30)
    if proc.returncode != 0:
        raise NftError(f"nft {' '.join(args) or '-f'} in {netns}: {err.strip()}")
    return str(out)


def dropped_packets(netns: str, table: str = NO_UDP_TABLE) -> int:
    """Packets the counters of ``table``'s rules saw (the drop rules of ``drop_udp``)."""
    doc = json.loads(nft(netns, None, "list", "table", "inet", table))
    total = 0
    for item in doc["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                total += int(expr["counter"]["packets"])
    return total


@contextlib.contextmanager
def drop_udp(netns: str, table: str = NO_UDP_TABLE) -> Iterator[Callable[[], int]]:
    """Drop every UDP packet in and out of ``netns`` while inside; yields a
    function that returns how many were dropped so far. The table is deleted
    on exit, error or not."""
    nft(netns, NO_UDP % {"table": table})
    try:
        yield lambda: dropped_packets(netns, table)
    finally:
        with contextlib.suppress(NftError, FileNotFoundError):
            nft(netns, f"delete table inet {table}\n")


@contextlib.contextmanager
def drop_ipv4_tcp_to(netns: str, address: str, port: int,
                     table: str = NO_V4_TCP_TABLE) -> Iterator[Callable[[], int]]:
    """Drop every TCP connection ``netns`` opens to ``address:port`` (IPv4) while
    inside; yields the count of packets dropped so far. Deleted on exit."""
    nft(netns, NO_V4_TCP % {"table": table, "address": address, "port": port})
    try:
        yield lambda: dropped_packets(netns, table)
    finally:
        with contextlib.suppress(NftError, FileNotFoundError):
            nft(netns, f"delete table inet {table}\n")


@contextlib.contextmanager
def drop_every_nth_rtp(netns: str, port: int, every: int,
                       table: str = RTP_LOSS_TABLE) -> Iterator[Callable[[], int]]:
    """Drop every ``every``-th RTP packet ``netns`` sends to UDP ``port`` while
    inside; yields the count of packets dropped so far. Deleted on exit."""
    if every < 2:
        raise ValueError(f"every must be 2 or more, got {every}")
    nft(netns, RTP_LOSS % {"table": table, "port": port, "every": every})
    try:
        yield lambda: dropped_packets(netns, table)
    finally:
        with contextlib.suppress(NftError, FileNotFoundError):
            nft(netns, f"delete table inet {table}\n")
