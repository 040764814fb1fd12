# SPDX-License-Identifier: Apache-2.0
"""Turn raw bench results into BENCHMARKS.md and PNG plots.

Pure except for ``plot`` (matplotlib). Everything is quoted as medians over
runs, and comparisons as ratios, because the machines are noisy. Each headline
ratio is the median over rounds of that round's ratio (run i against run i),
with its range (min-max) and the number of rounds, and a ratio whose range
includes 1.00 is marked "not separated": that run cannot tell the two apart.

Results layout (what bench/run.py collects)::

    {"env": {...}, "flows": [1, 100, 10000],
     "throughput": {cand: {str(flows): [{"sent": pps, "delivered": pps}, ...]}},
     "user_cpu": {cand: [cpu_us_per_packet, ...]},
     "latency": {cand: [{"p50": us, "p99": us, "p99.9": us, "lost": n}, ...]},
     "prog_test_run": {case: ns_per_packet},
     "labels": {cand: label}, "notes": {cand: text}, "limits": {cand: text}}
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Reference columns of the main table, in the order the issue asks for.
REFS = (("userspace", "vs userspace"), ("nftables", "vs nftables"), ("coturn", "vs coturn"))
CEILING = "ceiling"
GEN_ONLY = "gen_only"


def median(xs: Iterable[float]) -> float | None:
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(vals) if vals else None


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of non-empty ``samples`` (p in 0..100)."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside 0..100")
    s = sorted(samples)
    rank = max(1, math.ceil(round(p * len(s) / 100, 9)))  # round: 99.9% of 1000 is 999
    return s[rank - 1]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


NOT_SEPARATED = "not separated"


@dataclass(frozen=True)
class Spread:
    """A ratio over rounds: the median of the per-round values, their range, how many."""

    median: float
    lo: float
    hi: float
    n: int

    @property
    def separated(self) -> bool:
        """False when the range includes 1.0: some round had it one way, some the
        other (or exactly even), so the run does not tell the two apart. Judged
        on the two decimals the report prints, so that a range shown as "0.65 to
        1.00" is marked too. One round has no range to judge by; it counts as
        separated unless it is 1.00."""
        return not round(self.lo, 2) <= 1.0 <= round(self.hi, 2)


def spread(values: Iterable[float | None]) -> Spread | None:
    """Median, min and max of the values that are there (None and NaN are not)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None
    return Spread(statistics.median(vals), min(vals), max(vals), len(vals))


def round_ratios(a: Sequence[float], b: Sequence[float]) -> list[float | None]:
    """Run i of ``a`` over run i of ``b``, for the rounds both have. bench/run.py
    runs the shared-core candidates in interleaved rounds, so index i is one
    round, under the same background load; a candidate cut short by the time
    budget lacks its last rounds, so the pairs that remain still match."""
    return [ratio(x, y) for x, y in zip(a, b)]


def ratio_spread(res: dict[str, Any], cand: str, ref: str, flows: int,
                 key: str = "throughput") -> Spread | None:
    """Delivered pps of ``cand`` over ``ref``, round by round."""
    runs = res.get(key, {}).get(cand, {}).get(str(flows), [])
    base = res.get(key, {}).get(ref, {}).get(str(flows), [])
    return spread(round_ratios([r["delivered"] for r in runs], [r["delivered"] for r in base]))


def cost_ratio_spread(res: dict[str, Any], cand: str, ref: str, flows: int,
                      key: str = "throughput") -> Spread | None:
    """``ref``'s shared-core cost per packet over ``cand``'s, round by round, each
    cost paired against that round's generator-only run. A round where either
    cost is not above zero (within the noise) has no ratio and is left out."""
    def costs(c: str) -> list[float | None]:
        runs = res.get(key, {}).get(c, {}).get(str(flows), [])
        base = res.get(key, {}).get(GEN_ONLY, {}).get(str(flows), [])
        return [cost_us(r["delivered"], b["delivered"]) for r, b in zip(runs, base)]

    return spread(theirs / mine if mine and theirs and mine > 0 and theirs > 0 else None
                  for mine, theirs in zip(costs(cand), costs(ref)))


