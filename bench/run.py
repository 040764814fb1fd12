# SPDX-License-Identifier: Apache-2.0
"""Run every relay benchmark, bounded, and write BENCHMARKS.md.

    python -m bench.run [--quick] [--runs N] [--duration S] [--only a,b]
                        [--flows 1,100,10000] [--out BENCHMARKS.md]

Needs root (namespaces, XDP). Builds its C tools with gcc into a temp dir,
builds a private veth lab (bench/topo.py), then takes the candidates in turn:
generator-only, ceiling (no-op XDP redirect), the voxrelay XDP relay (and
again with threaded NAPI), plain forwarding, nftables NAT, the Python
userspace relay, coturn. Every step is bounded in time and count, and the lab
(namespaces, veths, XDP programs, processes) is removed on exit, also on error.
Progress goes to stderr; raw results to bench/results/results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import candidates as C
from bench import report, tools, xdp
from bench.topo import CLIENT_IP, TXR_IP, BenchTopology, in_netns, topology

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
FIG_DIR = ROOT / "docs" / "bench"   # committed copies of the figures BENCHMARKS.md shows
TOTAL_S = 590      # the whole of make bench (issue: < 10 min on 2 cores)
BUDGET_S = 360     # relay candidates stop starting new work after this; the rest is for
                   # ASR WER (~30 s), bench.voice (~115 s) and bench.bench_sync (~15 s)

LABELS = {
    "gen_only": "generator only (XDP_DROP at relay)",
    "ceiling": "ceiling: no-op XDP redirect",
    "voxrelay": "voxrelay XDP relay",
    "voxrelay_threaded": "voxrelay XDP relay, threaded NAPI",
    "ceiling_threaded": "ceiling, threaded NAPI",
    "direct": "plain ip_forward (no NAT)",
    "nftables": "nftables DNAT+SNAT",
    "userspace": "Python asyncio relay (own core)",
    "coturn": "coturn (own core, 1 relay thread)",
}
ORDER = list(LABELS)
SHARED_CORE = ("gen_only", "ceiling", "ceiling_threaded", "voxrelay", "voxrelay_threaded",
               "direct", "nftables")
"""Kernel candidates: they run on the generator's core, measured in interleaved rounds."""

