# SPDX-License-Identifier: Apache-2.0
"""Control- and media-plane benchmarks: call setup, transceiver capacity, voice path overhead.

``python -m bench.voice [--markdown] [--json]`` builds the demo's lab
(``lab.stack``: client, relay, transceiver and model namespaces, the XDP
relay in native mode) once and measures, in one session:

1. **Call setup**, through the relay and direct: POST offer -> ICE connected ->
   DTLS connected -> first inbound audio frame, on the client's clock, over
   ``--setup-calls`` sequential calls per path (p50, p95).

   The lab deliberately has no direct path from the client to a transceiver.
   For "direct" the benchmark adds one, and only for itself: a veth pair from
   the client namespace straight into the transceiver namespace (its own /30),
   and a second transceiver process (same code, same model, same directory)
   whose SDP answer advertises its own address instead of a relay's. A
   transceiver advertises one port per relay, so that process gets a port
   range of exactly that one port: its calls run one at a time, which the
   sequential setup loop needs anyway. Signaling differs too, as it does in a
   deployment: through the relay, the client's POST crosses the lab's
   signaling front (a TCP proxy standing in for a load balancer); direct, it
   goes to the transceiver itself.

2. **Transceiver capacity**: N concurrent calls through the relay (Opus both
   ways: the client sends silence, the transceiver its silence-or-reply
   track), N stepping through ``--capacity-steps``. For each step, once every
   call is connected, the client records the arrival time of every inbound
   20 ms audio frame for ``--capacity-seconds``. A frame's lateness is its
   arrival against its call's own schedule (first frame + k * 20 ms, re-anchored
   on the earliest frame), so a steady network delay is not lateness. A step is
   "on time" while the p99 lateness is under one frame (20 ms) and no more than
   1% of frames are missing. The transceiver's and the model's CPU time over
   the window come from /proc; calls per core = N / transceiver CPU share at
   the largest on-time step.

3. **Voice path overhead** excluding inference: one call, ``--turns`` spoken
   turns; for each, the client-clock time from the last speech frame sent to
   the first audible reply frame received, minus the ``processing_ms`` the
   model reports for that turn (ASR + reply + TTS). What remains is the network,
   the transceiver, the gRPC hops, the model's VAD end-of-speech wait and the
   jitter buffers.

4. **Turns under load, model included**: N concurrent calls through the relay
   (N stepping through ``--turn-steps``, 1, 5, 10, 20), each speaking one
   sentence, the starts spread over one sentence's length; per step, the
   turn latency (end of speech -> first audible reply frame, client clock)
   p50 / p95 over all calls, the model's own processing time, the
   transceiver's RTP pacing meanwhile, and both processes' CPU. The
   transceiver is late when its RTP p99 lateness reaches one frame (as in 2.);
   the model is late when a call gets no reply or the model's processing p95
   exceeds ``MODEL_BUDGET_MS``; a step is within capacity while every call
   gets its reply and the turn p95 is within ``TURN_BUDGET_MS``.

``--only setup,turns,capacity,load-turns,direct`` runs some of them.
Everything the lab and this module create is removed on exit. Results go to
``bench/results/voice.md`` (markdown) and, with ``--json``, stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voxrelay.config import MODEL_AUDIO_FRAMES_MAX

FRAME_MS = 20.0
LATE_MS = FRAME_MS
"""A frame later than one frame period on its call's schedule missed its slot."""
LATE_P99_LIMIT_MS = LATE_MS
MISSING_LIMIT = 0.01
DEFAULT_STEPS = (1, 5, 10, 20, 40)
TURN_STEPS = (1, 5, 10, 20)
TURN_BUDGET_MS = 2000.0
"""A reply that starts later than this after the end of speech is too late for
a conversation (it includes the model VAD's 500 ms end-of-speech wait)."""
MODEL_BUDGET_MS = 1000.0
"""The model is late when its p95 processing (ASR + reply + TTS) exceeds this."""
SECTIONS = ("setup", "turns", "capacity", "load-turns", "direct")
RESULTS = Path(__file__).resolve().parent / "results" / "voice.md"


# ------------------------------------------------------------ pure statistics


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of non-empty ``samples`` (p in 0..100)."""
    from bench.report import percentile as nearest_rank

    return nearest_rank(samples, p)


def frame_lateness_ms(arrivals: Sequence[float], frame_ms: float = FRAME_MS) -> list[float]:
    """Lateness of each frame of one stream, in ms, from arrival times in seconds.

    Frame k is due at ``a0 + k * frame_ms``, re-anchored so that the earliest
    frame is on time (lateness 0): a constant delay is not lateness, a frame
    that arrives after its slot is. Arrivals must be in order.
    """
    if any(b < a for a, b in itertools.pairwise(arrivals)):
        raise ValueError("frame arrival times are not in order")
    offsets = [(t - arrivals[0]) * 1000 - k * frame_ms for k, t in enumerate(arrivals)]
    if not offsets:
        return []
    base = min(offsets)
    return [o - base for o in offsets]


@dataclass
class StreamStats:
    """Lateness of all frames of several streams over one window."""

    frames: int
    expected: int
    late_p50_ms: float | None
    late_p99_ms: float | None
    late_max_ms: float | None
    late_share: float
    """Share of received frames later than ``LATE_MS``."""

    @property
    def missing_share(self) -> float:
        return 0.0 if self.expected <= 0 else max(0.0, 1 - self.frames / self.expected)

    @property
    def on_time(self) -> bool:
        return (self.frames > 0 and self.late_p99_ms is not None
                and self.late_p99_ms < LATE_P99_LIMIT_MS and self.missing_share <= MISSING_LIMIT)


def stream_stats(streams: Sequence[Sequence[float]], window_s: float,
                 frame_ms: float = FRAME_MS) -> StreamStats:
    """Pool the per-frame lateness of ``streams`` (arrival times, s) over a window of ``window_s``."""
    if window_s <= 0:
        raise ValueError(f"window must be positive, got {window_s}")
    late: list[float] = []
    for arrivals in streams:
        late.extend(frame_lateness_ms(arrivals, frame_ms))
    expected = len(streams) * int(window_s * 1000 // frame_ms)
    if not late:
        return StreamStats(0, expected, None, None, None, 0.0)
    return StreamStats(
        frames=len(late), expected=expected,
        late_p50_ms=percentile(late, 50), late_p99_ms=percentile(late, 99),
        late_max_ms=max(late), late_share=sum(1 for x in late if x > LATE_MS) / len(late))


def rtp_audio_source_port(packet: bytes, src: bytes) -> int | None:
    """The UDP source port of an IPv4 packet from ``src`` (4 bytes) carrying an
    RTP packet, else None. SRTP leaves the RTP header in clear: version 2 in the
    first byte; RTCP (payload types 72-79 once the marker bit is masked, i.e.
    packet types 200-207), STUN (first byte 0-3) and DTLS (20-63) are not RTP."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if packet[9] != 17 or packet[12:16] != src or len(packet) < ihl + 8 + 12:
        return None
    payload = packet[ihl + 8:]
    if payload[0] >> 6 != 2 or 72 <= (payload[1] & 0x7F) <= 79:
        return None
    return int.from_bytes(packet[ihl:ihl + 2], "big")