def fmt_spread(s: Spread | None, percent: bool = False) -> str:
    """``3.00x (2.50 to 3.50, 3 rounds)``, marked when the range includes 1.00x."""
    if s is None:
        return "n/a"
    def f(x: float) -> str:
        return f"{x:.0%}" if percent else f"{x:.2f}x"
    if s.n == 1:
        text = f"{f(s.median)} (1 round, no range)"
    else:
        lo, hi = (f"{s.lo:.0%}", f"{s.hi:.0%}") if percent else (f"{s.lo:.2f}", f"{s.hi:.2f}")
        text = f"{f(s.median)} ({lo} to {hi}, {s.n} rounds)"
    return text if s.separated else f"{text} **{NOT_SEPARATED}**"


def cost_us(delivered_pps: float | None, baseline_pps: float | None) -> float | None:
    """Extra CPU per packet on the shared core, in µs: how much longer each
    packet takes when the candidate forwards it than when the generator's
    packets are dropped at the first hop. Both rates are CPU-bound on one core."""
    if not delivered_pps or not baseline_pps:
        return None
    return 1e6 / delivered_pps - 1e6 / baseline_pps


def paired_cost_us(res: dict[str, Any], cand: str, flows: int,
                   key: str = "throughput") -> float | None:
    """Median over rounds of each round's cost against that round's
    generator-only run (bench/run.py interleaves the shared-core candidates,
    so run i of every candidate comes from round i). Falls back to the cost
    of the medians when the runs do not pair up."""
    runs = res.get(key, {}).get(cand, {}).get(str(flows), [])
    base = res.get(key, {}).get(GEN_ONLY, {}).get(str(flows), [])
    if runs and len(runs) == len(base):
        return median(cost_us(r["delivered"], b["delivered"]) for r, b in zip(runs, base))
    return cost_us(delivered_median(res, cand, flows, key),
                   delivered_median(res, GEN_ONLY, flows, key))


def loss(sent: float, delivered: float) -> float:
    return 0.0 if sent <= 0 else max(0.0, 1.0 - delivered / sent)


def delivered_median(res: dict[str, Any], cand: str, flows: int,
                     key: str = "throughput") -> float | None:
    runs = res.get(key, {}).get(cand, {}).get(str(flows), [])
    return median(r["delivered"] for r in runs)


def _fmt_pps(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 1000:,.0f} k"


def _fmt(x: float | None, digits: int = 2, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:.{digits}f}{unit}"


def main_table(res: dict[str, Any], flows: int, key: str = "throughput") -> list[list[str]]:
    """One row per candidate: median pps, then each headline ratio as a spread
    over rounds (``fmt_spread``), against each reference and the ceiling."""
    rows = []
    for cand in res["order"]:
        if cand in (GEN_ONLY, CEILING) or cand not in res.get(key, {}):
            continue
        row = [res["labels"][cand], _fmt_pps(delivered_median(res, cand, flows, key))]
        for ref, _ in REFS:
            row.append("—" if ref == cand else fmt_spread(ratio_spread(res, cand, ref, flows, key)))
        row.append(fmt_spread(ratio_spread(res, cand, CEILING, flows, key), percent=True))
        rows.append(row)
    return rows


SPREAD_NOTE = (
    "Each ratio is the median over rounds of that round's ratio (run i of one candidate "
    "against run i of the other, so both saw the same background load), then its range "
    "(min to max) and the number of rounds. **not separated**: the range includes 1.00x "
    "(100% for the share of the ceiling), so this run cannot tell the two apart.")


PTR_NOTE = (
    "bench/progcost.py: single runs are the median of N runs of one fresh copy each, with "
    "the harness's own overhead (an empty XDP program's run, the floor) subtracted; the "
    "program and its maps are cold-ish, since Python runs between copies. The hot steady "
    "state runs a known flow whose rewrite feeds itself (client VIP:3478, transceiver = "
    "the relay's private address) with the kernel's own repeat: public and private side "
    "alternately, caches warm, no per-run timer.")