LIMITS = {
    "gen_only": "one core running udpgen's raw-socket sendmmsg path plus veth xmit and an "
    "XDP_DROP; every other row on the shared core is this plus the candidate's work.",
    "ceiling": "the generator's core: it also runs the redirect and the transceiver veth's "
    "NAPI (sink XDP). Nothing an XDP relay does can beat this row on this topology.",
    "ceiling_threaded": "NAPI kthreads can run on the second core, so the generator and the "
    "forwarding overlap; the machine's other tenants share that core.",
    "voxrelay": "shared core as for the ceiling, plus the relay's parsing, flow lookup, "
    "rewrite and checksum updates (see the PROG_TEST_RUN numbers for the program alone).",
    "voxrelay_threaded": "as the ceiling with threaded NAPI: the relay moves to a NAPI kthread "
    "that the scheduler may put on the second core, which the machine's other tenants share; "
    "when that kthread is preempted the veth's ring (a few hundred frames) overflows, which is "
    "the loss in its row, not the program.",
    "direct": "the full IPv4 forwarding path (routing, netfilter hooks with no rules, "
    "neighbour output, qdisc) in softirq on the generator's core.",
    "nftables": "forwarding plus conntrack lookup/creation and NAT on the generator's core.",
    "userspace": "its own core: one Python interpreter doing recvfrom/send per packet (two "
    "syscalls and an event-loop callback per batch); beyond that the socket buffer overflows "
    "and the rest is loss.",
    "coturn": "its own core: coturn's libevent loop with one relay thread, recvmsg/sendmsg per "
    "packet plus TURN channel lookup. Under the XDP-native load (2+ Mpps offered) its core is "
    "overwhelmed and its delivered rate can collapse (receive livelock): compare the userspace "
    "relays on the udpgen table.",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def environment(shared: bool) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = Path("/proc/loadavg").read_text().split()[:3]
    relay_src = "orchestrator.bpfprog not importable"
    try:
        from orchestrator.bpfprog import bpf_dir

        d = bpf_dir()
        rev = subprocess.run(["git", "-C", str(d), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, check=False).stdout.strip()
        relay_src = f"{d / 'relay.c'} (git {rev or 'unknown'})"
    except Exception as exc:  # noqa: BLE001 -- informational only
        relay_src = f"unknown ({exc})"
    return {
        "relay_source": relay_src,
        "kernel": platform.release(),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg": " ".join(load),
        "shared": shared,
        "shared_note": (
            "The machine was SHARED during this run: other work ran on the same 2 cores "
            "(load average above, or --shared), so absolute numbers are noisy; read the "
            "paired costs and the ratios." if shared
            else "The machine was otherwise idle."
        ),
    }


class Bench:
    def __init__(self, topo: BenchTopology, exe: dict[str, Path], work: Path, args: argparse.Namespace):
        self.topo, self.exe, self.work, self.args = topo, exe, work, args
        self.t_start = time.monotonic()
        self.res: dict[str, Any] = {
            "flows": args.flows, "runs": args.runs, "duration": args.duration,
            "payload": C.PAYLOAD, "throughput": {}, "user_cpu": {}, "latency": {},
            "prog_test_run": {}, "in_situ": {}, "throughput_xdp": {},
            "labels": LABELS, "order": ORDER, "notes": {},
            "limits": {},
        }
        # The sink on the transceiver's veth (counts load) and a pass program on
        # the client's veth: both make their veth a valid XDP_REDIRECT target.
        self.sink = xdp.load_sink()
        self.base = xdp.Attached()
        self.base.attach(self.sink, "xdp_sink", topo.ns_txr, topo.t0)
        self.base.attach(self.sink, "xdp_pass", topo.ns_client, topo.c0)
        # The XDP-native generator (bench/xdp/gen.c): frames out of c0 that never were skbs.
        self.gen_prog = xdp.load_gen(topo.ifindex[topo.c0])

    def over_budget(self) -> bool:
        return time.monotonic() - self.t_start > self.args.budget

    # -- one throughput run --------------------------------------------------
    def gen(self, cand: C.Candidate, flows: int, counter: Any) -> dict[str, float]:
        payload = cand.load_payload()
        extra: list[str] = []
        if payload is not None:
            f = self.work / f"load-{cand.key}.bin"
            f.write_bytes(payload)
            extra = ["--payload-file", str(f)]
        before = xdp.sink_total(counter)
        cpu0 = cand.cpu_seconds()
        out = subprocess.run(
            self.topo.cmd(self.topo.ns_client, [
                str(self.exe["udpgen"]), "--src", CLIENT_IP, "--dst", cand.dst[0],
                "--dport", str(cand.dst[1]), "--sport-base", str(C.SPORT_BASE),
                "--flows", str(flows), "--duration", str(self.args.duration), *extra,
            ], cpu=0),
            capture_output=True, text=True, timeout=self.args.duration + 30, check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"udpgen failed: {out.stderr.strip()}")
        g = tools.parse_gen_output(out.stdout)
        time.sleep(0.2)  # let queued packets drain into the counter
        got = xdp.sink_total(counter) - before
        row = {"sent": g.sent / g.elapsed, "delivered": got / g.elapsed, "packets": got}
        cpu1 = cand.cpu_seconds()
        if cpu0 is not None and cpu1 is not None and got > 0:
            row["proc_us_per_pkt"] = (cpu1 - cpu0) * 1e6 / got
        return row

    def frame_for(self, cand: C.Candidate) -> bytes:
        from scapy.layers.inet import IP, UDP
        from scapy.layers.l2 import Ether

        topo = self.topo
        payload = cand.load_payload() or C.rtp_payload()
        return bytes(Ether(src=topo.mac[topo.c0], dst=topo.mac[topo.r_pub])
                     / IP(src=CLIENT_IP, dst=cand.dst[0], flags="DF")
                     / UDP(sport=C.SPORT_BASE, dport=cand.dst[1]) / payload)

    def gen_xdp(self, cand: C.Candidate, flows: int, counter: Any) -> dict[str, float]:
        """One run of the XDP-native generator. The relay's public veth needs
        NAPI to take XDP frames: an XDP program gives it one, GRO (switched on
        for the run only, so that udpgen's runs keep their path) otherwise."""
        topo = self.topo
        frame = self.frame_for(cand)
        topo.run(topo.ns_relay, ["ethtool", "-K", topo.r_pub, "gro", "on"])
        try:
            before = xdp.sink_total(counter)
            with in_netns(topo.ns_client):
                sent, elapsed = xdp.xdp_generate(self.gen_prog, frame, flows, C.SPORT_BASE,
                                                 self.args.duration)
            time.sleep(0.2)
            got = xdp.sink_total(counter) - before
        finally:
            topo.run(topo.ns_relay, ["ethtool", "-K", topo.r_pub, "gro", "off"])
        return {"sent": sent / elapsed, "delivered": got / elapsed, "packets": got}

    def throughput(self, cand: C.Candidate, counter: Any, runs_now: int) -> None:
        """``runs_now`` runs per flow count, appended to the candidate's earlier
        rounds (shared-core candidates come back once per round)."""
        res = self.res["throughput"].setdefault(cand.key, {})
        for flows in self.args.flows:
            runs = res.get(str(flows), [])
            for r in range(runs_now):
                if self.over_budget():
                    self.res["notes"][cand.key] = "time budget ran out; some runs missing"
                    break
                runs.append(self.gen(cand, flows, counter))
                log(f"  {cand.key:18s} flows={flows:<6d} run {len(runs)}: "
                    f"{runs[-1]['delivered'] / 1e3:8.1f} kpps delivered of "
                    f"{runs[-1]['sent'] / 1e3:8.1f} sent")
            res[str(flows)] = runs
            if not self.args.no_xdp_gen:
                xres = self.res["throughput_xdp"].setdefault(cand.key, {})
                xruns = xres.setdefault(str(flows), [])
                for _ in range(runs_now):
                    xruns.append(self.gen_xdp(cand, flows, counter))
                    log(f"  {cand.key:18s} flows={flows:<6d} XDP-frame load: "
                        f"{xruns[-1]['delivered'] / 1e3:8.1f} kpps delivered of "
                        f"{xruns[-1]['sent'] / 1e3:8.1f} sent")
            per = [x["proc_us_per_pkt"] for x in runs if "proc_us_per_pkt" in x]
            if per and flows == max(self.args.flows):
                self.res["user_cpu"][cand.key] = per

    # -- latency ---------------------------------------------------------------
    def latency(self, cand: C.Candidate) -> None:
        topo = self.topo
        echo = subprocess.Popen(
            topo.cmd(topo.ns_txr, [str(self.exe["udpecho"]), TXR_IP, str(xdp.ECHO_PORT), "120"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(0.2)
            extra = cand.ping_args()
            dst = cand.ping_dst()
            runs = []
            for _ in range(self.args.runs):
                out = subprocess.run(
                    topo.cmd(topo.ns_client, [
                        str(self.exe["udpping"]), "--src", CLIENT_IP, "--dst", dst[0],
                        "--dport", str(dst[1]), "--sport", str(C.PING_SPORT),
                        "--count", str(self.args.pings), "--size", str(C.PAYLOAD), *extra,
                    ]),
                    capture_output=True, text=True, timeout=120, check=False,
                )
                rtts = [int(x) / 1000 for x in out.stdout.split()]
                ok = [x for x in rtts if x >= 0]
                if len(ok) < len(rtts) / 2 or not ok:
                    raise RuntimeError(f"ping-pong lost {len(rtts) - len(ok)} of {len(rtts)}: "
                                       f"{out.stderr.strip()[-300:]}")
                runs.append({"p50": report.percentile(ok, 50), "p99": report.percentile(ok, 99),
                             "p99.9": report.percentile(ok, 99.9), "lost": len(rtts) - len(ok)})
                log(f"  {cand.key:18s} ping p50 {runs[-1]['p50']:.1f} µs p99 "
                    f"{runs[-1]['p99']:.1f} µs p99.9 {runs[-1]['p99.9']:.1f} µs")
            self.res["latency"][cand.key] = runs
        finally:
            echo.terminate()
            echo.wait(timeout=10)

    # -- the XDP program's own cost under load (BPF_ENABLE_STATS) ---------------
    def in_situ(self, cand: Any) -> None:
        """One more load run with the kernel's per-program run time accounting
        on: the relay's own ns per packet in place (hot caches, real frames).
        Separate from the timed runs, because the accounting reads the clock
        twice per packet."""
        out = {}
        for flows in sorted({min(self.args.flows), max(self.args.flows)}):
            ns = cand.in_situ_cost(lambda f=flows: self.gen(cand, f, self.sink))
            if ns is not None:
                out[f"known flow, public side, {flows:,} flows"] = ns
        self.res["in_situ"][cand.key] = out
        log(f"  {cand.key:18s} in-situ program cost: "
            + ", ".join(f"{k} {v:.0f} ns" for k, v in out.items()))

    # -- one candidate ---------------------------------------------------------
    def candidate(self, cand: C.Candidate, threaded: bool = False, *, runs: int | None = None,
                  latency: bool = True) -> None:
        log(f"{cand.key}: {LABELS[cand.key]}")
        self.res["limits"][cand.key] = LIMITS[cand.key]
        try:
            cand.start()
            if threaded:
                # A veth has NAPI (and so a "threaded" knob) only while XDP is
                # attached to it: the ceiling has it on the public side only.
                done = []
                for ifname in (self.topo.r_pub, self.topo.r_priv):
                    with contextlib.suppress(OSError):
                        if self.topo.set_threaded_napi(ifname, True):
                            done.append(ifname)
                if not done:
                    raise RuntimeError("could not set threaded NAPI on the relay's veths")
            counter = cand.sink if isinstance(cand, C.GeneratorOnly) else self.sink
            cand.prime(max(self.args.flows), self.exe["udpgen"])
            self.throughput(cand, counter, self.args.runs if runs is None else runs)
            if latency and hasattr(cand, "in_situ_cost") and not self.over_budget():
                self.in_situ(cand)
            if latency and cand.supports_ping and not self.over_budget():
                self.latency(cand)
        except Exception as exc:  # noqa: BLE001 -- one broken candidate must not lose the others
            self.res["notes"][cand.key] = f"failed: {exc}".replace("\n", " ")[:600]
            log(f"  {cand.key} FAILED: {exc}")
            if self.args.verbose:
                traceback.print_exc()
        finally:
            if threaded:
                for ifname in (self.topo.r_pub, self.topo.r_priv):
                    with contextlib.suppress(OSError):
                        self.topo.set_threaded_napi(ifname, False)
            cand.stop()


def make_candidates(topo: BenchTopology, work: Path, only: set[str] | None) -> list[tuple[C.Candidate, bool]]:
    from bench import voxrelay_candidate as V

    mk: list[tuple[C.Candidate, bool]] = [
        (C.GeneratorOnly("gen_only", LABELS["gen_only"], topo, work), False),
        (C.Ceiling("ceiling", LABELS["ceiling"], topo, work), False),
        (C.Ceiling("ceiling_threaded", LABELS["ceiling_threaded"], topo, work), True),
        (V.VoxRelay("voxrelay", LABELS["voxrelay"], topo, work), False),
        (V.VoxRelay("voxrelay_threaded", LABELS["voxrelay_threaded"], topo, work), True),
        (C.Direct("direct", LABELS["direct"], topo, work), False),
        (C.Nftables("nftables", LABELS["nftables"], topo, work), False),
        (C.UserspacePython("userspace", LABELS["userspace"], topo, work, user_cpu=1), False),
        (C.Coturn("coturn", LABELS["coturn"], topo, work, user_cpu=1), False),
    ]
    return [(c, t) for c, t in mk if only is None or c.key in only]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="voxrelay relay benchmarks")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=1.5, help="seconds per throughput run")
    ap.add_argument("--flows", default="1,100,10000")
    ap.add_argument("--pings", type=int, default=5000)
    ap.add_argument("--only", default="", help="comma-separated candidate keys")
    ap.add_argument("--no-xdp-gen", action="store_true",
                    help="skip the XDP-native (live frames) load runs")
    ap.add_argument("--calls", type=int, default=20,
                    help="calls per path for bench.voice's call-setup figure (skipped with --only)")
    ap.add_argument("--quick", action="store_true", help="1 run of 1 s, 1000 pings: a smoke test")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--budget", type=float, default=BUDGET_S)
    ap.add_argument("--shared", action="store_true",
                    help="say in the report that the machine was shared")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite BENCHMARKS.md and the plots from bench/results/results.json")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.render_only:
        saved = RESULTS / "results.json"
        if not saved.exists():
            print(f"bench: no {saved}; run the benchmarks first", file=sys.stderr)
            return 1
        _write(json.loads(saved.read_text()), args.out)
        log(f"wrote {args.out} from {saved}")
        return 0
    args.flows = [int(x) for x in args.flows.split(",") if x]
    if args.quick:
        args.runs, args.duration, args.pings, args.calls = 1, 1.0, 1000, 3
    if os.geteuid() != 0:
        print("bench: must run as root (it builds namespaces and attaches XDP)", file=sys.stderr)
        return 1
    only = set(args.only.split(",")) if args.only else None

    t_start = time.monotonic()
    work = C.workdir()
    log(f"building tools in {work}")
    exe = tools.build(work / "bin")
    log("building the topology (bench/topo.py)")
    try:
        with topology() as topo:
            bench = Bench(topo, exe, work, args)
            try:
                load1 = float(Path("/proc/loadavg").read_text().split()[0])
                bench.res["env"] = environment(args.shared or load1 > 0.5)
                bench.res["prog_test_run"], note = _prog_test_run(topo)
                if note:
                    bench.res["notes"]["prog_test_run"] = note
                cands = make_candidates(topo, work, only)
                # Shared-core candidates take turns round by round, so that each
                # round's runs (and the generator-only baseline they are paired
                # with) see the same background load of a shared machine.
                # The threaded-NAPI rows come after the others, in rounds of their
                # own: switching threaded NAPI on and off on the relay's veths
                # slowed the XDP relay's later rounds by 10-40% in a first run.
                for group in (False, True):
                    shared = [(c, t) for c, t in cands if c.key in SHARED_CORE and t == group]
                    for r in range(args.runs if shared else 0):
                        log(f"round {r + 1} of {args.runs} (shared-core candidates"
                            f"{', threaded NAPI' if group else ''})")
                        for cand, threaded in shared:
                            if bench.over_budget():
                                bench.res["notes"][cand.key] = ("time budget ran out; some runs "
                                                                "missing")
                                continue
                            bench.candidate(cand, threaded, runs=1, latency=r == args.runs - 1)
                for cand, threaded in cands:
                    if cand.key in SHARED_CORE:
                        continue
                    if bench.over_budget():
                        bench.res["notes"][cand.key] = "skipped: time budget ran out"
                        continue
                    bench.candidate(cand, threaded)
            finally:
                bench.base.detach_all()
            res = bench.res
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if only is None:
        res["asr_wer_md"] = _section("bench.asr_wer", "ASR word error rate",
                                     _left(t_start, 120), [])
        # The voice stack and control plane run after the relay lab is gone,
        # each in its own lab, each bounded; their sections go into BENCHMARKS.md.
        res["voice_md"] = _section("bench.voice", "call setup, transceiver capacity, "
                                   "voice path overhead", _left(t_start, 200),
                                   ["--setup-calls", str(args.calls)]
                                   + (["--shared"] if res["env"].get("shared") else []))
        res["sync_md"] = _section("bench.bench_sync", "announce -> routable latency, "
                                  "flow map capacity", _left(t_start, 60), [])
        res["tcpfront_md"] = _section("bench.tcpfront", "ICE-TCP front against XDP and coturn",
                                      _left(t_start, 120), [])
    _write(res, args.out)
    log(f"wrote {args.out} in {time.monotonic() - t_start:.0f} s")
    return 0


def _write(res: dict[str, Any], out: str) -> None:
    """results.json, the plots (copied to docs/bench/) and BENCHMARKS.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps(res, indent=1))
    figs = report.plot(res, RESULTS)
    FIG_DIR.mkdir(parents=True, exist_ok=True)
    rel = {}
    for name, path in figs.items():
        shutil.copy(path, FIG_DIR / path.name)
        rel[name] = os.path.relpath(FIG_DIR / path.name, Path(out).resolve().parent)
    Path(out).write_text(report.render(res, rel))


def _left(t_start: float, cap: float) -> float:
    """Seconds a later step may take: its cap, cut to what is left of TOTAL_S (at least 10)."""
    return max(10.0, min(cap, TOTAL_S - (time.monotonic() - t_start)))


def _section(module: str, what: str, timeout: float, extra: list[str]) -> str:
    """``python -m <module> --markdown``: a bench of its own, bounded; its markdown section."""
    log(f"{what} ({module})")
    try:
        out = subprocess.run(
            [sys.executable, "-m", module, "--markdown", *extra],
            capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
    except subprocess.TimeoutExpired:
        return f"not measured: {module} took more than {timeout:.0f} s"
    if out.returncode != 0:
        return f"not measured: {module} failed: {out.stderr.strip()[-400:]}"
    return out.stdout.strip()


def _prog_test_run(topo: BenchTopology) -> tuple[dict[str, Any], str | None]:
    from bench import progcost

    log("BPF_PROG_TEST_RUN of the relay program (bench/progcost.py)")
    try:
        return progcost.measure(2000), None
    except Exception as exc:  # noqa: BLE001 -- reported in BENCHMARKS.md, the rest still runs
        return {}, f"not measured: {exc}"


if __name__ == "__main__":
    sys.exit(main())
