# SPDX-License-Identifier: Apache-2.0
"""Orchestrator benchmarks: announce -> routable latency, and flow map capacity.

    sudo PYTHONPATH=$PWD .venv/bin/python -m bench.bench_sync [--markdown] [--samples N]
        [--flows N] [--out bench/results/sync.md] [--json]

1. **Announce -> routable**, per directory backend. A relay is compiled with
   its maps pinned under a unique name; the orchestrator's side reopens the
   pins (``open_pinned_relay``, as ``voxrelay orchestrator run`` does) and
   runs the real ``Syncer`` with the service's default poll. A transceiver
   client announces a new id, and the clock stops when the entry is visible
   in the pinned ``transceivers`` map, read through the compiling handle
   (another fd on the same map). Backends:

   - *embedded*: the transceiver POSTs to the orchestrator's HTTP directory
     (aiohttp, loopback) backed by ``MemoryDirectory``;
   - *redis*: a private ``redis-server`` (unix socket, appendonly as in the
     tests); the transceiver writes with one client, the syncer follows the
     change stream with another.

   Client, server and syncer share one event loop in one process; a real
   deployment adds a network hop between transceiver and directory.

2. **Flow map capacity.** relay.c is compiled with ``-D MAX_FLOWS=N``
   (default 1,048,576) and the ``flows`` LRU hash is filled from user space
   with ``BPF_MAP_UPDATE_BATCH`` (distinct client addr:port keys). Reported:
   entries the map then holds (counted with ``BPF_MAP_LOOKUP_BATCH``: an LRU
   map may evict before it is nominally full), and the map's memory from
   ``/proc/self/fdinfo/<fd>`` (memlock; the kernel's own accounting).

Everything is bounded: each phase has a deadline and the whole run stays
under two minutes. Needs root and bcc. Pins and redis are removed on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import struct
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.report import percentile
from lab.redis_server import RedisServer

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "sync.md"
DEFAULT_FLOWS = 1 << 20
SMALL_LIMITS = {"MAX_FLOWS": 4096, "MAX_RATE_SOURCES": 1024, "MAX_TOKENS_TRACKED": 1024,
                "MAX_RELAY_PORTS": 4096}
PHASE_SECONDS = 35.0
FLOW_KEY = struct.Struct(">I12xHBx")  # struct flow_key: addr[0] (BE), 12 zero bytes, port BE, family


@dataclass
class BackendResult:
    backend: str
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    poll_s: float


@dataclass
class CapacityResult:
    max_flows: int
    inserted: int
    held: int
    memlock_bytes: int
    fill_seconds: float
    per_entry_bytes: float


@dataclass
class LiveFlowsResult:
    """Live flows in the relay's own maps (default limits), forwarded by the program."""

    flows: int
    private_addrs: int
    max_flows: int
    max_relay_ports: int
    memlock_bytes: int          # flows + reverse, as the kernel accounts them
    fill_seconds: float
    forwarded_in: int           # client -> transceiver, one packet per flow
    forwarded_out: int          # transceiver -> client, one packet per flow
    ns_in: float                # mean kernel ns per packet (BPF_PROG_TEST_RUN duration)
    ns_out: float


