# SPDX-License-Identifier: Apache-2.0
"""Word error rate of the default model's ASR on espeak-ng speech, per mode.

Speaks each sentence with espeak-ng (the same helper the tests and demo use),
pads it as the VAD would (200 ms before, 500 ms after), decodes it fed in 20 ms
chunks as the server does, and prints WER for the assistant phrases (in the
grammar) and for other sentences, per ASR mode. Markdown with --markdown.

    python bench/asr_wer.py [--markdown] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transceiver.model.asr import ASR_MODES, PocketsphinxAsr, edit_distance, transcribe
from transceiver.model.speech import SAMPLE_RATE, synthesize

IN_GRAMMAR = [
    "turn on the lights in the kitchen",
    "what is the weather today",
    "hello how are you",
    "set a timer for ten minutes",
    "play some music",
    "what time is it",
]
OTHER = [
    "my cat likes to sleep on the sofa",
    "please book a table for two",
    "the train leaves at noon",
    "green apples are sour",
]


def word_errors(ref: str, hyp: str) -> int:
    return edit_distance(ref.split(), hyp.split())


def run() -> list[dict[str, object]]:
    audio = {s: bytes(6400) + synthesize(s)[0] + bytes(16000) for s in IN_GRAMMAR + OTHER}
    rows = []
    for mode in ASR_MODES:
        asr = PocketsphinxAsr(mode)
        asr.warm_up()
        for s, pcm in audio.items():
            t = time.perf_counter()
            result = transcribe(asr, pcm)
            rows.append({"mode": mode, "set": "grammar" if s in IN_GRAMMAR else "other",
                         "ref": s, "hyp": result.text, "source": result.source,
                         "errors": word_errors(s, result.text), "words": len(s.split()),
                         "decode_s": time.perf_counter() - t,
                         "audio_s": len(pcm) / 2 / SAMPLE_RATE})
    return rows


def summary(rows: list[dict[str, object]]) -> list[tuple[str, str, float, int, float]]:
    out = []
    for mode in ASR_MODES:
        for subset in ("grammar", "other", "all"):
            sel = [r for r in rows if r["mode"] == mode and subset in ("all", r["set"])]
            errs = sum(int(r["errors"]) for r in sel)  # type: ignore[call-overload]
            words = sum(int(r["words"]) for r in sel)  # type: ignore[call-overload]
            rtf = sum(float(r["decode_s"]) for r in sel) / sum(float(r["audio_s"]) for r in sel)  # type: ignore[arg-type]
            out.append((mode, subset, errs / words, len(sel), rtf))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    ap.add_argument("--json", action="store_true", help="print every decode as JSON")
    args = ap.parse_args()
    rows = run()
    if args.json:
        print(json.dumps({"rows": rows}, indent=2))
        return 0
    if args.markdown:
        print("| ASR mode | sentences | n | WER | decode time / audio time |")
        print("|---|---|---|---|---|")
        for mode, subset, wer, n, rtf in summary(rows):
            print(f"| {mode} | {subset} | {n} | {wer:.0%} | {rtf:.2f} |")
        print()
        print("| mode | reference | recognised | source |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['mode']} | {r['ref']} | {r['hyp']} | {r['source']} |")
        return 0
    for mode, subset, wer, n, rtf in summary(rows):
        print(f"{mode:8} {subset:8} n={n:2}  WER {wer:6.1%}  RTF {rtf:.2f}")
    for r in rows:
        print(f"  {r['mode']:8} {r['source']:8} {r['ref']!r:40} -> {r['hyp']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
