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

Scoring is the standard one for Whisper: both sides go through Whisper's own
English text normalizer (the ``whisper-normalizer`` package: case,
punctuation, numbers, contractions, British spellings) before the word edit
distance. The plain-words WER (lower case, no punctuation only) is reported
beside it.

``--path served`` sends each clip through the model server itself (an
in-process ``voxrelay model serve`` over gRPC: Silero VAD turn detection,
pre-roll, the speculative end-of-turn decode), so the WER is what a caller
gets; its time column is the server's own ASR time after the turn closed.
``--path both`` reports the two side by side.

    python -m bench.asr_wer [--markdown] [--json] [--errors] [--engines whisper,pocketsphinx]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transceiver.model.asr import PocketsphinxAsr, edit_distance
from transceiver.model.speech import CHUNK_BYTES, SAMPLE_RATE, Voice, synthesize
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
SERVED_TAIL = bytes(int(0.6 * SAMPLE_RATE) * 2)
"""Silence after the clip on the served path: the caller has stopped talking,
so the VAD closes the turn on its own silence timer (250 ms) as in a call."""


@functools.lru_cache(maxsize=1)
def _whisper_normalizer() -> object:
    try:
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError as exc:
        raise SystemExit("bench/asr_wer.py scores with Whisper's English normalizer: "
                         "pip install whisper-normalizer (make setup installs it)") from exc
    return EnglishTextNormalizer()


def words(text: str) -> list[str]:
    """Whisper's English normalizer, as Whisper's own WER figures are scored."""
    return str(_whisper_normalizer()(text)).split()  # type: ignore[operator]


def plain_words(text: str) -> list[str]:
    return normalize(text).split()