COST_REFS = (("nftables", "nftables"), ("direct", "plain ip_forward"), ("ceiling", "ceiling"))


def cost_ratio_section(res: dict[str, Any], key: str = "throughput") -> list[str]:
    """How many times the XDP relay's shared-core cost per packet the others'
    is (above 1: the relay is cheaper), at every flow count."""
    relay = "voxrelay"
    if relay not in res.get(key, {}):
        return []
    rows = []
    for ref, label in COST_REFS:
        if ref not in res[key]:
            continue
        row = [label]
        for f in res["flows"]:
            row.append(fmt_spread(cost_ratio_spread(res, relay, ref, f, key)))
        rows.append(row)
    return [
        ("Cost ratios: the other candidate's shared-core µs per packet divided by the XDP "
        "relay's, round by round (above 1.00x the relay is cheaper). A round where either "
        "measured cost is not above zero (within the noise) has no ratio and is left out "
        "of the count; n/a when no round has one. " + SPREAD_NOTE),
        "",
        md_table(["against", *[f"{f:,} flows" for f in res["flows"]]], rows),
        "",
    ]


def xdp_load_section(res: dict[str, Any]) -> list[str]:
    """The headline: every candidate under the XDP-native generator."""
    key = "throughput_xdp"
    if not res.get(key):
        return []
    flows = res["flows"]
    big = max(flows)
    parts = [
        f"## Relay throughput, XDP-native load, as from a NIC ({big:,} flows, max offered rate)",
        "",
        ("Load from bench/xdp/gen.c run with BPF_PROG_TEST_RUN live frames on CPU 0: frames "
        "that never were skbs leave the client's veth, as a NIC's driver hands frames to XDP. "
        "An XDP candidate then never allocates an skb; the stack candidates get one built at "
        "the relay's public veth (in its NAPI, with GRO on, as a NIC driver does). Generator, "
        "candidate and sink all run on CPU 0. With udpgen (next section) every packet is "
        "already an skb and veth copies it into a fresh page before the relay's XDP sees it, "
        "a cost no NIC imposes, which is why the XDP relay's lead is narrow there."),
        "",
        md_table(["candidate", "pps", *[h for _, h in REFS], "share of ceiling"],
                 main_table(res, big, key)),
        "",
        SPREAD_NOTE,
        "",
    ]
    rows = []
    for cand in res["order"]:
        if cand not in res[key]:
            continue
        row = [res["labels"][cand]]
        for f in flows:
            runs = res[key][cand].get(str(f), [])
            d = median(r["delivered"] for r in runs)
            s = median(r["sent"] for r in runs)
            row.append(f"{_fmt_pps(d)} / {_fmt_pps(s)}")
        row.append(_fmt(paired_cost_us(res, cand, big, key), 3, " µs")
                   if cand != GEN_ONLY else "—")
        rows.append(row)
    parts += [
        ("Delivered / offered by flow count, and the CPU cost per forwarded packet on the "
        f"shared core at {big:,} flows (paired against generator-only, as below). Own-core "
        "candidates (userspace, coturn) lose what their core cannot take."),
        "",
        md_table(["candidate", *[f"{f:,} flows" for f in flows],
                  f"shared-core cost, {big:,} flows"], rows),
        "",
    ]
    parts += cost_ratio_section(res, key)
    return parts


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


HOW_TO_RUN = (
    "To run it: `make setup` (either of the README's two commands runs it) installs "
    "what the bench needs, the `[bench]` extra (matplotlib) included; then, as root, "
    "`make bench` rewrites this file, `docs/bench/*.png` and `bench/results/` in under "
    "10 minutes on 2 cores (`bench/run.py` holds itself to `--total`, 575 s: a late step "
    "is stopped, a later one skipped, and the report says so). A missing dependency stops "
    "it before any load, "
    "naming what is missing; a section that fails is named under Notes and makes the exit "
    "status 1. `python -m bench.run --smoke --results-dir DIR --out DIR/BENCHMARKS.md` "
    "runs every section once with tiny counts in about a minute (the root test tier does, "
    "`tests/bpf/test_bench_smoke.py`); `--render-only` rewrites this file from "
    "`bench/results/results.json`. Sections measured by hand (sweeps that `make bench` "
    "does not run) live in `bench/hand_runs/` and every rewrite puts them back.")


