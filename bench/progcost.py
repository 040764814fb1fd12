# SPDX-License-Identifier: Apache-2.0
"""The relay program's own cost per packet, from BPF_PROG_TEST_RUN.

    python -m bench.progcost [--runs N] [--json]

Runs the packet table's lab (lab/relaylab.py: a private namespace with the
relay loaded) on its packets (lab/packets.py), and times each hot case as N
single runs of a fresh copy of the packet (the kernel does not restore a
rewritten packet between its own repeats, so a repeat-N run would take
another path from the second copy on). Each single run's duration includes
the kernel's timer read around it; the "floor" case (a one-instruction XDP
program, same harness) measures that overhead, and ``net`` subtracts it.
Medians, because the machine is shared. Needs root.

Cases: a known flow both ways with a cached next hop (the media path), the
same with a cold next hop (bpf_fib_lookup on every packet), and a new flow
(STUN Binding Request with a valid token: SipHash, port allocation, inserts).
These repeat one RTP packet, which the media telemetry counts as a duplicate
(no clock read); ``--telemetry`` measures the telemetry's own cost on
sequenced RTP, against a build without it.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import struct
import sys
import time
from typing import Any

from lab import bpftest, stun
from lab import packets as T
from lab.relaylab import PRIVATE, PUBLIC_PORT, VIP, ProgTestRelay, lab_relay_config

STEADY = "known flow, both sides alternating, cached next hop, hot (kernel repeat)"
CASES = (
    "known flow, public side, cached next hop",
    "known flow, private side (reply), cached next hop",
    "known flow, public side, cold next hop (fib_lookup)",
    "new flow (STUN + token)",
    "floor: empty XDP program",
)


def _set_cycle(lab: Any, relay_port: int) -> bytes:
    """Make a known flow whose rewrite feeds itself, and return its first packet.

    The client is VIP:3478 and the transceiver is the relay's own private
    address with port == relay port, so a client packet VIP:3478 -> VIP:3478
    is rewritten to PRIVATE:rp -> PRIVATE:rp, which the private side takes as
    the transceiver's reply and rewrites back to VIP:3478 -> VIP:3478. With
    next hops cached in both entries, the kernel's own repeat then runs the
    two hot paths alternately on one buffer: the program and its maps stay
    in cache as under real load, and no per-run timer or syscall is counted.
    The kernel's repeat keeps the ingress interface, so both sides are
    configured to be taken from vpub.
    """
    lab.configure(lab_relay_config(), private_if="vpub")
    cfg = lab.maps.read_config()
    gen = cfg.nh_generation
    now = time.monotonic_ns()
    vip = struct.unpack("=I", socket.inet_aton(str(VIP)))[0]
    priv = struct.unpack("=I", socket.inet_aton(str(PRIVATE)))[0]
    be_rp = struct.unpack("=H", struct.pack(">H", relay_port))[0]
    be_pub = struct.unpack("=H", struct.pack(">H", PUBLIC_PORT))[0]

    def nh(h: Any) -> None:
        h.ifindex = lab.ifindex["vpriv"]
        for i in range(6):
            h.smac[i], h.dmac[i] = 2, 4
        h.generation = gen

    flows = lab.bpf["flows"]
    k = flows.Key()
    k.addr.addr[0], k.port, k.family = vip, be_pub, 2
    f = flows.Leaf()
    f.txr_addr.addr[0], f.txr_port, f.relay_port = priv, be_rp, be_rp
    f.relay_addr.addr[0] = priv
    f.transceiver_id, f.created_ns, f.last_seen_ns = 7, now, now
    nh(f.nh)
    flows[k] = f
    rev = lab.bpf["reverse"]
    rk = rev.Key()
    rk.addr.addr[0], rk.relay_port = priv, be_rp
    r = rev.Leaf()
    r.client.addr.addr[0], r.client.port, r.client.family = vip, be_pub, 2
    r.txr_addr.addr[0], r.txr_port, r.transceiver_id, r.last_seen_ns = priv, be_rp, 7, now
    nh(r.nh)
    rev[rk] = r
    media = bytes.fromhex("8078") + bytes(198)
    return bytes(T.to_relay(media, src=VIP, sport=PUBLIC_PORT))


def steady(repeat: int = 200_000, rounds: int = 7, check: bool = True) -> float:
    """Median over ``rounds`` of the kernel's mean ns per packet (see _set_cycle)."""
    with ProgTestRelay() as lab:
        pkt = _set_cycle(lab, 40500)
        res = []
        for _ in range(rounds):
            before = lab.maps.stats()
            r = lab.run_raw(pkt, "vpub", repeat=repeat)
            after = lab.maps.stats()
            moved = {n: after[n] - before[n] for n in after if after[n] != before[n]}
            want = {"STAT_RX_TOTAL": repeat, "STAT_FWD_TO_TRANSCEIVER": (repeat + 1) // 2,
                    "STAT_FWD_TO_CLIENT": repeat // 2}
            if check and moved != want:
                raise RuntimeError(f"steady cycle broke: counters moved {moved}")
            res.append(r.duration_ns)
    return float(statistics.median(res))


def _noop_fd() -> tuple[Any, int]:
    from bcc import BPF  # optional and slow to import: only a measuring run needs it

    b = BPF(text=b"int xdp_noop(struct xdp_md *ctx) { return XDP_PASS; }")
    return b, b.load_func(b"xdp_noop", BPF.XDP).fd


def measure(runs: int = 3000) -> dict[str, dict[str, float]]:
    """Median and p10 ns per case (``net`` = median minus the floor's median)."""
    samples: dict[str, list[int]] = {}
    # The relay's default map sizes (consts.h), as deployed: an LRU update's
    # cost depends on them.
    with ProgTestRelay(limits={"MAX_FLOWS": 131072}) as lab:
        ctx = T.Context(lab)
        relay_port = T.open_flow(ctx)
        media = bytes.fromhex("8078") + bytes(198)  # ~an Opus RTP packet
        pub = bytes(T.to_relay(media))
        priv = bytes(T.from_transceiver(media, relay_port))

        def timed(data: bytes, ingress: str, want: set[int]) -> int:
            r = lab.run_raw(data, ingress)
            if r.retval not in want:
                raise RuntimeError(f"unexpected XDP action {r.retval}; stats {lab.maps.stats()}")
            return r.duration_ns

        fwd = {bpftest.XDP_REDIRECT, bpftest.XDP_TX}
        for _ in range(50):  # warm up: caches, next hops
            timed(pub, "vpub", fwd)
            timed(priv, "vpriv", fwd)
        samples[CASES[0]] = [timed(pub, "vpub", fwd) for _ in range(runs)]
        samples[CASES[1]] = [timed(priv, "vpriv", fwd) for _ in range(runs)]
        cold = []
        for _ in range(runs):
            lab.maps.bump_nh_generation()
            cold.append(timed(pub, "vpub", fwd))
        samples[CASES[2]] = cold
        # New flows: one fresh client port each, in batches of 100 that leave
        # the lab's 1,000-port relay range 90% free, so that the 8 hashed
        # probes practically never all collide (PORT_EXHAUSTED).
        frames = [bytes(T.to_relay(stun.ice_binding_request(T.username(T.mint())), sport=2000 + i))
                  for i in range(100)]
        new: list[int] = []
        while len(new) < runs:
            lab.maps.clear_flow_state()
            new += [timed(f, "vpub", fwd) for f in frames]
        samples[CASES[3]] = new
        noop, fd = _noop_fd()
        try:
            samples[CASES[4]] = [bpftest.prog_test_run(fd, pub, 1).duration_ns
                                 for _ in range(runs)]
        finally:
            noop.cleanup()
    floor = statistics.median(samples[CASES[4]])
    out = {STEADY: {"median": steady(), "p10": 0.0, "net": 0.0}}
    for name, xs in samples.items():
        med = statistics.median(xs)
        p10 = statistics.quantiles(xs, n=10)[0]
        out[name] = {"median": med, "p10": p10, "net": max(med - floor, 0.0)}
    return out


TELEMETRY_CASES = (
    "known flow, public side, sequenced RTP",
    "known flow, private side (reply), sequenced RTP",
)


def _rtp(seq: int) -> bytes:
    """An Opus RTP packet of ~200 bytes: header in clear, as SRTP sends it."""
    return struct.pack(">BBHII", 0x80, 111, seq & 0xFFFF, 960 * seq, 0x1234ABCD) + bytes(188)


TELEMETRY_OFF = "without telemetry"


def telemetry_builds(samples: tuple[int, ...]) -> dict[str, dict[str, int]]:
    """relay.c builds to compare: without the telemetry, and with it at each
    MEDIA_JITTER_SAMPLE (jitter's clock read on one packet in that many)."""
    builds = {TELEMETRY_OFF: {"MAX_FLOWS": 131072, "NO_MEDIA_TELEMETRY": 1}}
    for n in samples:
        builds[f"jitter on 1 packet in {n}"] = {"MAX_FLOWS": 131072, "MEDIA_JITTER_SAMPLE": n}
    return builds


def telemetry_cost(runs: int = 2000, rounds: int = 5,
                   samples: tuple[int, ...] = (1, 4, 8)) -> dict[str, Any]:
    """The media telemetry's cost per packet (bpf/media.h), side by side.

    Builds of relay.c without the telemetry and with it (at each jitter
    sampling) are loaded together in one lab namespace, each with its own
    maps and one flow, and take turns packet by packet, so that background
    load hits them alike. Each round times ``runs`` single runs per build and
    side of RTP whose sequence number and timestamp advance per packet (every
    packet takes the in-order path, as a call's do; a repeated buffer would
    take the cheaper duplicate path). Returns, per build and case, the median
    ns and the median over rounds of that round's difference against the
    build without telemetry, with its range."""
    from orchestrator import bpfprog
    from orchestrator.bccmaps import RelayMaps

    builds = telemetry_builds(samples)
    fwd = {bpftest.XDP_REDIRECT, bpftest.XDP_TX}
    ns: dict[str, dict[str, list[float]]] = {}
    with ProgTestRelay(limits=builds[TELEMETRY_OFF]) as lab:
        loaded: dict[str, tuple[Any, int, RelayMaps]] = {}
        own = (lab.bpf, lab.fd, lab.maps)
        try:
            for build, limits in builds.items():
                if build == TELEMETRY_OFF:
                    loaded[build] = own
                    continue
                bpf = bpfprog.compile_relay(limits)
                loaded[build] = (bpf, bpfprog.load_relay_fn(bpf).fd, RelayMaps(bpf))
            frames: dict[str, tuple[list[bytes], list[bytes]]] = {}
            for build, (bpf, fd, maps) in loaded.items():
                lab.bpf, lab.fd, lab.maps = bpf, fd, maps  # the lab's setup, on this build
                lab.reset()
                relay_port = T.open_flow(T.Context(lab))
                # Headers from scapy once, RTP patched in per packet (the
                # relay never checks the UDP checksum, it updates it), so
                # that the flow is not idle by the time the runs start.
                count = rounds * runs * (len(builds) - 1) + 50
                size = len(_rtp(0))
                pub_hdr = bytes(T.to_relay(_rtp(0)))[:-size]
                priv_hdr = bytes(T.from_transceiver(_rtp(0), relay_port))[:-size]
                frames[build] = ([pub_hdr + _rtp(n) for n in range(count)],
                                 [priv_hdr + _rtp(n) for n in range(count)])
            pub_if, priv_if = lab.ifindex["vpub"], lab.ifindex["vpriv"]

            def run(build: str, n: int) -> tuple[int, int]:
                fd = loaded[build][1]
                pub, priv = frames[build]
                a = bpftest.prog_test_run(fd, pub[n], 1, ingress_ifindex=pub_if)
                b = bpftest.prog_test_run(fd, priv[n], 1, ingress_ifindex=priv_if)
                if a.retval not in fwd or b.retval not in fwd:
                    moved = {k: v for k, v in loaded[build][2].stats().items() if v}
                    raise RuntimeError(f"{build}: unexpected XDP actions {a.retval}, {b.retval}; "
                                       f"counters {moved}")
                return a.duration_ns, b.duration_ns

            for n in range(50):  # warm up: caches, next hops
                for build in builds:
                    run(build, n)
            # Two builds at a time, packet by packet: the build without
            # telemetry and one with it. (All of them in turn would make each
            # run follow a different program, whose cache footprint then
            # decides the difference more than the telemetry does.)
            n = 50
            for _ in range(rounds):
                for build in builds:
                    if build == TELEMETRY_OFF:
                        continue
                    pair: dict[str, tuple[list[int], list[int]]] = {
                        TELEMETRY_OFF: ([], []), build: ([], [])}
                    for i in range(runs):
                        for b in ((TELEMETRY_OFF, build) if i % 2 else (build, TELEMETRY_OFF)):
                            up_ns, down_ns = run(b, n)
                            pair[b][0].append(up_ns)
                            pair[b][1].append(down_ns)
                        n += 1
                    for b in (TELEMETRY_OFF, build):
                        for case, values in zip(TELEMETRY_CASES, pair[b], strict=True):
                            key = b if b != TELEMETRY_OFF else f"{TELEMETRY_OFF} vs {build}"
                            ns.setdefault(key, {}).setdefault(case, []).append(
                                float(statistics.median(values)))
            for build, (_, _, maps) in loaded.items():
                flow = maps.flow(T.CLIENT, T.CLIENT_PORT)
                counted = 0 if flow is None or flow.rtp is None else flow.rtp.packets
                if counted != (0 if build == TELEMETRY_OFF else rounds * runs + 50):  # its own
                    raise RuntimeError(f"{build}: the telemetry counted {counted} packets")
        finally:
            lab.bpf, lab.fd, lab.maps = own
            for build, (bpf, _, _) in loaded.items():
                if build != TELEMETRY_OFF:
                    bpf.cleanup()
    out: dict[str, Any] = {}
    for build in builds:
        if build == TELEMETRY_OFF:
            continue
        out[build] = {}
        for c in TELEMETRY_CASES:
            base = ns[f"{TELEMETRY_OFF} vs {build}"][c]
            diffs = [x - y for x, y in zip(ns[build][c], base, strict=True)]
            out[build][c] = {"median_ns": statistics.median(ns[build][c]),
                             "without_ns": statistics.median(base),
                             "added_ns": statistics.median(diffs),
                             "added_range_ns": [min(diffs), max(diffs)], "rounds": rounds}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--steady-only", action="store_true",
                    help="only the hot steady state, counters unchecked (for experiments)")
    ap.add_argument("--telemetry", action="store_true",
                    help="only the media telemetry's cost: relay.c with it against without "
                         "(NO_MEDIA_TELEMETRY), in alternating rounds")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of --telemetry")
    args = ap.parse_args(argv)
    if args.telemetry:
        cost = telemetry_cost(args.runs, args.rounds)
        if args.json:
            print(json.dumps(cost, indent=1))
            return 0
        for build, cases in cost.items():
            for name, r in cases.items():
                print(f"{build:26s} {name:48s} {r['median_ns']:5.0f} ns against "
                      f"{r['without_ns']:5.0f} ns: "
                      f"{r['added_ns']:+4.0f} ns (rounds {r['added_range_ns'][0]:+.0f}.."
                      f"{r['added_range_ns'][1]:+.0f}, {r['rounds']})")
        return 0
    if args.steady_only:
        print(f"{STEADY}: {steady(check=False):.0f} ns per packet")
        return 0
    res = measure(args.runs)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        for name, r in res.items():
            if name == STEADY:
                print(f"{name}: {r['median']:.0f} ns per packet")
                continue
            print(f"{name:55s} median {r['median']:6.0f} ns  p10 {r['p10']:6.0f} ns  "
                  f"net {r['net']:6.0f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
