# SPDX-License-Identifier: Apache-2.0
"""Run every relay benchmark, bounded, and write BENCHMARKS.md.

    python -m bench.run [--quick | --smoke] [--runs N] [--duration S] [--only a,b]
                        [--flows 1,100,10000] [--out BENCHMARKS.md] [--results-dir D]
                        [--total S]

Before any load it checks that everything the sections and the report need is
there (``missing_dependencies``: matplotlib, scapy, bcc, gcc, coturn, ...) and
stops at once, naming what is missing, rather than after minutes of load.
The whole run is held to ``--total`` seconds (TOTAL_S): the relay phase (tool
build, lab set-up, candidates) stops starting work after ``--budget`` and is
stopped hard (SIGALRM) RELAY_GRACE_S later; each later section gets what is
left, is interrupted (SIGINT, so its lab cleans up) when it overruns, and is
skipped when too little is left. Only teardown and the report run unbounded,
so that nothing is cut half-way; they take seconds. (No timeout(1) around it:
in its own process group, it would keep Ctrl-C from reaching the bench.) ``--smoke`` runs every section with
tiny counts (tests/bpf/test_bench_smoke.py). A section that fails is named in
the report and makes the exit status 1.

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
import importlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import candidates as C
from bench import report, tools, xdp
from bench.topo import CLIENT_IP, TXR_IP, BenchTopology, in_netns, topology

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
FIG_DIR = ROOT / "docs" / "bench"   # committed copies of the figures BENCHMARKS.md shows
TOTAL_S = 575      # the whole of make bench (issue #18: < 10 min on 2 cores), leaving
                   # 25 s for start-up, teardown and the report
BUDGET_S = 360     # relay candidates stop starting new work after this; the rest is for
                   # ASR WER (~30 s), bench.voice (~115 s) and bench.bench_sync (~15 s)
RELAY_GRACE_S = 40  # ... and are stopped (SIGALRM) this long after the budget
REPORT_S = 20       # kept back for the plots and BENCHMARKS.md
KILL_GRACE_S = 20   # a section over its time gets SIGINT, then this long to clean up
MIN_SECTION_S = 10  # a section that would get less is skipped

# (module, what it is for) and (executable, Debian package): what the sections
# and the report need, checked before any load runs. `make setup` installs all.
PY_DEPENDENCIES = (
    ("matplotlib", "the plots: the [bench] extra, pip install -e '.[bench]'"),
    ("scapy", "the XDP-native load frames: the [test] extra"),
    ("whisper_normalizer", "the ASR WER's scoring: the [bench] extra"),
    ("bcc", "the XDP programs: Debian's python3-bpfcc, linked into the venv"),
)
EXE_DEPENDENCIES = (
    ("gcc", "gcc"), ("nft", "nftables"), ("ethtool", "ethtool"), ("ip", "iproute2"),
    ("nsenter", "util-linux"), ("taskset", "util-linux"), ("turnserver", "coturn"),
    ("espeak-ng", "espeak-ng"), ("redis-server", "redis-server"),
)

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


def missing_dependencies(
    python_only: bool = False,
    import_module: Callable[[str], Any] = importlib.import_module,
    which: Callable[[str], str | None] = shutil.which,
) -> list[str]:
    """One line per missing dependency, naming it and where it comes from.
    Imports for real (a module that is there but broken counts as missing), and
    loads matplotlib's Agg backend, which is what ``report.plot`` uses."""
    missing = []
    for name, why in PY_DEPENDENCIES:
        try:
            import_module(name)
            if name == "matplotlib":
                import_module("matplotlib.backends.backend_agg")
        except ImportError as exc:
            missing.append(f"Python module {name} ({why}): {exc}")
    if not python_only:
        missing += [f"program {exe} (apt-get install {pkg})"
                    for exe, pkg in EXE_DEPENDENCIES if which(exe) is None]
    return missing


class TimeUp(BaseException):
    """Raised by SIGALRM when the relay phase overruns its hard stop. A
    BaseException, so that a candidate's ``except Exception`` does not take it
    for one broken candidate and go on to the next; every ``finally`` on the
    way out (candidate stop, XDP detach, topology) still runs."""