@dataclass
class SyncBench:
    env: dict[str, str] = field(default_factory=dict)
    backends: list[BackendResult] = field(default_factory=list)
    capacity: CapacityResult | None = None
    live: list[LiveFlowsResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- announce -> routable --------------------------------------------------------


async def _announce_latencies(backend: str, kernel: Any, view: Any, samples: int,
                              redis_url: str | None, poll: float) -> list[float]:
    from orchestrator.service import _serve
    from orchestrator.sync import Syncer
    from voxrelay.directory import Directory, TransceiverRecord, connect
    from voxrelay.directory.http import make_app
    from voxrelay.directory.memory import MemoryDirectory

    runner = None
    if backend == "embedded":
        store = MemoryDirectory(grace=60.0)
        secret = secrets.token_urlsafe(32)
        runner, port = await _serve(make_app(store, [secret]), "127.0.0.1:0")
        follower: Directory = store
        client = connect(f"http://127.0.0.1:{port}", secret=secret)
    else:
        assert redis_url is not None
        follower = connect(redis_url, grace=60.0, prefix=f"bench{secrets.token_hex(3)}:")
        client = connect(redis_url, grace=60.0, prefix=follower._p)  # type: ignore[attr-defined]
    table = kernel.table("transceivers")
    stop = asyncio.Event()
    syncer = Syncer(follower, view, poll=poll)
    task = asyncio.create_task(syncer.run(stop))
    latencies: list[float] = []
    deadline = time.monotonic() + PHASE_SECONDS
    try:
        while not syncer.connected:
            if time.monotonic() > deadline or task.done():
                raise RuntimeError(f"{backend}: the syncer never connected")
            await asyncio.sleep(0.01)
        for i in range(samples):
            if time.monotonic() > deadline:
                break
            txr_id = 1000 + i
            key = table.Key(txr_id)
            record = TransceiverRecord(txr_id, f"10.99.{i // 250}.{i % 250 + 1}", 3479)
            start = time.perf_counter()
            await client.announce(record)
            while table.get(key) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{backend}: transceiver {txr_id} never became routable")
                await asyncio.sleep(0.0002)
            latencies.append(time.perf_counter() - start)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
        await client.close()
        await follower.close()
        if runner is not None:
            await runner.cleanup()
        for txr_id in list(kernel.transceivers()):
            kernel.delete_transceiver(txr_id)
    return latencies


def bench_announce(samples: int, with_redis: bool, result: SyncBench) -> None:
    from lab.pinned_relay import pinned_relay

    poll = 1.0  # the service's default (orchestrator/service.py run_orchestrator)
    with pinned_relay(SMALL_LIMITS, prefix="vxbench") as relay:
        backends = ["embedded"] + (["redis"] if with_redis else [])
        for backend in backends:
            with contextlib.ExitStack() as stack:
                url = None
                if backend == "redis":
                    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="vxbench-redis-"))
                    server = RedisServer(Path(tmp), appendfsync="everysec")
                    url = stack.enter_context(server).url
                lat = asyncio.run(_announce_latencies(backend, relay.kernel, relay.view, samples,
                                                      url, poll))
            if not lat:
                result.notes.append(f"{backend}: no samples within {PHASE_SECONDS:.0f} s")
                continue
            ms = [x * 1000 for x in lat]
            result.backends.append(BackendResult(
                backend, len(ms), percentile(ms, 50), percentile(ms, 99), max(ms), poll))


# --- flow map capacity --------------------------------------------------------------


