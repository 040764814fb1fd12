# SPDX-License-Identifier: Apache-2.0
"""Word error rate of the model's ASR engines on espeak-ng speech, side by side.

Forty sentences chosen to be in no grammar (none is one of pocketsphinx's
assistant phrases; no numbers, which Whisper writes as digits), each spoken
by espeak-ng in four voices (en-us and en-gb at 150 and 175 words a minute),
padded as the VAD passes a turn (200 ms before, 250 ms after), fed in 20 ms
chunks as the server does, then finished. Per engine: WER, real-time factor
(decode time / audio time) and the time from the end of the audio to the
final transcript (``finish()``; the server's speculative decode hides most
of it for Whisper, this is the worst case). Markdown with --markdown.

    python -m bench.asr_wer [--markdown] [--json] [--engines whisper,pocketsphinx]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transceiver.model.asr import PocketsphinxAsr, edit_distance
from transceiver.model.speech import SAMPLE_RATE, Voice, synthesize
from transceiver.model.whisper import WhisperAsr, normalize

SENTENCES = [
    "my cat likes to sleep on the sofa",
    "please book a table for two",
    "the train leaves at noon",
    "green apples are sour",
    "the children built a sandcastle near the water",
    "could you remind me to buy milk tomorrow",
    "the library closes early on sundays",
    "she planted tomatoes in the back garden",
    "we should leave before the traffic gets bad",
    "how far is the nearest pharmacy",
    "the coffee machine in the office is broken",
    "my brother is learning to play the violin",
    "it might rain later this afternoon",
    "can you send the report to my manager",
    "the museum has a new exhibition about dinosaurs",
    "i left my umbrella on the bus",
    "the soup needs a little more salt",
    "our flight was delayed by the storm",
    "please close the window in the bedroom",
    "he forgot his keys at the restaurant",
    "the dog barked at the mail carrier",
    "we watched a documentary about the ocean",
    "the bakery sells fresh bread every morning",
    "i would like a cup of green tea",
    "the meeting has been moved to friday",
    "she reads the newspaper after breakfast",
    "the garden is full of yellow flowers",
    "my phone battery is almost empty",
    "the river froze during the winter",
    "they are painting the kitchen walls blue",
    "where did you park the car",
    "the teacher explained the lesson again",
    "a strong wind blew the leaves away",
    "the bridge is closed for repairs",
    "i need new shoes for the wedding",
    "the movie starts in half an hour",
    "my grandmother makes the best apple pie",
    "please turn down the volume a little",
    "the hotel room had a view of the mountains",
    "we ran out of bread and butter",
]
VOICES = [Voice("en-us", 150), Voice("en-us", 175), Voice("en-gb", 150), Voice("en-gb", 175)]
LEAD = bytes(int(0.2 * SAMPLE_RATE) * 2)
TAIL = bytes(int(0.25 * SAMPLE_RATE) * 2)
# Spellings Whisper may choose that are the same word.
_SAME = {"neighbor": "neighbour", "colour": "color", "grey": "gray", "sundays": "sundays"}


def words(text: str) -> list[str]:
    return [_SAME.get(w, w) for w in normalize(text).split()]


def engines(names: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in names:
        if name == "whisper":
            out[name] = WhisperAsr(workers=1, threads_per_worker=2)
        elif name == "whisper-beam5":
            from transceiver.model.whisper import WhisperSettings
            out[name] = WhisperAsr(workers=1, threads_per_worker=2,
                                   settings=WhisperSettings(beam_size=5))
        elif name == "pocketsphinx":
            out[name] = PocketsphinxAsr("grammar")
        elif name == "pocketsphinx-free":
            out[name] = PocketsphinxAsr("free")
        else:
            raise SystemExit(f"unknown engine {name!r}")
        out[name].warm_up()  # type: ignore[attr-defined]
    return out


def run(names: list[str], sentences: int = len(SENTENCES)) -> list[dict[str, object]]:
    """Every engine on the first ``sentences`` sentences in every voice."""
    clips = [(s, v, LEAD + synthesize(s, v)[0] + TAIL) for s in SENTENCES[:sentences]
             for v in VOICES]
    rows = []
    for name, asr in engines(names).items():
        for s, v, pcm in clips:
            t0 = time.perf_counter()
            utt = asr.open()  # type: ignore[attr-defined]
            for i in range(0, len(pcm), 640):
                utt.feed(pcm[i:i + 640])
            t1 = time.perf_counter()
            result = utt.finish()
            t2 = time.perf_counter()
            ref, hyp = words(s), words(result.text)
            rows.append({"engine": name, "voice": f"{v.name}/{v.words_per_minute}", "ref": s,
                         "hyp": result.text, "errors": edit_distance(ref, hyp),
                         "words": len(ref), "decode_s": t2 - t0, "after_end_ms": (t2 - t1) * 1000,
                         "audio_s": len(pcm) / 2 / SAMPLE_RATE})
    return rows


def summary(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    out = []
    for name in dict.fromkeys(str(r["engine"]) for r in rows):
        sel = [r for r in rows if r["engine"] == name]
        errs = sum(int(r["errors"]) for r in sel)  # type: ignore[call-overload]
        n_words = sum(int(r["words"]) for r in sel)  # type: ignore[call-overload]
        after = sorted(float(r["after_end_ms"]) for r in sel)  # type: ignore[arg-type]
        out.append({
            "engine": name, "clips": len(sel), "wer": errs / n_words,
            "right": sum(int(r["errors"]) == 0 for r in sel),  # type: ignore[call-overload]
            "rtf": sum(float(r["decode_s"]) for r in sel)  # type: ignore[arg-type]
            / sum(float(r["audio_s"]) for r in sel),  # type: ignore[arg-type]
            "after_p50": statistics.median(after), "after_p90": after[int(0.9 * (len(after) - 1))],
        })
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    ap.add_argument("--json", action="store_true", help="print every decode as JSON")
    ap.add_argument("--engines", default="whisper,pocketsphinx",
                    help="comma-separated: whisper, whisper-beam5, pocketsphinx, pocketsphinx-free")
    ap.add_argument("--sentences", type=int, default=len(SENTENCES),
                    help=f"use the first N of the {len(SENTENCES)} sentences (the smoke run's"
                         " few); default all")
    args = ap.parse_args()
    if not 1 <= args.sentences <= len(SENTENCES):
        ap.error(f"--sentences must be within 1..{len(SENTENCES)}")
    rows = run(args.engines.split(","), args.sentences)
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary(rows)}, indent=2))
        return 0
    if args.markdown:
        print(f"{args.sentences} sentences in no grammar x {len(VOICES)} espeak-ng voices "
              f"({', '.join(f'{v.name} {v.words_per_minute} wpm' for v in VOICES)}), "
              "one CTranslate2 worker on 2 threads for Whisper.")
        print()
        print("| engine | clips | WER | clips all right | RTF | end of audio -> final, p50 | p90 |")
        print("|---|---|---|---|---|---|---|")
        for s in summary(rows):
            print(f"| {s['engine']} | {s['clips']} | {s['wer']:.1%} | {s['right']} | "
                  f"{s['rtf']:.3f} | {s['after_p50']:.0f} ms | {s['after_p90']:.0f} ms |")
        print()
        names = list(dict.fromkeys(str(r["engine"]) for r in rows))
        print("Clips any engine got wrong:")
        print()
        print("| voice | reference | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        by_clip: dict[tuple[str, str], dict[str, dict[str, object]]] = {}
        for r in rows:
            by_clip.setdefault((str(r["voice"]), str(r["ref"])), {})[str(r["engine"])] = r
        for (voice, ref), per in by_clip.items():
            if all(int(per[n]["errors"]) == 0 for n in names if n in per):  # type: ignore[call-overload]
                continue
            cells = [str(per[n]["hyp"]) if int(per[n]["errors"]) else "ok"  # type: ignore[call-overload]
                     for n in names if n in per]
            print(f"| {voice} | {ref} | " + " | ".join(cells) + " |")
        return 0
    for s in summary(rows):
        print(f"{s['engine']:18} clips={s['clips']} WER {s['wer']:6.1%} right {s['right']} "
              f"RTF {s['rtf']:.3f} after-end p50 {s['after_p50']:.0f} ms p90 {s['after_p90']:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