def engines(names: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in names:
        if name == "whisper":
            out[name] = WhisperAsr(workers=1, threads_per_worker=2)
        elif name == "whisper-base":
            out[name] = WhisperAsr("base", workers=1, threads_per_worker=2)
        elif name == "whisper-greedy":
            from transceiver.model.whisper import WhisperSettings
            out[name] = WhisperAsr(workers=1, threads_per_worker=2,
                                   settings=WhisperSettings(beam_size=1))
        elif name == "whisper-30s":
            from transceiver.model.whisper import WhisperSettings
            out[name] = WhisperAsr(workers=1, threads_per_worker=2,
                                   settings=WhisperSettings(min_window_s=30.0))
        elif name == "faster-whisper":
            out[name] = FasterWhisperReference()
        elif name == "pocketsphinx":
            out[name] = PocketsphinxAsr("grammar")
        elif name == "pocketsphinx-free":
            out[name] = PocketsphinxAsr("free")
        else:
            raise SystemExit(f"unknown engine {name!r}")
        out[name].warm_up()  # type: ignore[attr-defined]
    return out


class FasterWhisperReference:
    """The same tiny.en weights through faster-whisper's own transcribe (30 s
    window, beam 5, its defaults): the reference decode beside ours, to tell
    our decoder's errors from the model's. Not a served engine."""

    name = "faster-whisper"

    def __init__(self) -> None:
        from faster_whisper import WhisperModel

        from transceiver.model.whisper import default_model_dir
        self._model = WhisperModel(str(default_model_dir()), device="cpu",
                                   compute_type="int8", cpu_threads=2)

    def warm_up(self) -> None:
        self.transcribe(bytes(SAMPLE_RATE * 2))

    def transcribe(self, pcm: bytes) -> str:
        from transceiver.model.vad import pcm_to_float
        segments, _ = self._model.transcribe(pcm_to_float(pcm), language="en", beam_size=5,
                                             vad_filter=False)
        return " ".join(seg.text.strip() for seg in segments)

    def open(self) -> _Buffered:
        return _Buffered(self)


class _Buffered:
    def __init__(self, ref: FasterWhisperReference) -> None:
        self._ref, self._pcm = ref, bytearray()

    def feed(self, pcm: bytes) -> None:
        self._pcm += pcm

    def finish(self) -> object:
        from transceiver.model.asr import AsrResult
        return AsrResult(self._ref.transcribe(bytes(self._pcm)), "faster-whisper")


def _row(name: str, path: str, s: str, v: Voice, hyp: str, decode_s: float,
         after_ms: float, audio_s: float) -> dict[str, object]:
    ref = words(s)
    return {"engine": name, "path": path, "voice": f"{v.name}/{v.words_per_minute}", "ref": s,
            "hyp": hyp, "norm_hyp": " ".join(words(hyp)),
            "errors": edit_distance(ref, words(hyp)), "words": len(ref),
            "plain_errors": edit_distance(plain_words(s), plain_words(hyp)),
            "decode_s": decode_s, "after_end_ms": after_ms, "audio_s": audio_s}


def run_direct(name: str, asr: object, clips: list[tuple[str, Voice, bytes]]
               ) -> list[dict[str, object]]:
    rows = []
    for s, v, speech in clips:
        pcm = LEAD + speech + TAIL
        t0 = time.perf_counter()
        utt = asr.open()  # type: ignore[attr-defined]
        for i in range(0, len(pcm), CHUNK_BYTES):
            utt.feed(pcm[i:i + CHUNK_BYTES])
        t1 = time.perf_counter()
        result = utt.finish()
        t2 = time.perf_counter()
        rows.append(_row(name, "direct", s, v, result.text, t2 - t0, (t2 - t1) * 1000,
                         len(pcm) / 2 / SAMPLE_RATE))
    return rows


async def _served(name: str, asr: object, clips: list[tuple[str, Voice, bytes]]
                  ) -> list[dict[str, object]]:
    import grpc

    from transceiver.model import voice_pb2 as pb
    from transceiver.model import voice_pb2_grpc as pb_grpc
    from transceiver.model.server import ModelOptions, serve_model
    from transceiver.model.speech import chunks

    # One decode worker as on the direct path; replies are sent at once
    # (audio_lead_ms) so a clip's call ends as soon as its reply is out.
    options = ModelOptions(asr=asr, audio_lead_ms=60_000, decode_workers=1)  # type: ignore[arg-type]
    rows = []
    async with serve_model("127.0.0.1:0", options) as addr, \
            grpc.aio.insecure_channel(addr) as channel:
        stub = pb_grpc.VoiceModelStub(channel)  # type: ignore[no-untyped-call]
        for n, (s, v, speech) in enumerate(clips):
            pcm = LEAD + speech + SERVED_TAIL
            msgs = [pb.ClientMessage(control=pb.Control(start=pb.Start(
                call_id=f"asr-wer-{n}", language="en-US")))]
            msgs += [pb.ClientMessage(audio=pb.AudioChunk(pcm=c, sample_rate=SAMPLE_RATE, seq=i))
                     for i, c in enumerate(chunks(pcm))]
            msgs.append(pb.ClientMessage(control=pb.Control(end_of_input=True)))
            finals: list[str] = []
            asr_ms = 0.0
            t0 = time.perf_counter()

            async def requests(msgs: list[pb.ClientMessage] = msgs) -> object:
                for m in msgs:
                    yield m

            async with asyncio.timeout(60):
                async for msg in stub.Converse(requests()):
                    kind = msg.WhichOneof("kind")
                    if kind == "transcript" and msg.transcript.final and msg.transcript.text:
                        finals.append(msg.transcript.text)
                    elif kind == "timings":
                        asr_ms = max(asr_ms, msg.timings.asr_ms)
                    elif kind == "error":
                        raise SystemExit(f"model server error on {s!r}: {msg.error.message}")
            rows.append(_row(name, "served", s, v, " ".join(finals), time.perf_counter() - t0,
                             asr_ms, len(pcm) / 2 / SAMPLE_RATE))
    return rows


def run(names: list[str], sentences: int = len(SENTENCES), path: str = "direct"
        ) -> list[dict[str, object]]:
    """Every engine on the first ``sentences`` sentences in every voice."""
    clips = [(s, v, synthesize(s, v)[0]) for s in SENTENCES[:sentences] for v in VOICES]
    rows: list[dict[str, object]] = []
    for name, asr in engines(names).items():
        if path in ("direct", "both"):
            rows += run_direct(name, asr, clips)
        if path in ("served", "both"):
            if not hasattr(asr, "name") or isinstance(asr, FasterWhisperReference):
                continue  # the reference decode is not a served engine
            rows += asyncio.run(_served(name, asr, clips))
    return rows


def summary(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    out = []
    for name, path in dict.fromkeys((str(r["engine"]), str(r["path"])) for r in rows):
        sel = [r for r in rows if r["engine"] == name and r["path"] == path]
        errs = sum(int(r["errors"]) for r in sel)  # type: ignore[call-overload]
        plain = sum(int(r["plain_errors"]) for r in sel)  # type: ignore[call-overload]
        n_words = sum(int(r["words"]) for r in sel)  # type: ignore[call-overload]
        after = sorted(float(r["after_end_ms"]) for r in sel)  # type: ignore[arg-type]
        out.append({
            "engine": name, "path": path, "clips": len(sel), "wer": errs / n_words,
            "plain_wer": plain / n_words,
            "right": sum(int(r["errors"]) == 0 for r in sel),  # type: ignore[call-overload]
            # The median clip's: robust to a clip that waited for a CPU on a
            # shared host, which a ratio of sums is not.
            "rtf": statistics.median(float(str(r["decode_s"])) / float(str(r["audio_s"]))
                                     for r in sel),
            "after_p50": statistics.median(after), "after_p90": after[int(0.9 * (len(after) - 1))],
        })
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    ap.add_argument("--json", action="store_true", help="print every decode as JSON")
    ap.add_argument("--engines", default="whisper,pocketsphinx",
                    help="comma-separated: whisper (tiny.en, the default), whisper-base, "
                         "whisper-greedy (tiny.en, beam 1), whisper-30s (tiny.en, every turn padded to 30 s), "
                         "faster-whisper (tiny.en through "
                         "faster-whisper's transcribe: the reference decode), pocketsphinx, "
                         "pocketsphinx-free")
    ap.add_argument("--path", choices=("direct", "served", "both"), default="direct",
                    help="direct: the engine's utterance API; served: through an in-process "
                         "model server over gRPC (VAD, pre-roll, speculative decode), what a "
                         "caller gets; both: side by side")
    ap.add_argument("--rows", nargs="+", type=Path, metavar="JSON",
                    help="score and print the rows of earlier --json runs (engines run "
                         "separately, side by side) instead of decoding")
    ap.add_argument("--errors", action="store_true",
                    help="print every clip with an error: reference, hypothesis, normalized")
    ap.add_argument("--sentences", type=int, default=len(SENTENCES),
                    help=f"use the first N of the {len(SENTENCES)} sentences (the smoke run's"
                         " few); default all")
    args = ap.parse_args()
    if not 1 <= args.sentences <= len(SENTENCES):
        ap.error(f"--sentences must be within 1..{len(SENTENCES)}")
    if args.rows:
        rows = [_row(str(r["engine"]), str(r.get("path", "direct")), str(r["ref"]),
                     Voice(str(r["voice"]).split("/")[0], int(str(r["voice"]).split("/")[1])),
                     str(r["hyp"]), float(r["decode_s"]), float(r["after_end_ms"]),
                     float(r["audio_s"]))
                for f in args.rows for r in json.loads(f.read_text())["rows"]]
    else:
        rows = run(args.engines.split(","), args.sentences, args.path)
    if args.errors:
        for r in rows:
            if int(r["errors"]):  # type: ignore[call-overload]
                print(f"{r['engine']:15} {r['path']:6} {r['voice']:10} {r['errors']} | "
                      f"{r['ref']} | {r['hyp']} | {r['norm_hyp']}")
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary(rows)}, indent=2))
        return 0
    if args.markdown:
        print(f"{args.sentences} sentences in no grammar x {len(VOICES)} espeak-ng voices "
              f"({', '.join(f'{v.name} {v.words_per_minute} wpm' for v in VOICES)}), "
              "one CTranslate2 worker on 2 threads for Whisper.")
        print()
        print("WER: Whisper's English normalizer on both sides; plain: lower case, no "
              "punctuation. direct: the ASR's utterance API, time from the end of the audio "
              "to finish(); served: through the model server over gRPC (VAD, pre-roll, "
              "speculative decode), time is the server's ASR time after the turn closed.")
        print()
        # "| engine | clips | WER |" opens the table: the bench smoke looks for it.
        print("| engine | clips | WER | WER plain | path | clips all right | RTF p50 "
              "| time after end, p50 | p90 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for s in summary(rows):
            # A served clip's wall time includes the reply; no RTF for it.
            rtf = f"{s['rtf']:.3f}" if s["path"] == "direct" else "-"
            print(f"| {s['engine']} | {s['clips']} | {s['wer']:.1%} | "
                  f"{s['plain_wer']:.1%} | {s['path']} | {s['right']} | "
                  f"{rtf} | {s['after_p50']:.0f} ms | {s['after_p90']:.0f} ms |")
        print()
        rows = [r for r in rows if r["path"] == rows[0]["path"]]
        names = list(dict.fromkeys(str(r["engine"]) for r in rows))
        print(f"Clips any engine got wrong ({rows[0]['path']} path, normalized):")
        print()
        print("| voice | reference | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        by_clip: dict[tuple[str, str], dict[str, dict[str, object]]] = {}
        for r in rows:
            by_clip.setdefault((str(r["voice"]), str(r["ref"])), {})[str(r["engine"])] = r
        for (voice, ref), per in by_clip.items():
            if all(int(per[n]["errors"]) == 0 for n in names if n in per):  # type: ignore[call-overload]
                continue
            cells = [str(per[n]["norm_hyp"]) if int(per[n]["errors"]) else "ok"  # type: ignore[call-overload]
                     for n in names if n in per]
            print(f"| {voice} | {ref} | " + " | ".join(cells) + " |")
        return 0
    for s in summary(rows):
        print(f"{s['engine']:15} {s['path']:6} clips={s['clips']} WER {s['wer']:6.1%} "
              f"plain {s['plain_wer']:6.1%} right {s['right']} "
              f"RTF {s['rtf']:.3f} after-end p50 {s['after_p50']:.0f} ms p90 {s['after_p90']:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