@dataclass
class SetupSample:
    """One call's setup on the client's clock, ms from the POST being sent."""

    answer_ms: float
    ice_ms: float
    dtls_ms: float
    first_audio_ms: float


def setup_summary(samples: Sequence[SetupSample]) -> dict[str, dict[str, float]]:
    """p50 and p95 of each setup milestone: {"ice_ms": {"p50": .., "p95": ..}, ...}."""
    if not samples:
        raise ValueError("no call setup samples")
    out: dict[str, dict[str, float]] = {}
    for name in ("answer_ms", "ice_ms", "dtls_ms", "first_audio_ms"):
        values = [getattr(s, name) for s in samples]
        out[name] = {"p50": percentile(values, 50), "p95": percentile(values, 95)}
    return out


@dataclass
class CapacityStep:
    calls: int
    connected: int
    window_s: float
    sent: StreamStats
    """The transceiver's outbound RTP audio, by kernel timestamp on its interface:
    its own pacing, whatever the clients' CPU does. Decides "on time"."""
    received: StreamStats
    """The same frames as decoded by the clients (includes the clients' own delays)."""
    transceiver_cpu: float
    """Transceiver CPU time over the window / window length (1.0 = one core)."""
    model_cpu: float
    client_cpu: float
    """This process (the clients) over the window."""
    transceiver_runq: float = 0.0
    """Time the transceiver's threads waited for a CPU (schedstat run delay) / window:
    high means the machine, not the transceiver, is the limit."""
    failures: list[str] = field(default_factory=list)
    """Why calls that did not connect failed (distinct reasons)."""
    attempts: int = 1
    """Runs of this step (a late step is run once more; the better run is kept)."""

    @property
    def clients_kept_up(self) -> bool:
        """The clients decoded all but ``MISSING_LIMIT`` of the frames. When they
        did not, they were out of CPU, sent less audio too, and the transceiver
        had less work than the step says: its on-time pacing then proves nothing."""
        return self.received.missing_share <= MISSING_LIMIT

    @property
    def on_time(self) -> bool:
        """Every call connected, the transceiver's frames on time, under full load."""
        return self.connected == self.calls and self.sent.on_time and self.clients_kept_up

    @property
    def verdict(self) -> str:
        if self.on_time:
            return "yes"
        if self.connected == self.calls and self.sent.on_time:
            return "n/a (clients behind)"
        return "no"


def calls_per_core(steps: Sequence[CapacityStep]) -> tuple[float | None, int | None]:
    """(calls per transceiver core, the step it comes from): the largest step whose
    calls all connected and whose frames were on time, N / its CPU share."""
    good = [s for s in steps if s.on_time and s.transceiver_cpu > 0]
    if not good:
        return None, None
    best = max(good, key=lambda s: s.calls)
    return best.calls / best.transceiver_cpu, best.calls


def better_step(a: CapacityStep, b: CapacityStep) -> CapacityStep:
    """Of two runs of one step: the on-time one, else more calls connected, else the lower sent p99."""
    def key(st: CapacityStep) -> tuple[bool, int, float]:
        return (st.on_time, st.connected, -(st.sent.late_p99_ms if st.sent.late_p99_ms is not None
                                                 else math.inf))
    return max((a, b), key=key)


@dataclass
class HostRun:
    """The capacity sweep against one transceiver host of ``workers`` processes."""

    workers: int
    steps: list[CapacityStep] = field(default_factory=list)

    @property
    def calls(self) -> int | None:
        """Calls per host: the largest step all connected and on time."""
        good = [s.calls for s in self.steps if s.on_time]
        return max(good) if good else None


@dataclass
class FramesRun:
    """The capacity sweep with the transceiver sending ``frames`` 20 ms frames per
    gRPC message to the model (``[transceiver] model_audio_frames``)."""

    frames: int
    steps: list[CapacityStep] = field(default_factory=list)

    def judged_step(self) -> CapacityStep | None:
        """The step ``calls_per_core`` takes (the largest on-time one), if any."""
        _, at = calls_per_core(self.steps)
        return next((s for s in self.steps if s.calls == at), None)

    def per_call_ratio(self) -> float | None:
        """Transceiver CPU per call / stock aiortc CPU per call, at the judged
        step (the same window and calls, so the machine's load cancels)."""
        step = self.judged_step()
        if step is None or step.client_cpu <= 0 or step.connected == 0:
            return None
        return step.transceiver_cpu / step.client_cpu


def stock_calls_per_core(steps: Sequence[CapacityStep]) -> tuple[float | None, int | None]:
    """The same as ``calls_per_core`` for the stock aiortc peers (the clients,
    doing the same audio in the same steps): N / their CPU share at the step
    ``calls_per_core`` takes."""
    _, at = calls_per_core(steps)
    step = next((s for s in steps if s.calls == at), None)
    if step is None or step.client_cpu <= 0:
        return None, None
    return step.connected / step.client_cpu, at


@dataclass
class TurnSample:
    end_to_reply_ms: float
    processing_ms: float

    @property
    def overhead_ms(self) -> float:
        return self.end_to_reply_ms - self.processing_ms


@dataclass
class LoadTurnStep:
    """One step of "turns under load": ``calls`` concurrent calls, one turn each."""

    calls: int
    connected: int
    latencies_ms: list[float]
    """End of speech -> first audible reply frame, per call that got a reply."""
    processing_ms: list[float]
    """What the model reports per turn (ASR + reply + TTS)."""
    sent: StreamStats
    """The transceiver's outbound RTP pacing over the step's window."""
    window_s: float = 0.0
    transceiver_cpu: float = 0.0
    model_cpu: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def replies(self) -> int:
        return len(self.latencies_ms)

    def latency(self, p: float) -> float | None:
        return percentile(self.latencies_ms, p) if self.latencies_ms else None

    def processing(self, p: float) -> float | None:
        return percentile(self.processing_ms, p) if self.processing_ms else None

    @property
    def transceiver_late(self) -> bool:
        return not self.sent.on_time

    @property
    def model_late(self) -> bool:
        p95 = self.processing(95)
        return self.replies < self.connected or (p95 is not None and p95 > MODEL_BUDGET_MS)

    @property
    def within_capacity(self) -> bool:
        p95 = self.latency(95)
        return (self.connected == self.calls and self.replies == self.calls
                and p95 is not None and p95 <= TURN_BUDGET_MS)


def first_late_step(steps: Sequence[LoadTurnStep]) -> tuple[int | None, list[str]]:
    """(calls, ["transceiver", "model"]) of the first step where either was late."""
    for st in steps:
        late = [name for name, flag in (("transceiver", st.transceiver_late),
                                        ("model", st.model_late)) if flag]
        if late:
            return st.calls, late
    return None, []


def capacity_with_model(steps: Sequence[LoadTurnStep]) -> int | None:
    """The largest step, of a run from the smallest up, before the first one
    out of capacity (replies missing or turn p95 over budget)."""
    best = None
    for st in sorted(steps, key=lambda s: s.calls):
        if not st.within_capacity:
            break
        best = st.calls
    return best