HAND_RUNS = Path(__file__).parent / "hand_runs"
"""Sections measured by hand (a sweep or a side-by-side that `make bench`
does not run): `make bench` rewrites BENCHMARKS.md, so they live here and
every render puts them back in their place."""


def hand_run(name: str) -> list[str]:
    """The lines of ``bench/hand_runs/<name>`` (a missing file is an error:
    the report would silently lose a section)."""
    path = HAND_RUNS / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: a hand-run section of BENCHMARKS.md is missing")
    return [path.read_text().strip(), ""]


def render(res: dict[str, Any], figures: dict[str, str]) -> str:
    env = res["env"]
    flows = res["flows"]
    big = max(flows)
    parts = [
        "# Benchmarks",
        "",
        ("Generated by `make bench` (`python -m bench.run`); raw numbers in "
        "`bench/results/results.json`. Every figure is the **median of "
        f"{res['runs']} runs** of {res['duration']} s (fewer where a note says the time "
        "budget ran out); each headline ratio is the median of the per-round ratios, "
        "with its range (min to max) over the rounds and their number, and is marked **not "
        "separated** where that range includes 1.00x. "
        "The shared-core candidates (generator only, ceiling, XDP relay, ip_forward, "
        "nftables) take turns in rounds, one run each per round, so that background load "
        "hits them alike; each CPU cost is the median over rounds of that round's paired "
        "difference against the generator-only run. The threaded-NAPI rows run after those "
        "rounds, in rounds of their own (toggling threaded NAPI slowed later rounds of the "
        "XDP relay in a first run), and pair with the generator-only runs by index."),
        "",
        HOW_TO_RUN,
        "",
        "## Environment",
        "",
        f"- kernel: `{env['kernel']}`; cores: {env['cores']}; CPU: {env['cpu']}",
        f"- date: {env['date']}; load average at start: {env['loadavg']}",
        f"- {env['shared_note']}",
        f"- XDP relay measured: `{env.get('relay_source', 'unknown')}`",
        ("- topology: three network namespaces (client | relay public+private | transceiver), "
        "two veth pairs, permanent neighbours (bench/topo.py). All candidates run on it in "
        "turn in one session."),
        ("- load: udpgen (bench/gen/udpgen.c, raw socket + sendmmsg, built with gcc at run "
        f"time) on CPU 0, {res['payload']}-byte UDP payloads (Opus RTP size), flows = source "
        "ports, round-robin so consecutive packets hit different flows. Receiver: an XDP "
        "program on the transceiver's veth that counts and drops (bench/xdp/sink.c)."),
        "",
        *xdp_load_section(res),
        *([f"![throughput vs flows, XDP-native load]({figures['throughput_xdp']})", ""]
          if "throughput_xdp" in figures else []),
        f"## Relay throughput under udpgen load ({big:,} flows, max offered rate)",
        "",
        ("How to read it: on 2 cores the generator and every in-kernel candidate share one "
        "core (veth runs the receiver's XDP and the forwarding in softirq on the sending CPU), "
        "so delivered pps is bound by the generator plus the candidate, and differences in "
        "pps understate differences in cost. The comparison that isolates the candidate is "
        "the CPU cost per forwarded packet further down (paired against generator-only "
        "runs), and the program's own cost (PROG_TEST_RUN, in place under load)."),
        "",
        md_table(
            ["candidate", "pps", *[h for _, h in REFS], "share of ceiling"],
            main_table(res, big),
        ),
        "",
        SPREAD_NOTE,
        "",
        "### Delivered pps and loss by flow count",
        "",
    ]
    rows = []
    for cand in res["order"]:
        if cand not in res["throughput"]:
            continue
        row = [res["labels"][cand]]
        for f in flows:
            runs = res["throughput"][cand].get(str(f), [])
            d = median(r["delivered"] for r in runs)
            s = median(r["sent"] for r in runs)
            lo = median(loss(r["sent"], r["delivered"]) for r in runs)
            row.append(f"{_fmt_pps(d)} / {_fmt_pps(s)} / {_fmt(None if lo is None else lo * 100, 1, '%')}")
        rows.append(row)
    parts += [
        "Each cell: delivered / offered (generator's own rate) / loss.",
        "",
        md_table(["candidate", *[f"{f:,} flows" for f in flows]], rows),
        "",
    ]
    if "throughput" in figures:
        parts += [f"![throughput vs flows]({figures['throughput']})", ""]

    # CPU cost
    parts += ["## CPU cost per forwarded packet", ""]
    rows = []
    for cand in res["order"]:
        if cand == GEN_ONLY or cand not in res["throughput"]:
            continue
        row = [res["labels"][cand]]
        for f in flows:
            row.append(_fmt(paired_cost_us(res, cand, f), 2, " µs"))
        row.append(_fmt(median(res.get("user_cpu", {}).get(cand, [])), 2, " µs"))
        rows.append(row)
    parts += [
        ("Kernel candidates run in softirq on the generator's core (veth delivers on the "
        "sending CPU), so the extra time per packet against the generator-only baseline "
        "(packets dropped by XDP at the relay's public interface) is what forwarding costs: "
        "`1e6/delivered - 1e6/generator_only`. Userspace relays run pinned to the other "
        "core; for them the generator's core only pays socket delivery, and the last column "
        "is their own process CPU time per forwarded packet (their core saturates at the "
        "pps in the table above)."),
        "",
        md_table(["candidate", *[f"shared core, {f:,} flows" for f in flows],
                  "own process CPU / pkt"], rows),
        "",
    ]
    parts += cost_ratio_section(res)
    ptr = res.get("prog_test_run") or {}
    parts += ["### The program alone (BPF_PROG_TEST_RUN)", ""]
    if ptr:
        rows = []
        for k, v in ptr.items():
            if isinstance(v, dict):  # bench/progcost.py: median and net of the floor
                net = "—" if k.startswith(("floor", "known flow, both")) else _fmt(v["net"], 0)
                rows.append([k, _fmt(v["median"], 0), net])
            else:
                rows.append([k, _fmt(v, 0), "n/a"])
        parts += [PTR_NOTE, "",
                  md_table(["case", "ns per packet (median)", "net of the floor"], rows), ""]
    else:
        parts += [res.get("notes", {}).get("prog_test_run", "not measured"), ""]
    for cand, cases in (res.get("in_situ") or {}).items():
        parts += [f"In place under load ({res['labels'].get(cand, cand)}, BPF_ENABLE_STATS "
                  "run-time accounting during one extra load run per flow count; it adds two clock "
                  "reads per packet to what it measures): "
                  + "; ".join(f"{k}: **{v:.0f} ns**" for k, v in cases.items()) + ".", ""]

    parts += hand_run("telemetry_cost.md")
    history = Path(__file__).parent / "perf_history.md"
    if history.is_file():
        parts += [history.read_text().strip(), ""]

    # Latency
    parts += ["## Latency (UDP ping-pong, one packet in flight, idle)", ""]
    rows = []
    lat = res.get("latency", {})
    direct = {p: median(r[p] for r in lat.get("direct", [])) for p in ("p50", "p99", "p99.9")}
    for cand in res["order"]:
        if cand not in lat:
            continue
        med = {p: median(r[p] for r in lat[cand]) for p in ("p50", "p99", "p99.9")}
        added = [_fmt(None if med[p] is None or direct[p] is None else med[p] - direct[p], 1)
                 for p in ("p50", "p99", "p99.9")]
        rows.append([res["labels"][cand], *[_fmt(med[p], 1) for p in ("p50", "p99", "p99.9")],
                     *added])
    parts += [
        ("RTT in µs through the relay and back (client → relay → transceiver echo → relay "
        "→ client); \"added\" is against the direct path (plain kernel forwarding, no NAT, "
        "on the same namespaces), so it is the cost of the relay on two hops (there and back)."),
        "",
        md_table(["candidate", "p50", "p99", "p99.9", "added p50", "added p99", "added p99.9"],
                 rows),
        "",
    ]
    if "latency" in figures:
        parts += [f"![latency percentiles]({figures['latency']})", ""]

    parts += ["## What limits each figure", ""]
    for cand in res["order"]:
        text = res.get("limits", {}).get(cand)
        if text:
            parts += [f"- **{res['labels'][cand]}**: {text}"]
    notes = {k: v for k, v in res.get("notes", {}).items() if k != "prog_test_run"}
    if notes:
        parts += ["", "## Notes and failures", ""]
        parts += [f"- **{res['labels'].get(k, k)}**: {v}" for k, v in notes.items()]
    if res.get("asr_wer_md"):
        parts += ["", "## Voice model: ASR word error rate", "",
                  "From `python bench/asr_wer.py --markdown` (run by `make bench`).", "",
                  res["asr_wer_md"]]
    for key, title, module in (("voice_md", "Voice path: call setup, capacity, overhead",
                                "bench.voice"),
                               ("sync_md", "Control plane: announce → routable, flow map",
                                "bench.bench_sync"),
                               ("tcpfront_md", "ICE-TCP front: CPU per forwarded frame",
                                "bench.tcpfront")):
        if res.get(key):
            parts += ["", f"<!-- {title}: `python -m {module} --markdown`, run by make bench -->",
                      "", res[key]]
        if key == "voice_md":
            parts += ["", *hand_run("transceiver_scale.md")]
    parts.append("")
    return "\n".join(parts)