def memlock_of(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("memlock:"):
            return int(line.split()[1])
    raise RuntimeError(f"no memlock in /proc/self/fdinfo/{fd}")


def flow_keys(start: int, count: int) -> bytes:
    """``count`` distinct flow keys: client 10.0.0.0/8 address i >> 16, port i & 0xffff."""
    buf = bytearray(FLOW_KEY.size * count)
    pack = FLOW_KEY.pack_into
    for j in range(count):
        i = start + j
        pack(buf, j * FLOW_KEY.size, 0x0A000000 + (i >> 16), i & 0xFFFF, 2)
    return bytes(buf)


def bench_capacity(max_flows: int, result: SyncBench) -> None:
    from orchestrator import bpfprog

    limits = {**SMALL_LIMITS, "MAX_FLOWS": max_flows}
    bpf = bpfprog.compile_relay(limits, None)
    try:
        table = bpf["flows"]
        if FLOW_KEY.size != ctypes_size(table.Key):
            raise RuntimeError("struct flow_key changed: update FLOW_KEY in bench/bench_sync.py")
        deadline = time.monotonic() + PHASE_SECONDS
        chunk = 65536
        inserted = 0
        started = time.perf_counter()
        while inserted < max_flows and time.monotonic() < deadline:
            n = min(chunk, max_flows - inserted)
            keys = (table.Key * n).from_buffer_copy(flow_keys(inserted, n))
            values = (table.Leaf * n)()
            table.items_update_batch(keys, values)
            inserted += n
        fill_seconds = time.perf_counter() - started
        held = sum(1 for _ in table.items_lookup_batch())
        memlock = memlock_of(table.map_fd)
        result.capacity = CapacityResult(max_flows, inserted, held, memlock, fill_seconds,
                                         memlock / max_flows)
        if inserted < max_flows:
            result.notes.append(f"flow fill stopped at {inserted} entries (phase deadline)")
    finally:
        bpf.cleanup()


# --- live flows at scale ---------------------------------------------------------------

LIVE_SMALL = 10_000
LIVE_LARGE = 1_000_000
LIVE_PHASE_SECONDS = 120.0
"""Bound on each direction of one live-flows size (1M out took ~90 s here: one
BPF_PROG_TEST_RUN syscall and a packet built in Python per flow)."""


def _live_layout(n: int, addrs: int, port_min: int, ports: int) -> tuple[int, int, int, int]:
    """Flow ``n``'s client (addr, port) and relay (address index, port): clients
    100.64.0.0 + n // 60000 port 1024 + n % 60000; relay address n // ports."""
    return 0x64400000 + n // 60000, 1024 + n % 60000, n // ports, port_min + n % ports


def fill_live_flows(lab: Any, start: int, count: int, relay_addrs: list[Any],
                    port_min: int, ports: int) -> None:
    """Write ``count`` live flows (both maps, fresh last_seen, next hop to resolve)
    with BPF_MAP_UPDATE_BATCH, as if each had opened through the program."""
    from lab.relaylab import TRANSCEIVERS
    from orchestrator.bccmaps import be16_of, be32_of

    flows, reverse = lab.maps.table("flows"), lab.maps.table("reverse")
    txr_addr = be32_of(TRANSCEIVERS[7][0])
    be_addrs = [be32_of(a) for a in relay_addrs]
    now = time.monotonic_ns()
    chunk = 65536
    done = 0
    while done < count:
        n = min(chunk, count - done)
        fk, fv = (flows.Key * n)(), (flows.Leaf * n)()
        rk, rv = (reverse.Key * n)(), (reverse.Leaf * n)()
        for j in range(n):
            c_addr, c_port, a, r_port = _live_layout(start + done + j, len(be_addrs),
                                                     port_min, ports)
            k = fk[j]
            k.addr.addr[0] = int.from_bytes(c_addr.to_bytes(4, "big"), sys.byteorder)
            k.port, k.family = be16_of(c_port), 2
            v = fv[j]
            v.txr_addr.addr[0], v.txr_port = txr_addr, be16_of(50007)
            v.relay_port, v.relay_addr.addr[0] = be16_of(r_port), be_addrs[a]
            v.transceiver_id, v.created_ns, v.last_seen_ns = 7, now, now
            r = rk[j]
            r.addr.addr[0], r.relay_port = be_addrs[a], v.relay_port
            w = rv[j]
            # (bcc builds one ctypes class per map: copy the fields, not the struct)
            w.client.addr.addr[0], w.client.port, w.client.family = k.addr.addr[0], k.port, 2
            w.txr_addr.addr[0], w.txr_port, w.transceiver_id, w.last_seen_ns = (
                txr_addr, v.txr_port, 7, now)
        flows.items_update_batch(fk, fv)
        reverse.items_update_batch(rk, rv)
        done += n


def _forward_each(lab: Any, count: int, packet_of: Any, ingress: str, deadline: float,
                  ) -> tuple[int, float]:
    """One packet per flow through the program; (forwarded, mean kernel ns)."""
    from lab.bpftest import XDP_REDIRECT

    total_ns = forwarded = 0
    for n in range(count):
        if time.monotonic() > deadline:
            break
        run = lab.run_raw(packet_of(n), ingress)
        if run.retval == XDP_REDIRECT:
            forwarded += 1
            total_ns += run.duration_ns
    return forwarded, total_ns / max(forwarded, 1)


def bench_live_flows(sizes: list[int], result: SyncBench) -> None:
    """Fill the relay's maps (compiled with consts.h's default limits) with live
    flows over several private addresses, and forward one packet per flow each
    way through BPF_PROG_TEST_RUN; sizes ascending, in one compile."""
    from ipaddress import IPv4Address

    from lab.packets import from_transceiver, to_relay
    from lab.relaylab import PRIVATE, ProgTestRelay, lab_relay_config
    from orchestrator import bpfprog, genabi

    consts = (bpfprog.bpf_dir() / "consts.h").read_text()
    max_flows = genabi.parse_define(consts, "MAX_FLOWS")
    max_ports = genabi.parse_define(consts, "MAX_RELAY_PORTS")
    relay = lab_relay_config(port_min=20000, port_max=59999)  # the config's default range
    ports = relay.port_max - relay.port_min + 1
    need = -(-max(sizes) // ports)
    extras = [IPv4Address(int(PRIVATE) + 100 + i) for i in range(need - 1)]
    relay.extra_private_addresses = [str(a) for a in extras]
    addrs = [PRIVATE, *extras]
    media = bytes.fromhex("8078") + bytes(158)  # a 20 ms Opus packet's size, as SRTP
    template_in = bytearray(bytes(to_relay(media, src="100.64.0.0", sport=1024)))
    template_in[40:42] = b"\0\0"  # UDP checksum 0 (none): the patched ports need no fix-up
    template_out = {a: bytearray(bytes(from_transceiver(media, 20000, dst=a))) for a in addrs}
    for t in template_out.values():
        t[40:42] = b"\0\0"

    def packet_in(n: int) -> bytes:
        c_addr, c_port, _, _ = _live_layout(n, len(addrs), relay.port_min, ports)
        template_in[26:30] = c_addr.to_bytes(4, "big")
        template_in[34:36] = c_port.to_bytes(2, "big")
        return bytes(template_in)

    def packet_out(n: int) -> bytes:
        _, _, a, r_port = _live_layout(n, len(addrs), relay.port_min, ports)
        t = template_out[addrs[a]]
        t[36:38] = r_port.to_bytes(2, "big")
        return bytes(t)

    limits = {"MAX_FLOWS": max_flows, "MAX_RELAY_PORTS": max_ports}
    with ProgTestRelay(limits=limits) as lab:
        lab.configure(relay)
        filled = 0
        for size in sorted(sizes):
            if size > max_ports:
                result.notes.append(f"{size:,} live flows: more than MAX_RELAY_PORTS {max_ports:,}")
                continue
            started = time.perf_counter()
            fill_live_flows(lab, filled, size - filled, addrs, relay.port_min, ports)
            fill_seconds = time.perf_counter() - started
            filled = size
            fwd_in, ns_in = _forward_each(lab, size, packet_in, "vpub",
                                          time.monotonic() + LIVE_PHASE_SECONDS)
            fwd_out, ns_out = _forward_each(lab, size, packet_out, "vpriv",
                                            time.monotonic() + LIVE_PHASE_SECONDS)
            memlock = (memlock_of(lab.maps.table("flows").get_fd())
                       + memlock_of(lab.maps.table("reverse").get_fd()))
            used = len({_live_layout(n, len(addrs), relay.port_min, ports)[2]
                        for n in range(0, size, ports)} | {0})
            result.live.append(LiveFlowsResult(size, used, max_flows, max_ports, memlock,
                                               fill_seconds, fwd_in, fwd_out, ns_in, ns_out))
            if fwd_in < size or fwd_out < size:
                result.notes.append(f"{size:,} live flows: forwarded {fwd_in:,} in and "
                                    f"{fwd_out:,} out (phase deadline or a miss)")


def ctypes_size(ctype: Any) -> int:
    import ctypes

    return ctypes.sizeof(ctype)


# --- report ------------------------------------------------------------------------------


def markdown(r: SyncBench) -> str:
    lines = ["## Orchestrator: announce -> routable, flow map capacity", ""]
    lines.append(f"Host: {r.env.get('host', '?')}, kernel {r.env.get('kernel', '?')}, "
                 f"{r.env.get('cpus', '?')} CPUs. `python -m bench.bench_sync` ({r.env.get('date', '')}).")
    lines.append("")
    lines.append("**Announce -> routable** (transceiver announce call until its entry is visible in "
                 "the pinned `transceivers` map; real `Syncer` over the reopened pins, one process):")
    lines.append("")
    lines.append("| backend | samples | p50 ms | p99 ms | max ms |")
    lines.append("|---|---:|---:|---:|---:|")
    for b in r.backends:
        lines.append(f"| {b.backend} | {b.samples} | {b.p50_ms:.2f} | {b.p99_ms:.2f} | {b.max_ms:.2f} |")
    lines.append("")
    lines.append("An announce is a change hint to the follower (an in-process queue for the "
                 "embedded directory, a Redis stream read for Redis), so the lag is the directory "
                 "round trip plus one map write and its read-back; the poll "
                 f"({r.backends[0].poll_s if r.backends else 1.0:.0f} s) bounds only the periodic "
                 "reconcile, not this path.")
    lines.append("")
    c = r.capacity
    if c is not None:
        lines.append("**Flow map capacity** (relay.c with `-D MAX_FLOWS`, `flows` LRU hash filled "
                     "with `BPF_MAP_UPDATE_BATCH`):")
        lines.append("")
        lines.append("| MAX_FLOWS | inserted | held | memory (memlock) | per entry | fill time |")
        lines.append("|---:|---:|---:|---:|---:|---:|")
        lines.append(f"| {c.max_flows:,} | {c.inserted:,} | {c.held:,} | "
                     f"{c.memlock_bytes / 2**20:.1f} MiB | {c.per_entry_bytes:.0f} B | "
                     f"{c.fill_seconds:.1f} s |")
        lines.append("")
        lines.append(
            "Every live flow also holds a relay-side (private address, port) in `reverse`, "
            "whose `struct reverse_key` carries the address: one address gives at most one "
            "port range of live flows, so a relay for 1M live flows has "
            "`extra_private_addresses` (up to 31 besides `private_address`).")
    if r.live:
        lines.append("")
        lines.append("**Live flows at scale** (relay.c with consts.h's default limits, the "
                     "config's default port range 20000-59999 over several private addresses; "
                     "every flow written live into `flows` and `reverse`, then one packet per "
                     "flow each way through `BPF_PROG_TEST_RUN`, mean kernel time per packet):")
        lines.append("")
        lines.append("| live flows | private addresses | MAX_FLOWS / MAX_RELAY_PORTS | memory "
                     "(flows + reverse) | forwarded in / out | ns/packet in | ns/packet out |")
        lines.append("|---:|---:|---:|---:|---:|---:|---:|")
        for v in r.live:
            lines.append(f"| {v.flows:,} | {v.private_addrs} | {v.max_flows:,} / "
                         f"{v.max_relay_ports:,} | {v.memlock_bytes / 2**20:.0f} MiB | "
                         f"{v.forwarded_in:,} / {v.forwarded_out:,} | {v.ns_in:.0f} | "
                         f"{v.ns_out:.0f} |")
        if len(r.live) >= 2:
            small, large = r.live[0], r.live[-1]
            lines.append("")
            lines.append(f"At {large.flows:,} against {small.flows:,} live flows a packet costs "
                         f"{large.ns_in / max(small.ns_in, 1):.2f}x in and "
                         f"{large.ns_out / max(small.ns_out, 1):.2f}x out (same run, same "
                         "program): the maps no longer fit the CPU caches. The memory is the "
                         "maps' own, preallocated at load whatever the number of flows. Each "
                         "packet is its own BPF_PROG_TEST_RUN (repeat 1, so that every packet "
                         "is another flow), whose kernel duration includes the test run's own "
                         "frame setup: the absolute ns are above a live NIC's (bench/progcost.py "
                         "has those), the ratio is the point.")
    for note in r.notes:
        lines.append("")
        lines.append(f"Note: {note}")
    return "\n".join(lines) + "\n"


def environment() -> dict[str, str]:
    return {"host": platform.node(), "kernel": platform.release(),
            "cpus": str(os.cpu_count()), "date": time.strftime("%Y-%m-%d")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_sync", description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=200, help="announces per backend")
    parser.add_argument("--flows", type=int, default=DEFAULT_FLOWS, help="MAX_FLOWS to compile and fill")
    parser.add_argument("--live-flows", type=int, default=LIVE_LARGE,
                        help=f"live flows to fill and forward, against {LIVE_SMALL:,} "
                             "(0: skip; at most MAX_RELAY_PORTS)")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis backend")
    parser.add_argument("--markdown", action="store_true", help="print the markdown section")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to save the markdown")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_sync needs root (BPF maps): run it with sudo", file=sys.stderr)
        return 2
    if not 1 <= args.samples <= 10_000 or not 1 <= args.flows <= 1 << 24:
        print("--samples must be 1..10000 and --flows 1..16777216", file=sys.stderr)
        return 2
    result = SyncBench(env=environment())
    bench_announce(args.samples, not args.no_redis, result)
    bench_capacity(args.flows, result)
    if args.live_flows:
        bench_live_flows(sorted({min(LIVE_SMALL, args.live_flows), args.live_flows}), result)
    text = markdown(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    elif args.markdown:
        print(text, end="")
    else:
        for b in result.backends:
            print(f"{b.backend}: announce -> routable p50 {b.p50_ms:.2f} ms, p99 {b.p99_ms:.2f} ms "
                  f"({b.samples} samples)")
        if result.capacity:
            c = result.capacity
            print(f"flows: {c.held:,} of {c.max_flows:,} held, {c.memlock_bytes / 2**20:.1f} MiB")
        for v in result.live:
            print(f"live flows {v.flows:,} on {v.private_addrs} addresses: {v.ns_in:.0f} ns in, "
                  f"{v.ns_out:.0f} ns out per packet, {v.memlock_bytes / 2**20:.0f} MiB")
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
