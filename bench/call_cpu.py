# SPDX-License-Identifier: Apache-2.0
"""CPU per 20 ms frame of one call's media work, the stock aiortc path beside voxrelay's.

``python -m bench.call_cpu [--frames N] [--markdown]`` times, on this thread's
CPU clock (``time.thread_time``, so that other work on the machine does not
count), each piece of per-frame work a call does, in one run:

* outbound, per 20 ms frame: what aiortc does with a frame a track hands it
  (voxrelay before #14 and any stock aiortc peer: 48 kHz stereo frame, its
  audio-level measure, its Opus encoder with its resampler) against
  ``media.OpusPackets`` (libopus at 16 kHz mono; silence a cached packet),
  for silence and for speech;
* inbound barge-in VAD, per 20 ms chunk: Silero on every chunk (before #14)
  against ``Turns.heard`` while no reply plays (scored only over a reply).

Not measured here: aiortc's thread-pool hop per encoded frame, which the
packet path also removes (bench/voice.py's profile shows it), and everything
both paths share (SRTP, RTP, the decoder). Results: bench/results/call_cpu.md.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "call_cpu.md"


def per_frame_us(work: Callable[[int], object], frames: int, rounds: int = 3) -> float:
    """Median over ``rounds`` of the thread CPU per call of ``work(i)``, in µs."""
    samples = []
    for _ in range(rounds):
        t0 = time.thread_time()
        for i in range(frames):
            work(i)
        samples.append((time.thread_time() - t0) / frames * 1e6)
    return sorted(samples)[len(samples) // 2]


def speech_chunks(count: int) -> list[bytes]:
    """``count`` 20 ms chunks of a voiced-like signal (two tones, amplitude 6000)."""
    t = np.arange(320 * count) / 16000
    x = 4000 * np.sin(2 * np.pi * 220 * t) + 2000 * np.sin(2 * np.pi * 1330 * t)
    pcm = x.astype("<i2").tobytes()
    return [pcm[i * 640:(i + 1) * 640] for i in range(count)]


def measure(frames: int) -> list[tuple[str, float, float]]:
    """(work, before µs, after µs) per 20 ms frame."""
    from aiortc import rtp
    from aiortc.codecs.opus import OpusEncoder

    from transceiver.media import SILENCE, Interpolator, OpusPackets, ReplyTrack, opus_frame
    from transceiver.model.vad import SileroVad
    from transceiver.turns import Turns

    speech = speech_chunks(50)
    rows = []
    for label, chunk_of in (("outbound silence", lambda i: SILENCE),
                            ("outbound speech", lambda i: speech[i % 50])):
        enc, up = OpusEncoder(), Interpolator(3)

        def stock(i: int, enc: OpusEncoder = enc, up: Interpolator = up,
                  chunk_of: Callable[[int], bytes] = chunk_of) -> object:
            frame = opus_frame(chunk_of(i), i * 960, up)
            rtp.compute_audio_level_dbov(frame)
            return enc.encode(frame)

        opus = OpusPackets()
        silent = label.endswith("silence")

        def ours(i: int, opus: OpusPackets = opus, chunk_of: Callable[[int], bytes] = chunk_of,
                 silent: bool = silent) -> object:
            return opus.packet(None if silent else chunk_of(i), i * 320)

        rows.append((label + " (encode)", per_frame_us(stock, frames), per_frame_us(ours, frames)))
    vad = SileroVad()
    track = ReplyTrack()
    turns = Turns(track, lambda e: None, lambda: None, vad_mode=2, barge_in_frames=8)
    rows.append(("inbound barge-in VAD, no reply playing",
                 per_frame_us(lambda i: vad.push(speech[i % 50]), frames),
                 per_frame_us(lambda i: turns.heard(speech[i % 50]), frames)))
    track.stop()
    return rows


def render_markdown(rows: list[tuple[str, float, float]], frames: int) -> str:
    lines = ["### CPU per 20 ms frame, stock aiortc path beside voxrelay's (bench/call_cpu.py)", "",
             (f"Thread CPU time per frame (median of 3 rounds of {frames} frames, "
              "`time.thread_time`, so other work on the machine does not count)."), "",
             "| work per 20 ms frame | stock aiortc path (µs) | voxrelay (µs) | ratio |",
             "|---|---|---|---|"]
    for label, before, after in rows:
        ratio = f"{before / after:.0f}x" if after > 0 else "n/a"
        lines.append(f"| {label} | {before:.1f} | {after:.1f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.call_cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=500, help="frames per round (default 500)")
    p.add_argument("--markdown", action="store_true", help="print the markdown on stdout")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if not 10 <= args.frames <= 100_000:
        p.error("--frames must be 10..100000")
    text = render_markdown(measure(args.frames), args.frames)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if args.markdown:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