def plot(res: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write throughput.png and latency.png; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}
    for key, title in (("throughput", "udpgen load (skbs)"),
                       ("throughput_xdp", "XDP-native load (frames, as from a NIC)")):
        if not res.get(key):
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for cand in res["order"]:
            if cand not in res[key]:
                continue
            xs, ys, below, above = [], [], [], []
            for f in res["flows"]:
                s = spread(r["delivered"] / 1000
                           for r in res[key][cand].get(str(f), []))
                if s is not None:
                    xs.append(f)
                    ys.append(s.median)
                    below.append(s.median - s.lo)
                    above.append(s.hi - s.median)
            if xs:
                ax.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=3,
                            label=res["labels"][cand])
        ax.set_xscale("log")
        ax.set_xlabel("concurrent flows")
        ax.set_ylabel("delivered kpps (median; bars: min to max over runs)")
        ax.set_title(f"Throughput vs flows, 200-byte UDP, {title}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        made[key] = out_dir / f"{key}.png"
        fig.savefig(made[key], dpi=110)
        plt.close(fig)

    lat = res.get("latency", {})
    if lat:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        cands = [c for c in res["order"] if c in lat]
        width = 0.8 / max(1, len(cands))
        pcts = ("p50", "p99", "p99.9")
        for i, cand in enumerate(cands):
            vals = [median(r[p] for r in lat[cand]) or 0 for p in pcts]
            ax.bar([j + i * width for j in range(len(pcts))], vals, width,
                   label=res["labels"][cand])
        ax.set_xticks([j + width * (len(cands) - 1) / 2 for j in range(len(pcts))])
        ax.set_xticklabels(pcts)
        ax.set_ylabel("RTT µs (median of runs)")
        ax.set_yscale("log")
        ax.set_title("Ping-pong RTT percentiles")
        ax.legend(fontsize=7)
        fig.tight_layout()
        made["latency"] = out_dir / "latency.png"
        fig.savefig(made["latency"], dpi=110)
        plt.close(fig)
    return made