class Deadline:
    """The one clock of a run: ``total`` seconds from its start."""

    def __init__(self, total: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.clock = total, clock
        self.start = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.total - self.elapsed()

    def section_timeout(self, cap: float) -> float | None:
        """Seconds a later section may run: its cap, cut so that its kill grace
        and the report still fit in what is left; None (skip it) below MIN_SECTION_S."""
        t = min(cap, self.left() - KILL_GRACE_S - REPORT_S)
        return t if t >= MIN_SECTION_S else None

    def relay_stop(self, budget: float) -> float:
        """Seconds from now to the relay phase's hard stop: RELAY_GRACE_S after
        its budget, and never later than what leaves the report its time."""
        return max(1.0, min(budget + RELAY_GRACE_S, self.total - REPORT_S) - self.elapsed())


@contextlib.contextmanager
def alarm(seconds: float) -> Any:
    """Raise TimeUp in the main thread after ``seconds``; cancelled on exit,
    and a timer that was armed before (pytest-timeout's) armed again with what
    it had left."""
    def fire(signum: int, frame: Any) -> None:
        raise TimeUp(f"the relay phase was stopped after {seconds:.0f} s (hard stop)")

    t0 = time.monotonic()
    old = signal.signal(signal.SIGALRM, fire)
    old_left, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if old_left:
            signal.setitimer(signal.ITIMER_REAL, max(0.001, old_left - (time.monotonic() - t0)))


@contextlib.contextmanager
def alarm_deferred() -> Any:
    """Hold SIGALRM back while cleanup runs (stopping a candidate's processes,
    detaching its XDP): an alarm in between raises right after, not half-way."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})


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
    def __init__(self, topo: BenchTopology, exe: dict[str, Path], work: Path,
                 args: argparse.Namespace, deadline: Deadline):
        self.topo, self.exe, self.work, self.args = topo, exe, work, args
        self.deadline = deadline
        self.failed: dict[str, str] = {}  # candidate -> its first failure (notes keep the last word)
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
        return self.deadline.elapsed() > self.args.budget

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
                if runs and self.over_budget():
                    break
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
            with alarm_deferred():
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
            self.failed.setdefault(cand.key, self.res["notes"][cand.key])
            log(f"  {cand.key} FAILED: {exc}")
            if self.args.verbose:
                traceback.print_exc()
        finally:
            with alarm_deferred():
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


SMOKE = {"runs": 1, "duration": 0.3, "pings": 200, "calls": 1, "flows": [1, 100],
         "prog_test_runs": 100}
"""--smoke: every section once, with counts that take seconds (tests/bpf/test_bench_smoke.py)."""
SMOKE_VOICE = ["--capacity-steps", "1", "--capacity-seconds", "1", "--turns", "1", "--turn-steps", "1"]
SMOKE_SYNC = ["--samples", "5", "--flows", "4096", "--live-flows", "1000"]
SMOKE_TCPFRONT = ["--frames", "200"]
SMOKE_ASR = ["--sentences", "2"]
# make bench's live-flows row compares 10,000 with 50,000 so that the section
# fits its cap; the million-flow row is `python -m bench.bench_sync` (minutes).
MAKE_BENCH_SYNC = ["--live-flows", "50000"]
MAKE_BENCH_VOICE = ["--capacity-steps", "1,5,10,20", "--capacity-seconds", "4",
                    "--turn-steps", "1,5,10", "--turns", "3"]


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
    ap.add_argument("--quick", action="store_true", help="1 run of 1 s, 1000 pings")
    ap.add_argument("--smoke", action="store_true",
                    help="every section once with tiny counts, in seconds: does it all still run?")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--results-dir", type=Path, default=RESULTS,
                    help="raw results, the sections' own reports and the plots (copied to "
                    "docs/bench/ only when this is the default)")
    ap.add_argument("--budget", type=float, default=BUDGET_S,
                    help="seconds after which the relay candidates start no new work")
    ap.add_argument("--total", type=float, default=TOTAL_S,
                    help="seconds the whole run may take (enforced)")
    ap.add_argument("--shared", action="store_true",
                    help="say in the report that the machine was shared")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite BENCHMARKS.md and the plots from bench/results/results.json")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    # First of all: a missing dependency ends the run here, not after minutes of load.
    missing = missing_dependencies(python_only=args.render_only)
    if missing:
        print("bench: missing dependencies (make setup installs them all):\n  "
              + "\n  ".join(missing), file=sys.stderr)
        return 2
    if args.render_only:
        saved = args.results_dir / "results.json"
        if not saved.exists():
            print(f"bench: no {saved}; run the benchmarks first", file=sys.stderr)
            return 1
        _write(json.loads(saved.read_text()), args.out, args.results_dir)
        log(f"wrote {args.out} from {saved}")
        return 0
    if os.geteuid() != 0:
        print("bench: must run as root (it builds namespaces and attaches XDP)", file=sys.stderr)
        return 1
    args.flows = [int(x) for x in args.flows.split(",") if x]
    if args.quick:
        args.runs, args.duration, args.pings, args.calls = 1, 1.0, 1000, 3
    if args.smoke:
        args.runs, args.duration, args.pings = SMOKE["runs"], SMOKE["duration"], SMOKE["pings"]
        args.calls, args.flows = SMOKE["calls"], SMOKE["flows"]
    only = set(args.only.split(",")) if args.only else None
    deadline = Deadline(args.total)
    args.budget = min(args.budget, args.total)
    res, failed = _relay_phase(args, only, deadline)

    sections: dict[str, str] = res.setdefault("sections", {})
    if only is None:
        out_dir = args.results_dir
        # The relay phase takes ~300 s of the 575; these caps (260 s) are sized
        # so that every section runs in what is left on 2 cores. So make bench
        # runs the quick forms: Whisper alone for the WER (pocketsphinx's
        # comparison takes ~100 s more: `python -m bench.asr_wer --markdown`), and
        # the voice sweeps up to 20 calls of capacity and 10 of turns under load
        # (the full sweeps: `python -m bench.voice --markdown`).
        for key, module, what, cap, extra in (
            ("asr_wer_md", "bench.asr_wer", "ASR word error rate", 60,
             ["--engines", "whisper"] + (SMOKE_ASR if args.smoke else [])),
            # The voice stack and control plane run after the relay lab is gone,
            # each in its own lab, each bounded; their sections go into BENCHMARKS.md.
            ("voice_md", "bench.voice", "call setup, transceiver capacity, voice path overhead",
             120, ["--setup-calls", str(min(args.calls, 10)), "--out", str(out_dir / "voice.md")]
             + (SMOKE_VOICE if args.smoke else MAKE_BENCH_VOICE)
             + (["--shared"] if res["env"].get("shared") else [])),
            ("sync_md", "bench.bench_sync", "announce -> routable latency, flow map capacity",
             40, ["--out", str(out_dir / "sync.md")] + (SMOKE_SYNC if args.smoke else MAKE_BENCH_SYNC)),
            ("tcpfront_md", "bench.tcpfront", "ICE-TCP front against XDP and coturn",
             40, SMOKE_TCPFRONT if args.smoke else []),
        ):
            status, res[key] = _section(module, what, deadline.section_timeout(cap), extra)
            sections[module] = status
            if status.startswith("failed"):
                failed[module] = res[key]
    _write(res, args.out, args.results_dir)
    log(f"wrote {args.out} in {deadline.elapsed():.0f} s (bound {args.total:.0f} s)")
    if failed:
        log("FAILED sections (see the report's notes): " + ", ".join(sorted(failed)))
        return 1
    return 0


def _relay_phase(args: argparse.Namespace, only: set[str] | None,
                 deadline: Deadline) -> tuple[dict[str, Any], dict[str, str]]:
    """The relay candidates on their lab, within the budget, stopped hard by
    SIGALRM RELAY_GRACE_S after it; returns the results and what failed."""
    res: dict[str, Any] = {}
    failed: dict[str, str] = {}
    load1 = float(Path("/proc/loadavg").read_text().split()[0])
    env = environment(args.shared or load1 > 0.5)
    work = C.workdir()
    bench: Bench | None = None
    try:
        # The lab is torn down by the ExitStack, outside the alarm: the one-shot
        # alarm can cut the build, the set-up and the load, never the teardown.
        with contextlib.ExitStack() as lab:
            try:
                with alarm(deadline.relay_stop(args.budget)):
                    log(f"building tools in {work}")
                    exe = tools.build(work / "bin")
                    log("building the topology (bench/topo.py)")
                    topo = lab.enter_context(topology())
                    bench = Bench(topo, exe, work, args, deadline)
                    res = bench.res
                    res["env"] = env
                    _candidates(bench, topo, work, only)
            finally:
                if bench is not None:
                    failed.update(bench.failed)
                    bench.base.detach_all()
    except TimeUp as exc:
        log(f"time is up: {exc}")
        res.setdefault("notes", {})["time bound"] = (
            f"{exc}; the candidates and rounds it had not reached are missing")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "throughput" not in res:  # stopped before the lab was up: an empty report, said so
        res = {"flows": args.flows, "runs": args.runs, "duration": args.duration,
               "payload": C.PAYLOAD, "throughput": {}, "labels": LABELS, "order": ORDER,
               "notes": res.get("notes", {}), "limits": {}}
    res["env"] = env
    ran = [k for k in ORDER if k in res.get("throughput", {}) or k in failed]
    res["sections"] = {"relay." + k: failed.get(k, "ok") for k in ran}
    res["sections"]["prog_test_run"] = ("ok" if res.get("prog_test_run") else
                                        res.get("notes", {}).get("prog_test_run", "missing"))
    if not res.get("prog_test_run") and "prog_test_run" in res.get("notes", {}):
        failed["prog_test_run"] = res["notes"]["prog_test_run"]
    return res, failed


def _candidates(bench: Bench, topo: BenchTopology, work: Path, only: set[str] | None) -> None:
    args = bench.args
    runs = int(SMOKE["prog_test_runs"]) if args.smoke else 2000
    bench.res["prog_test_run"], note = _prog_test_run(topo, runs)
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
                    bench.res["notes"][cand.key] = "time budget ran out; some runs missing"
                    continue
                bench.candidate(cand, threaded, runs=1, latency=r == args.runs - 1)
    for cand, threaded in cands:
        if cand.key in SHARED_CORE:
            continue
        if bench.over_budget():
            bench.res["notes"][cand.key] = "skipped: time budget ran out"
            continue
        bench.candidate(cand, threaded)


def _write(res: dict[str, Any], out: str, results_dir: Path = RESULTS) -> None:
    """results.json, the plots (copied to docs/bench/ for the committed report)
    and BENCHMARKS.md, whose image links point at the copies it can reach."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "results.json").write_text(json.dumps(res, indent=1))
    figs = report.plot(res, results_dir)
    fig_dir = FIG_DIR if results_dir.resolve() == RESULTS.resolve() else results_dir
    fig_dir.mkdir(parents=True, exist_ok=True)
    rel = {}
    for name, path in figs.items():
        if path.parent.resolve() != fig_dir.resolve():
            shutil.copy(path, fig_dir / path.name)
        rel[name] = os.path.relpath(fig_dir / path.name, Path(out).resolve().parent)
    Path(out).write_text(report.render(res, rel))


def _section(module: str, what: str, timeout: float | None,
             extra: list[str]) -> tuple[str, str]:
    """``python -m <module> --markdown``: a bench of its own, bounded.
    Returns its status ("ok", "failed: ...", "skipped: ...") and its markdown
    (or the sentence that stands in for it). Over time it gets SIGINT, which
    its lab handles as Ctrl-C (removes what it made), then SIGKILL."""
    if timeout is None:
        log(f"{what} ({module}): skipped, the run's time bound is near")
        return "skipped: time bound", "not measured: skipped, the run's time bound was near"
    log(f"{what} ({module}, at most {timeout:.0f} s)")
    # In a session of its own, so that a Ctrl-C on make bench reaches it once,
    # from us (_interrupt), and not a second time from the terminal: a second
    # SIGINT would cut its lab's cleanup short.
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--markdown", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _interrupt(proc)
        return ("skipped: over its time",
                f"not measured: {module} took more than {timeout:.0f} s and was stopped")
    except BaseException:
        _interrupt(proc)
        raise
    if proc.returncode != 0:
        msg = f"{module} failed: {err.strip()[-400:]}"
        return f"failed: {msg}", f"not measured: {msg}"
    return "ok", out.strip()


def _interrupt(proc: subprocess.Popen[str]) -> None:
    """One SIGINT, which a section's lab handles as Ctrl-C (it removes what it
    made), KILL_GRACE_S to finish that, then SIGKILL. A further Ctrl-C on us
    waits for this, so that it cannot cut the cleanup short either."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    finally:
        signal.signal(signal.SIGINT, previous)


def _prog_test_run(topo: BenchTopology, runs: int) -> tuple[dict[str, Any], str | None]:
    from bench import progcost

    log("BPF_PROG_TEST_RUN of the relay program (bench/progcost.py)")
    try:
        return progcost.measure(runs), None
    except Exception as exc:  # noqa: BLE001 -- reported in BENCHMARKS.md, the rest still runs
        return {}, f"not measured: {exc}"


if __name__ == "__main__":
    sys.exit(main())