@dataclass
class VoiceResults:
    env: dict[str, Any] = field(default_factory=dict)
    setup: dict[str, list[SetupSample]] = field(default_factory=dict)
    setup_failures: dict[str, list[str]] = field(default_factory=dict)
    capacity: list[CapacityStep] = field(default_factory=list)
    turns: list[TurnSample] = field(default_factory=list)
    load_turns: list[LoadTurnStep] = field(default_factory=list)
    hosts: list[HostRun] = field(default_factory=list)
    """Capacity per transceiver host with 1, 2... workers (``--host-workers``)."""
    frames_runs: list[FramesRun] = field(default_factory=list)
    """The sweep per ``--model-audio-frames`` value, in the order run."""
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    """The sections that ran (``--only``); the report shows only these."""
    vad_silence_ms: float | None = None
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def _f(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def render_markdown(res: VoiceResults) -> str:
    """The results as a markdown section (pure: no clock, no I/O)."""
    lines = ["## Control and media plane (bench/voice.py)", ""]
    env = res.env
    if env:
        lines.append(f"Kernel {env.get('kernel', '?')}, {env.get('cores', '?')} cores, "
                     f"XDP {env.get('xdp_mode', '?')}; one lab session, {res.elapsed_s:.0f} s in all."
                     + (" The machine was shared with other work while this ran: absolute numbers "
                        "are noisy." if env.get("shared") else ""))
        lines.append("")

    if "setup" in res.sections or "direct" in res.sections:
        lines += ["### Call setup (client clock, ms from POST offer sent)", "",
                  ("| path | calls | answer p50 / p95 | ICE connected p50 / p95 | DTLS connected p50 / p95 "
                  "| first audio p50 / p95 |"), "|---|---|---|---|---|---|"]
        summaries = {}
        for path in ("relay", "direct"):
            samples = res.setup.get(path, [])
            failed = len(res.setup_failures.get(path, []))
            if not samples:
                lines.append(f"| {path} | 0 ({failed} failed) | n/a | n/a | n/a | n/a |")
                continue
            s = setup_summary(samples)
            summaries[path] = s
            cells = [f"{_f(s[k]['p50'])} / {_f(s[k]['p95'])}"
                     for k in ("answer_ms", "ice_ms", "dtls_ms", "first_audio_ms")]
            count = f"{len(samples)}" + (f" ({failed} failed)" if failed else "")
            lines.append(f"| {path} | {count} | " + " | ".join(cells) + " |")
        if "relay" in summaries and "direct" in summaries:
            r, d = summaries["relay"]["first_audio_ms"], summaries["direct"]["first_audio_ms"]
            lines += ["", (f"Relay minus direct, first audio: p50 {_f(r['p50'] - d['p50'])} ms, "
                          f"p95 {_f(r['p95'] - d['p95'])} ms.")]
        lines.append("")

    if "capacity" in res.sections:
        lines += ["### Transceiver capacity (concurrent calls through the relay, Opus both ways)", "",
                  ("Sent: the transceiver's outbound RTP audio packets, timestamped by the kernel on its "
                  "interface (its pacing). Received: the same frames decoded at the clients. Lateness is "
                  "against each call's own 20 ms schedule; a step is on time while the sent p99 is under "
                  "20 ms and at most 1% of frames are missing, and counts only if the clients kept up "
                  "(decoded all but 1% of the frames; otherwise they also sent less, and the "
                  "transceiver had less to do: n/a)."), "",
                  ("| calls | connected | sent frames / expected | sent lateness p50 / p99 / max (ms) "
                   "| received lateness p50 / p99 (ms) | transceiver CPU | per call "
                   "| transceiver waiting for a CPU (thread-s/s) | model CPU | client CPU | on time |"),
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for st in res.capacity:
            s, r = st.sent, st.received
            lines.append(
                f"| {st.calls} | {st.connected} | {s.frames} / {s.expected} | "
                f"{_f(s.late_p50_ms)} / {_f(s.late_p99_ms)} / {_f(s.late_max_ms)} | "
                f"{_f(r.late_p50_ms)} / {_f(r.late_p99_ms)} | "
                f"{100 * st.transceiver_cpu:.0f}% | "
                f"{100 * st.transceiver_cpu / max(1, st.connected):.1f}% | {st.transceiver_runq:.2f} | "
                f"{100 * st.model_cpu:.0f}% | {100 * st.client_cpu:.0f}% | "
                f"{st.verdict}{' (2nd run)' if st.attempts > 1 else ''} |")
        for st in res.capacity:
            if st.failures:
                lines.append(f"\n{st.calls} calls: {st.calls - st.connected} did not connect: "
                             + "; ".join(st.failures[:3]))
        cpc, at = calls_per_core(res.capacity)
        lines.append("")
        if cpc is None:
            lines.append("Calls per core: n/a (no step was on time with all calls connected).")
        else:
            lines.append(f"**Calls per transceiver core: {cpc:.0f}** (at {at} concurrent calls: "
                         f"{at} / its CPU share). The largest on-time step is {at} calls"
                         + ("; the steps above it were not run or not on time." if at != max(
                             (s.calls for s in res.capacity), default=at) else "."))
            stock, _ = stock_calls_per_core(res.capacity)
            if stock is not None:
                lines += ["", (f"Side by side, same steps: the clients are stock aiortc peers doing "
                               f"the same audio (aiortc's silence track and encoder out, Opus "
                               f"decoded in): **{stock:.0f} calls per core** (client CPU at {at} "
                               f"calls). voxrelay's transceiver / stock aiortc: "
                               f"**{cpc / stock:.2f}x**, and the transceiver also carries every "
                               f"call's audio to the model over gRPC.")]
        lines.append("")
    if res.hosts:
        lines += ["### Calls per transceiver host (workers behind one front)", "",
                  ("The same sweep against a lab transceiver host with N worker processes behind "
                   "its signaling front (`[transceiver] workers`), each in a lab of its own."), "",
                  ("| workers | calls per host (largest on-time step) | steps (calls: sent p99 ms, "
                   "transceiver CPU) |"), "|---|---|---|"]
        for host in res.hosts:
            cells = ", ".join(f"{s.calls}: {_f(s.sent.late_p99_ms)}, "
                              f"{100 * s.transceiver_cpu:.0f}%"
                              + ("" if s.on_time else
                                 " clients behind" if s.verdict != "no" else " late")
                              for s in host.steps)
            lines.append(f"| {host.workers} | {host.calls if host.calls is not None else 'n/a'} "
                         f"| {cells} |")
        lines.append("")

    if res.frames_runs:
        lines += render_frames_runs(res.frames_runs)
    if "turns" in res.sections:
        lines += ["### Voice path overhead, excluding inference", "",
                  "| turn | speech end -> first reply audio (ms) | model processing (ms) | overhead (ms) |",
                  "|---|---|---|---|"]
        for i, t in enumerate(res.turns, 1):
            lines.append(f"| {i} | {_f(t.end_to_reply_ms)} | {_f(t.processing_ms)} | {_f(t.overhead_ms)} |")
        if res.turns:
            med = statistics.median(t.overhead_ms for t in res.turns)
            lines += ["", f"**Median overhead: {_f(med)} ms** over {len(res.turns)} turns"
                      + (f", of which the model's VAD end-of-speech wait is about {_f(res.vad_silence_ms, 0)} ms"
                         if res.vad_silence_ms is not None else "") + "."]
        else:
            lines.append("No turn completed.")
    if res.load_turns:
        lines += ["", *render_load_turns(res.load_turns)] if lines[-1] else render_load_turns(
            res.load_turns)
    if res.notes:
        lines += ["", "### What limits these figures", ""] + [f"- {n}" for n in res.notes]
    return "\n".join(lines) + "\n"


def render_frames_runs(runs: Sequence[FramesRun]) -> list[str]:
    """The ``--model-audio-frames`` comparison (pure)."""
    lines = ["### Frames per gRPC message to the model (`[transceiver] model_audio_frames`)", "",
             ("The capacity sweep once per value, each in a lab of its own, in this one run and "
              "in this order. Per-call CPU ratio: the transceiver's CPU per call over the stock "
              "aiortc clients' in the same window, at the largest on-time step."), "",
             ("| run | frames per message | largest on-time step | transceiver CPU per call "
              "| stock aiortc per call | per-call CPU, transceiver / stock "
              "| calls per core: transceiver / stock |"), "|---|---|---|---|---|---|---|"]
    for i, run in enumerate(runs, 1):
        cpc, at = calls_per_core(run.steps)
        stock, _ = stock_calls_per_core(run.steps)
        step = run.judged_step()
        if cpc is None or stock is None or step is None:
            late = ", ".join(f"{s.calls}: {s.verdict}" for s in run.steps)
            lines.append(f"| {i} | {run.frames} | none ({late}) | n/a | n/a | n/a | n/a |")
            continue
        n = max(1, step.connected)
        lines.append(f"| {i} | {run.frames} | {at} | {100 * step.transceiver_cpu / n:.1f}% "
                     f"| {100 * step.client_cpu / n:.1f}% | {_f(run.per_call_ratio(), 2)} "
                     f"| {cpc:.0f} / {stock:.0f} = **{cpc / stock:.2f}x** |")
    lines.append("")
    return lines


def render_load_turns(steps: Sequence[LoadTurnStep]) -> list[str]:
    """The "turns under load" subsection (pure)."""
    lines = ["### Turns under load, model included (concurrent calls, one turn each)", "",
             ("Each call speaks the same sentence, the starts spread over one sentence's length. "
              "Turn latency: end of speech -> first audible reply frame on the client's clock. "
              f"Model processing: ASR + reply + TTS as the model reports it. The transceiver is "
              "late when its RTP p99 lateness reaches 20 ms; the model is late when a call gets "
              f"no reply or its processing p95 exceeds {MODEL_BUDGET_MS:.0f} ms. Within capacity: "
              f"every call answered and the turn p95 within {TURN_BUDGET_MS:.0f} ms."), "",
             ("| calls | connected | replies | turn latency p50 / p95 (ms) | model processing "
              "p50 / p95 (ms) | transceiver RTP p99 late (ms) | transceiver CPU | model CPU "
              "| late |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for st in steps:
        late = [n for n, f in (("transceiver", st.transceiver_late), ("model", st.model_late)) if f]
        lines.append(
            f"| {st.calls} | {st.connected} | {st.replies} | "
            f"{_f(st.latency(50), 0)} / {_f(st.latency(95), 0)} | "
            f"{_f(st.processing(50), 0)} / {_f(st.processing(95), 0)} | "
            f"{_f(st.sent.late_p99_ms)} | {100 * st.transceiver_cpu:.0f}% | "
            f"{100 * st.model_cpu:.0f}% | {', '.join(late) or 'no'} |")
    for st in steps:
        if st.failures:
            lines.append(f"\n{st.calls} calls: " + "; ".join(st.failures[:3]))
    cap = capacity_with_model(steps)
    at, late = first_late_step(steps)
    lines += ["", (f"**Capacity with the model: {cap} concurrent calls** "
                   f"(the largest step with every turn answered within {TURN_BUDGET_MS:.0f} ms "
                   "at p95)." if cap is not None else
                   "**Capacity with the model: n/a** (not even the first step was within capacity).")]
    lines.append(f"First late step: {at} calls ({' and '.join(late)} late)." if at is not None
                 else "No step was late.")
    return lines


def results_json(res: VoiceResults) -> dict[str, Any]:
    out = asdict(res)
    for st, raw in zip(res.capacity, out["capacity"]):
        for key in ("sent", "received"):
            raw[key]["on_time"] = getattr(st, key).on_time
            raw[key]["missing_share"] = getattr(st, key).missing_share
    cpc, at = calls_per_core(res.capacity)
    out["calls_per_core"] = cpc
    out["calls_per_core_at"] = at
    out["setup_summary"] = {k: setup_summary(v) for k, v in res.setup.items() if v}
    out["overhead_median_ms"] = statistics.median(t.overhead_ms for t in res.turns) if res.turns else None
    for st, raw in zip(res.load_turns, out["load_turns"]):
        raw.update({"latency_p50_ms": st.latency(50), "latency_p95_ms": st.latency(95),
                    "transceiver_late": st.transceiver_late, "model_late": st.model_late,
                    "within_capacity": st.within_capacity})
    out["capacity_with_model"] = capacity_with_model(res.load_turns)
    out["first_late_step"] = first_late_step(res.load_turns)[0]
    return out


# ------------------------------------------------------------ the measurements


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) and of its live descendants
    (a transceiver front's workers), in seconds."""
    total = 0.0
    for one in _process_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = Path(f"/proc/{one}/stat").read_text()
            fields = text[text.rindex(")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/*/task/*/children)."""
    out, todo = [], [pid]
    while todo and len(out) < 256:  # bounded: a transceiver host has a few workers
        one = todo.pop()
        out.append(one)
        for children in Path(f"/proc/{one}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                todo += [int(c) for c in children.read_text().split()]
    return out


class EgressCapture:
    """Kernel timestamps of the transceiver's outbound RTP, per call (UDP source port).

    An AF_PACKET socket on the transceiver's interface, created in its
    namespace, with a classic BPF filter that keeps outgoing packets only. The
    kernel stamps each packet as it leaves, so a busy reader (this process
    shares the cores) does not shift the times; it only has to keep up with
    the socket buffer.
    """

    def __init__(self, netns: str, ifname: str, src: str) -> None:
        import socket as socketlib
        import threading

        from orchestrator.netlink import run_in_netns

        self._src = socketlib.inet_aton(src)
        self.sock = run_in_netns(netns, self._open, ifname)
        self.times: dict[int, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="egress-capture", daemon=True)
        self._thread.start()

    @staticmethod
    def _open(ifname: str) -> Any:
        import ctypes
        import socket as socketlib
        import struct

        # ETH_P_ALL: the kernel hands outgoing packets only to all-protocol taps.
        eth_p_all = 0x0003
        sock = socketlib.socket(socketlib.AF_PACKET, socketlib.SOCK_DGRAM, socketlib.htons(eth_p_all))
        try:
            sock.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_RCVBUF, 8 << 20)
            sock.setsockopt(socketlib.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            # A = skb->pkt_type; keep PACKET_OUTGOING (4), drop the rest.
            insns = [(0x20, 0, 0, 0xFFFFF004), (0x15, 0, 1, 4), (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0)]
            code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in insns))
            prog = struct.pack("=HxxxxxxQ" if struct.calcsize("P") == 8 else "=HxxI",
                               len(insns), ctypes.addressof(code))
            sock.setsockopt(socketlib.SOL_SOCKET, SO_ATTACH_FILTER, prog)
            sock.bind((ifname, eth_p_all))
        except BaseException:
            sock.close()
            raise
        sock.settimeout(0.2)
        return sock

    def _read(self) -> None:
        import struct

        while not self._stop.is_set():
            try:
                data, anc, _, _ = self.sock.recvmsg(2048, 64)
            except TimeoutError:
                continue
            except OSError:
                return
            port = rtp_audio_source_port(data, self._src)
            if port is None:
                continue
            for level, kind, value in anc:
                if kind == SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack("=qq", value[:16])
                    self.times.setdefault(port, []).append(sec + nsec / 1e9)

    def window(self, start: float, end: float) -> list[list[float]]:
        """Per-call RTP send times (wall clock) within [start, end]."""
        return [[t for t in ts if start <= t <= end] for ts in list(self.times.values())
                if any(start <= t <= end for t in ts)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


SO_TIMESTAMPNS = 35
SO_ATTACH_FILTER = 26


def _run_delay_seconds(pid: int) -> float:
    """Sum over the process tree's threads of the time spent runnable but not running."""
    total = 0
    for one in _process_tree(pid):
        for stat in Path(f"/proc/{one}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(stat.read_text().split()[1])
    return total / 1e9


async def _wait_idle(url: str, timeout: float) -> None:
    """Until the transceiver holds no call (the previous step's are torn down), bounded."""
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url.rstrip("/") + "/healthz") as r:
                    if (await r.json()).get("calls") == 0:
                        return
            await asyncio.sleep(0.25)


_API_KEY = ""
"""The signaling API key the bench's clients present: the lab stack's, set by
``run_bench`` once the stack is up (the clients run on threads of this process)."""


def _bench_client_class():  # type: ignore[no-untyped-def]
    """``TimedCallClient`` that timestamps each setup milestone and inbound frame.

    Built lazily: importing aiortc costs a second and the pure part above
    (and its unit test) must not need it.
    """
    from aiortc import RTCSessionDescription

    from lab.call import TimedCallClient
    from lab.client import CallFailed

    class BenchClient(TimedCallClient):
        light: bool = False
        """Only timestamp frames (no resampling, no RMS): keeps the clients'
        CPU down in the capacity steps, where the client shares the cores."""

        def __post_init__(self) -> None:
            super().__post_init__()
            self.token = self.token or _API_KEY
            self.marks: dict[str, float] = {}
            self.frame_times: list[float] = []
            self.recording = False

            @self.pc.on("iceconnectionstatechange")
            def on_ice() -> None:
                if self.pc.iceConnectionState in ("connected", "completed"):
                    self.marks.setdefault("ice", time.monotonic())

            @self.pc.on("connectionstatechange")
            def on_state() -> None:
                if self.pc.connectionState == "connected":
                    self.marks.setdefault("dtls", time.monotonic())

        async def connect(self) -> None:
            # CallClient.connect, with the milestones timestamped and the wait
            # extended to the first inbound audio frame.
            await self.pc.setLocalDescription(await self.pc.createOffer())
            self.marks["post"] = time.monotonic()
            response = await self._sdp_request("POST", "v1/calls", self.pc.localDescription.sdp)
            if response.status != 201:
                raise CallFailed(f"POST /v1/calls: {response.status} {await response.text()}")
            self.marks["answer"] = time.monotonic()
            self.location = response.headers["Location"]
            self.call_id = self.location.rsplit("/", 1)[-1]
            self.answer_sdp = await response.text()
            await self.pc.setRemoteDescription(RTCSessionDescription(self.answer_sdp, "answer"))
            await self.wait_for(lambda: "first_audio" in self.marks, "the first audio frame", poll=True)
            self.connect_ms = (self.marks["dtls"] - self.marks["post"]) * 1000

        def use_stock_mic(self) -> None:
            """Send what a stock aiortc peer sends: aiortc's own silence track
            through aiortc's own encoder path (the capacity steps' clients are
            the stock side of the comparison)."""
            from aiortc.mediastreams import AudioStreamTrack

            self.mic = AudioStreamTrack()  # type: ignore[assignment]
            self.pc.getSenders()[0].replaceTrack(self.mic)

        def setup_sample(self) -> SetupSample:
            m = self.marks
            ms = lambda k: (m[k] - m["post"]) * 1000
            return SetupSample(ms("answer"), ms("ice"), ms("dtls"), ms("first_audio"))

        def _on_frame(self, arrived_at: float) -> bool:
            self.marks.setdefault("first_audio", arrived_at)
            if self.recording:
                self.frame_times.append(arrived_at)
            return not self.light

    return BenchClient


async def _setup_calls(url: str, count: int, timeout: float) -> tuple[list[SetupSample], list[str]]:
    """``count`` sequential calls, each torn down before the next (runs in the client namespace)."""
    from lab.client import CallFailed

    client_cls = _bench_client_class()
    samples: list[SetupSample] = []
    failures: list[str] = []
    busy_retries = 0
    while len(samples) + len(failures) < count:
        client = client_cls(url, timeout=timeout)
        client.light = True
        try:
            async with client:
                samples.append(client.setup_sample())
        except CallFailed as exc:
            # The direct transceiver has one port: a 503 means the previous
            # call has not released it yet. Not a setup failure; bounded.
            if str(exc).startswith("POST /v1/calls: 503") and busy_retries < 20:
                busy_retries += 1
                await asyncio.sleep(0.2)
                continue
            failures.append(str(exc))
        await asyncio.sleep(0.1)
    return samples, failures


def _start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy (sampling, from PyPI) on the transceiver for the window: collapsed
    stacks, one line per distinct stack with its sample count, in ``out``.
    None (and a note on stderr) when py-spy is not installed."""
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        print("bench.voice: --profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [str(exe), "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
         "--rate", "200", "--format", "raw", "--nonblocking",
         "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_summary(collapsed: str, top: int = 15) -> list[tuple[str, float, float]]:
    """(function, self share, inclusive share) of the ``top`` functions by self
    time, from py-spy's collapsed stacks ("a;b;c 12" per line). Pure."""
    self_count: dict[str, int] = {}
    incl_count: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # "function (file.py:123)": one name per function, whatever the line.
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        total += count
        self_count[frames[-1]] = self_count.get(frames[-1], 0) + count
        for frame in set(frames):
            incl_count[frame] = incl_count.get(frame, 0) + count
    if not total:
        return []
    ranked = sorted(self_count.items(), key=lambda kv: -kv[1])[:top]
    return [(name, n / total, incl_count[name] / total) for name, n in ranked]


async def _capacity_step(url: str, calls: int, window: float, timeout: float,
                         pids: dict[str, int], capture: EgressCapture,
                         profile: Path | None = None) -> CapacityStep:
    """``calls`` concurrent calls; frame arrivals and CPU over ``window`` seconds
    (and a py-spy profile of the transceiver in ``profile``, if given)."""
    client_cls = _bench_client_class()
    clients = []
    gate = asyncio.Semaphore(5)  # DTLS handshakes are CPU-heavy: not all at once

    failures: list[str] = []
    spy: subprocess.Popen[bytes] | None = None

    async def open_one() -> Any:
        client = client_cls(url, timeout=timeout)
        client.light = True
        client.use_stock_mic()
        async with gate:
            try:
                await client.__aenter__()
            except Exception as exc:  # noqa: BLE001 - counted as not connected; the step reports it
                reason = str(exc) or type(exc).__name__
                if reason not in failures:
                    failures.append(reason)
                return None
        return client

    await _wait_idle(url, 15)

    try:
        opened = await asyncio.gather(*(open_one() for _ in range(calls)))
        clients = [c for c in opened if c is not None]
        await asyncio.sleep(1.0)  # past the jitter buffers' start
        for c in clients:
            c.frame_times.clear()
            c.recording = True
        cpu0 = {k: _cpu_seconds(p) for k, p in pids.items()}
        runq0 = _run_delay_seconds(pids["transceiver"])
        own0, t0, wall0 = time.process_time(), time.monotonic(), time.time()
        spy = _start_profile(pids["transceiver"], window, profile) if profile else None
        await asyncio.sleep(window)
        for c in clients:
            c.recording = False
        cpu1 = {k: _cpu_seconds(p) for k, p in pids.items()}
        runq1 = _run_delay_seconds(pids["transceiver"])
        own1, t1, wall1 = time.process_time(), time.monotonic(), time.time()
        await asyncio.sleep(0.3)  # the capture reader catches up with the window's end
        if spy is not None:
            await asyncio.to_thread(spy.wait, 30)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    wall = t1 - t0
    sent = capture.window(wall0, wall1)
    capture.times.clear()
    return CapacityStep(
        calls=calls, connected=len(clients), window_s=wall,
        sent=stream_stats(sent + [[]] * max(0, calls - len(sent)), wall),
        received=stream_stats([list(c.frame_times) for c in clients] + [[]] * (calls - len(clients)), wall),
        transceiver_cpu=(cpu1["transceiver"] - cpu0["transceiver"]) / wall,
        model_cpu=(cpu1["model"] - cpu0["model"]) / wall,
        client_cpu=(own1 - own0) / wall,
        transceiver_runq=(runq1 - runq0) / wall, failures=failures)


async def _turns(url: str, pcm: bytes, count: int, timeout: float) -> list[TurnSample]:
    from lab.call import speak_turn

    client_cls = _bench_client_class()
    out: list[TurnSample] = []
    async with client_cls(url, timeout=timeout) as client:
        await client.wait_event("model", state="connected")
        for _ in range(count):
            turn = await speak_turn(client, pcm, timeout=timeout)
            processing = turn.timings.get("processing_ms")
            if turn.speech_end_to_first_reply_audio_ms is not None and processing is not None:
                out.append(TurnSample(turn.speech_end_to_first_reply_audio_ms, float(processing)))
            await asyncio.sleep(0.5)
    return out


async def _load_turn_step(url: str, calls: int, pcm: bytes, timeout: float,
                          pids: dict[str, int], capture: EgressCapture) -> LoadTurnStep:
    """``calls`` concurrent calls, one spoken turn each (runs in the client namespace)."""
    from lab.call import speak_turn, speech_end_offset

    client_cls = _bench_client_class()
    gate = asyncio.Semaphore(5)  # DTLS handshakes are CPU-heavy: not all at once
    failures: list[str] = []

    def failed(exc: BaseException) -> None:
        reason = str(exc) or type(exc).__name__
        if reason not in failures:
            failures.append(reason)

    async def open_one() -> Any:
        client = client_cls(url, timeout=timeout)
        async with gate:
            try:
                await client.__aenter__()
                await client.wait_event("model", state="connected")
            except Exception as exc:  # noqa: BLE001 - counted as not connected; reported
                failed(exc)
                await client.close()
                return None
        return client

    rng = random.Random(calls)
    spread = speech_end_offset(pcm)

    async def one_turn(client: Any) -> Any:
        await asyncio.sleep(rng.uniform(0, spread))
        try:
            return await speak_turn(client, pcm, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - a turn without a reply; reported
            failed(exc)
            return None

    await _wait_idle(url, 15)
    clients: list[Any] = []
    try:
        opened = await asyncio.gather(*(open_one() for _ in range(calls)))
        clients = [c for c in opened if c is not None]
        await asyncio.sleep(1.0)  # past the jitter buffers' start
        cpu0 = {k: _cpu_seconds(p) for k, p in pids.items()}
        t0, wall0 = time.monotonic(), time.time()
        turns = await asyncio.gather(*(one_turn(c) for c in clients))
        cpu1 = {k: _cpu_seconds(p) for k, p in pids.items()}
        t1, wall1 = time.monotonic(), time.time()
        await asyncio.sleep(0.3)  # the capture reader catches up with the window's end
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    wall = max(t1 - t0, 1e-3)
    latencies = [t.speech_end_to_first_reply_audio_ms for t in turns
                 if t is not None and t.speech_end_to_first_reply_audio_ms is not None]
    processing = [float(t.timings["processing_ms"]) for t in turns
                  if t is not None and "processing_ms" in t.timings]
    sent = capture.window(wall0, wall1)
    capture.times.clear()
    return LoadTurnStep(
        calls=calls, connected=len(clients), latencies_ms=latencies, processing_ms=processing,
        sent=stream_stats(sent + [[]] * max(0, len(clients) - len(sent)), wall), window_s=wall,
        transceiver_cpu=(cpu1["transceiver"] - cpu0["transceiver"]) / wall,
        model_cpu=(cpu1["model"] - cpu0["model"]) / wall, failures=failures)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextlib.asynccontextmanager
async def _direct_path(running: Any) -> Any:
    """A veth from the client namespace into the transceiver namespace and a
    second transceiver there advertising its own address; yields its URL."""
    from lab.stack import MODEL_PORT, _write_toml, python_argv, source_root, tcp_open

    suffix = f"{random.randrange(16**5):05x}"
    net = f"10.254.{random.randrange(1, 250)}"
    client_if, txr_if = f"bvc{suffix}", f"bvt{suffix}"
    client_addr, txr_addr = f"{net}.1", f"{net}.2"
    port = 41000
    _ip("link", "add", client_if, "netns", running.client_ns, "type", "veth",
        "peer", "name", txr_if, "netns", running.transceiver_ns)
    try:
        for ns, ifname, addr in ((running.client_ns, client_if, client_addr), (running.transceiver_ns, txr_if, txr_addr)):
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", ifname)
            _ip("-n", ns, "link", "set", ifname, "up")
        # The client's ICE also pairs its lab-side address with the direct
        # candidate; a route back to it makes that pair work too, so the
        # direct calls do not pay for a dead pair the relay calls do not have.
        _ip("-n", running.transceiver_ns, "route", "add", f"{running.client_address}/32", "via", client_addr)
        config = _write_toml(running.workdir / "transceiver-direct.toml", {"transceiver": {
            "id": 2,
            "listen": f"{txr_addr}:8081",
            "private_address": txr_addr,
            "relays": [f"{txr_addr}:{port}"],
            "port_min": port, "port_max": port,
            "probe_port": 0,
            "workers": 1,
            "directory": running.directory_url,
            "model": f"{running.model_address}:{MODEL_PORT}",
            "drain_grace_seconds": 1.0,
            # The lab's secrets: the same API key as the relayed transceiver's.
            "directory_secret_file": str(running.directory_secret_file),
            "api_key_file": str(running.workdir / "api-key"),
        }})
        svc = running.service("transceiver-direct", running.transceiver_ns,
                          python_argv("transceiver", "run", "--config", str(config)),
                          PYTHONPATH=str(source_root()))
        svc.start()
        try:
            await svc.wait_ready(lambda: tcp_open(running.client_ns, txr_addr, 8081), 60)
            yield f"http://{txr_addr}:8081"
        finally:
            await svc.stop()
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            _ip("-n", running.client_ns, "link", "del", client_if)


def _env(xdp_mode: str, shared: bool = False) -> dict[str, Any]:
    return {"kernel": os.uname().release, "cores": os.cpu_count(), "xdp_mode": xdp_mode,
            "python": sys.version.split()[0], "shared": shared}


async def _capacity_steps(running: Any, res: VoiceResults, url: str, steps: Sequence[int], window: float,
                          timeout: float, pids: dict[str, int], capture: EgressCapture,
                          progress: Any, log: Any, profile_dir: Path | None = None,
                          into: list[CapacityStep] | None = None) -> None:
    into = res.capacity if into is None else into
    for n in steps:
        profile = None if profile_dir is None else profile_dir / f"transceiver-{n}-calls.txt"
        with progress.step(f"capacity: {n} concurrent calls, {window:.0f} s window"):
            step = await running.client_call(_capacity_step, url, n, window, timeout, pids, capture,
                                             profile)
        if not step.on_time and step.connected == n:
            with progress.step(f"capacity: {n} concurrent calls late, running it once more"):
                again = await running.client_call(_capacity_step, url, n, window, timeout, pids, capture)
            step = better_step(step, again)
            step.attempts = 2
        into.append(step)
        log(f"    {n} calls: connected {step.connected}, sent p99 lateness "
            f"{_f(step.sent.late_p99_ms)} ms ({step.sent.frames}/{step.sent.expected} frames), received "
            f"{_f(step.received.late_p99_ms)} ms, transceiver CPU {100 * step.transceiver_cpu:.0f}%")
        # Late on both runs (or calls no longer connect): the capacity is
        # found; larger steps would only pile calls on a saturated machine.
        if not step.on_time:
            break


async def _capacity_in_lab(options: Any, res: VoiceResults, steps: Sequence[int], window: float,
                           timeout: float, progress: Any, log: Any,
                           into: list[CapacityStep]) -> None:
    """The capacity sweep in a lab of its own, built from ``options`` (a
    ``StackOptions``), its steps appended to ``into``."""
    from lab.stack import start_stack

    global _API_KEY  # noqa: PLW0603 - read by the clients' threads, see _API_KEY
    async with start_stack(options, progress) as running:
        pids = {"transceiver": running.services["transceiver"].proc.pid,
                "model": running.services["model"].proc.pid}
        _API_KEY = running.api_key
        capture = EgressCapture(running.transceiver_ns, running.topology.transceiver_lan.ifname,
                                running.transceiver_address)
        try:
            await _capacity_steps(running, res, running.signaling_url, steps, window, timeout,
                                  pids, capture, progress, log, into=into)
        finally:
            capture.close()


async def run_bench(setup_calls: int, steps: Sequence[int], window: float, turns: int,
                    timeout: float, xdp_mode: str, log: Any, shared: bool = False,
                    turn_steps: Sequence[int] = TURN_STEPS,
                    only: Sequence[str] = SECTIONS, profile_dir: Path | None = None,
                    host_workers: Sequence[int] = (),
                    audio_frames: Sequence[int] = ()) -> VoiceResults:
    from lab.demo import speak
    from lab.stack import PrintProgress, StackOptions, start_stack

    started = time.monotonic()
    res = VoiceResults(env=_env(xdp_mode, shared), sections=list(only))
    progress = PrintProgress()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="voxrelay-bench-voice-") as tmp:
        from lab.client import read_wav_pcm

        pcm = read_wav_pcm(speak("what is the weather like today", Path(tmp) / "speech.wav"))
        # Every step's calls must get a model stream (the transceiver admits
        # no call beyond the model's streams): the model serves the largest.
        sweeps = "capacity" in only or bool(host_workers) or bool(audio_frames)
        streams = max([16, *(steps if sweeps else []),
                       *(turn_steps if "load-turns" in only else [])])
        if only:  # "--only none": just the --host-workers / --model-audio-frames sweeps
            async with start_stack(StackOptions(xdp_mode=xdp_mode, relays=1, model_streams=streams),
                                   progress) as running:
                pids = {"transceiver": running.services["transceiver"].proc.pid,
                        "model": running.services["model"].proc.pid}
                global _API_KEY  # noqa: PLW0603 - read by the clients' threads, see _API_KEY
                _API_KEY = running.api_key
                url = running.signaling_url
                if "setup" in only:
                    with progress.step(f"call setup through the relay: {setup_calls} calls"):
                        res.setup["relay"], res.setup_failures["relay"] = await running.client_call(
                            _setup_calls, url, setup_calls, timeout)
                if "turns" in only:
                    with progress.step(f"voice path: {turns} turns"):
                        try:
                            res.turns = await running.client_call(_turns, url, pcm, turns, timeout)
                        except Exception as exc:  # noqa: BLE001 - reported, the other figures stand
                            res.notes.append(f"voice turns failed: {exc}")
                capture = EgressCapture(running.transceiver_ns, running.topology.transceiver_lan.ifname,
                                        running.transceiver_address)
                try:
                    if "capacity" in only:
                        await _capacity_steps(running, res, url, steps, window, timeout, pids,
                                              capture, progress, log, profile_dir)
                    if "load-turns" in only:
                        for n in turn_steps:
                            with progress.step(f"turns under load: {n} concurrent calls, one turn each"):
                                step = await running.client_call(_load_turn_step, url, n, pcm,
                                                                 timeout, pids, capture)
                            res.load_turns.append(step)
                            log(f"    {n} calls: {step.replies}/{step.calls} replies, turn p50/p95 "
                                f"{_f(step.latency(50), 0)}/{_f(step.latency(95), 0)} ms, model "
                                f"p95 {_f(step.processing(95), 0)} ms, transceiver RTP p99 late "
                                f"{_f(step.sent.late_p99_ms)} ms")
                finally:
                    capture.close()
                if "direct" in only:
                    async with contextlib.AsyncExitStack() as stack:
                        with progress.step("direct path: veth client <-> transceiver, "
                                           "second transceiver"):
                            direct_url = await stack.enter_async_context(_direct_path(running))
                        with progress.step(f"call setup direct: {setup_calls} calls"):
                            res.setup["direct"], res.setup_failures["direct"] = (
                                await running.client_call(_setup_calls, direct_url, setup_calls,
                                                          timeout))
    for workers in host_workers:
        # The same capacity sweep against a transceiver host of ``workers``
        # processes behind its front, each lab of its own, in this one run.
        host = HostRun(workers)
        await _capacity_in_lab(StackOptions(xdp_mode=xdp_mode, relays=1, model_streams=streams,
                                            transceiver_workers=workers),
                               res, steps, window, timeout, progress, log, into=host.steps)
        res.hosts.append(host)
    for frames in audio_frames:
        # The same sweep with the transceiver batching ``frames`` frames per
        # message to the model: one lab per value, run after one another.
        run = FramesRun(frames)
        log(f"  model_audio_frames = {frames}")
        await _capacity_in_lab(StackOptions(xdp_mode=xdp_mode, relays=1, model_streams=streams,
                                            transceiver_settings={"model_audio_frames": frames}),
                               res, steps, window, timeout, progress, log, into=run.steps)
        res.frames_runs.append(run)
    res.elapsed_s = time.monotonic() - started
    from transceiver.model.vad import VadSettings

    res.vad_silence_ms = float(VadSettings().end_silence_ms)
    res.notes += limits_notes(res)
    return res


def limits_notes(res: VoiceResults) -> list[str]:
    """What bounds each figure (text for the report; depends only on the results)."""
    shared = bool(res.env.get("shared"))
    notes = [
        ("2 cores: the client, the relay's softirq, the transceiver and the model all run on "
        "them" + (", and other work shared them during this run" if shared else "")
        + ". Quote medians and the relay/direct difference, not absolutes."),
        ("Call setup is dominated by Python: aiortc's DTLS handshake and ICE pacing on both ends. "
        "Through the relay, the POST also crosses the lab's signaling front (a Python TCP proxy "
        "standing in for a load balancer), and ICE uses the relay candidate; direct, the second "
        "transceiver advertises its own address on a veth added only for this benchmark, with a "
        "single-port range (one call at a time), and a route back to the client's lab address "
        "so that every client candidate pair works, as through the relay. The relay block runs "
        "before the direct one (the extra veth would give the relay calls a dead candidate pair)."),
        ("First audio is the first decoded inbound frame: the transceiver sends silence as soon "
        "as DTLS is up, so it marks when media flows, not when the model speaks. About 80 ms of "
        "the ~100 ms from DTLS to first audio is the clients' audio jitter buffer (aiortc's: 4 "
        "frames, prefetch=4, before it yields the first one; the transceiver's own hands on an "
        "in-order packet at once, transceiver/ice.py); it is the same on both paths. The "
        "relay's own cost (tens of µs per packet) is far below this run-to-run noise."),
        ("Capacity: on time is judged on the transceiver's own RTP send times (kernel "
        "timestamps on its interface), so the clients' delays do not count against it; but the "
        "clients (this process) and the model share its 2 cores, and a "
        "transceiver that waits for a CPU sends late. A late step is run a second time and the "
        "better run kept, since one burst from another process can spoil a 6 s window; the sweep "
        "stops at the first step late on both runs. Calls per "
        "core extrapolates linearly from the largest on-time step (its CPU share includes the "
        "per-process idle cost, so it underestimates at 1 call) and ignores the model's CPU "
        "(every call's audio also goes to the model's VAD)."),
        ("Voice overhead includes the model's VAD end-of-speech wait (the silence it needs "
        "before closing a turn), the client's and transceiver's jitter buffers, Opus, the relay "
        "and two gRPC directions; processing_ms (ASR + reply + TTS) is what the model reports."),
    ]
    if res.load_turns:
        notes.append(
            "Turns under load: the clients decode every reply frame (to find the first audible "
            "one), so at 20 calls this process's CPU competes with the transceiver and the "
            "model on the same 2 cores; the model's ASR runs on its decode pool (one Whisper "
            "replica per core; partial decodes are skipped while the pool is busy, finals "
            "queue), which is what grows its processing time with the number of calls. The transceiver admits no call beyond the model's streams "
            "(model_streams), so the lab's model serves as many as the largest step.")
    late = next((st for st in res.capacity if not st.sent.on_time), None)
    if late is not None:
        notes.append(
            f"At {late.calls} calls, the first late step, the transceiver used {100 * late.transceiver_cpu:.0f}% "
            f"of a core while its threads waited {late.transceiver_runq:.2f} s per second for a CPU: "
            "the two cores were full (the clients in this process, the model"
            + (", other work on the machine" if shared else "") + "), so the late frames say when this machine ran out, not the transceiver alone. "
            "Calls per core (N / CPU share at the largest on-time step) is the estimate for a "
            "transceiver with a core of its own.")
    return notes


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.voice", description=__doc__.split("\n\n")[0])
    p.add_argument("--setup-calls", type=int, default=20)
    p.add_argument("--capacity-steps", default=",".join(map(str, DEFAULT_STEPS)),
                   help="comma-separated concurrent call counts")
    p.add_argument("--capacity-seconds", type=float, default=6.0)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--turn-steps", default=",".join(map(str, TURN_STEPS)),
                   help="comma-separated concurrent call counts for turns under load")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run, of {','.join(SECTIONS)}; none runs "
                        "only the --host-workers / --model-audio-frames sweeps")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--xdp-mode", choices=["native", "generic"], default="native")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--markdown", action="store_true", help="print the markdown section on stdout")
    p.add_argument("--json", action="store_true", help="print the raw results as JSON on stdout")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="py-spy the transceiver during each capacity window; collapsed stacks "
                        "in DIR/transceiver-N-calls.txt (needs py-spy from PyPI)")
    p.add_argument("--host-workers", default="",
                   help="comma-separated worker counts (e.g. 1,2): run the capacity sweep "
                        "again against a transceiver host of that many workers, per count")
    p.add_argument("--model-audio-frames", default="",
                   help="comma-separated values of [transceiver] model_audio_frames (e.g. "
                        "1,2,1,2): run the capacity sweep again per value, each in a lab of its "
                        "own, and compare the transceiver's CPU per call against stock aiortc")
    p.add_argument("--shared", action="store_true",
                   help="say in the report that other work shared the machine during the run")
    args = p.parse_args(argv)
    try:
        steps = [int(s) for s in args.capacity_steps.split(",") if s.strip()]
        turn_steps = [int(s) for s in args.turn_steps.split(",") if s.strip()]
        host_workers = [int(s) for s in args.host_workers.split(",") if s.strip()]
        audio_frames = [int(s) for s in args.model_audio_frames.split(",") if s.strip()]
    except ValueError:
        p.error("--capacity-steps, --turn-steps, --host-workers, --model-audio-frames: "
                "not a list of integers")
    if any(not 1 <= f <= MODEL_AUDIO_FRAMES_MAX for f in audio_frames):
        p.error(f"--model-audio-frames: each value must be 1 to {MODEL_AUDIO_FRAMES_MAX}")
    if any(w < 1 for w in host_workers):
        p.error("--host-workers must be positive")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if only == ["none"] and (host_workers or audio_frames):
        only = []
    elif not only or any(s not in SECTIONS for s in only):
        p.error(f"--only: sections are {', '.join(SECTIONS)} (or none, with --host-workers "
                "or --model-audio-frames)")
    if not turn_steps or min(turn_steps) < 1:
        p.error("--turn-steps must be positive")
    if not steps or min(steps) < 1 or args.setup_calls < 1 or args.turns < 0 or args.capacity_seconds <= 0:
        p.error("--setup-calls, --capacity-steps and --capacity-seconds must be positive, --turns >= 0")
    if os.geteuid() != 0:
        p.error("needs root: it builds network namespaces and loads XDP")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from lab.demo import _run

    res = _run(run_bench(args.setup_calls, steps, args.capacity_seconds, args.turns,
                         args.timeout, args.xdp_mode, log, args.shared, turn_steps, only,
                         args.profile, host_workers, audio_frames))
    text = render_markdown(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(results_json(res), indent=2))
    log(f"wrote {args.out}")
    if args.markdown:
        print(text)
    if args.json:
        print(json.dumps(results_json(res), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
