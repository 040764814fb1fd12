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
class SyncBench:
    env: dict[str, str] = field(default_factory=dict)
    backends: list[BackendResult] = field(default_factory=list)
    capacity: CapacityResult | None = None
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
            "The default `MAX_FLOWS` (bpf/consts.h) is 131,072, because every flow also holds a "
            "relay-side port of its one private address (`config.private_addr`) in `reverse`, "
            "which is keyed by the port alone: one relay holds at most `port_max - port_min + 1` "
            "(< 65,536) live flows. The flows map itself holds a million entries, as measured "
            "above, but 1M *live* flows on one relay need more than the override: several private "
            "addresses in `config`, `struct reverse_key` carrying the address (a layout change in "
            "bpf/structs.h, relay.c's port allocation and orchestrator/maps.py), 16 or more "
            "private addresses (1,048,576 / 65,536) and `MAX_RELAY_PORTS` raised to match. "
            "Until then the way to 1M flows is 16+ relays (hosts or namespaces), each with its "
            "own maps, behind one anycast/ECMP public address."
        )
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
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
