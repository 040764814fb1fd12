# SPDX-License-Identifier: Apache-2.0
"""``voxrelay demo``: one voice call through the XDP relay, across network namespaces.

The README's main command. It builds the lab (``lab.stack``), places a call
from an aiortc client in the client namespace, and prints what the model
heard, what it answered and how long each leg took. Everything it creates is
removed on exit, on error and on Ctrl-C.

``--client chromium`` places the call from headless Chromium instead
(``lab.browser``), and ``--transport tcp`` drops UDP in the client namespace
so that the call goes over ICE-TCP to the relay's TCP front on 443 (#13):
aioice has no ICE-TCP, a browser does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import signal
import subprocess
import sys
import tempfile
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from lab.browser import BrowserCallResult
    from lab.stack import Stack

DEFAULT_SENTENCE = "what is the weather like today"
DEFAULT_OUT = Path("/var/lib/voxrelay/demo/reply.wav")
"""Beside the lab's state (``voxrelay lab``), never in the checkout: ``make demo`` runs from it."""


class DemoError(RuntimeError):
    """A user-facing failure: printed without a traceback."""


@dataclass
class Figures:
    """The step-9 figures of one call, in milliseconds (None: not measured)."""

    client_relay_rtt_ms: float | None = None
    """ICMP echo, client namespace -> relay public address (median of several)."""
    relay_transceiver_rtt_ms: float | None = None
    """ICMP echo, relay namespace -> transceiver private address (median)."""
    model_processing_ms: float | None = None
    """ASR + reply + TTS as the model reports it for the turn."""
    speech_end_to_first_reply_audio_ms: float | None = None
    """Client clock: last voiced 20 ms frame sent -> first non-silent reply frame received."""


@dataclass
class CallResult:
    transcript: str = ""
    reply: str = ""
    figures: Figures = field(default_factory=Figures)
    reply_samples: int = 0
    reply_sample_rate: int = 16000
    reply_rms: float = 0.0
    """RMS of the reply audio in int16 units; near 0 is silence."""
    reply_wav: str | None = None
    events: list[dict[str, object]] = field(default_factory=list)
    relay_counters: dict[str, int] = field(default_factory=dict)
    """What relay 1's XDP program counted during the call (non-zero verdicts only)."""
    relay_stack_udp: int = 0
    """UDP datagrams the relay's own kernel stack received during the call: 0 when XDP carried all."""
    turns: list[dict[str, object]] = field(default_factory=list)
    """Per turn: transcript, whether it was right, and the latency breakdown (``breakdown``)."""
    p50_ms: float | None = None
    """Median over the turns of end of speech -> first reply audio (client clock)."""


BREAKDOWN = (("vad_ms", "VAD"), ("asr_ms", "ASR"), ("reply_ms", "reply"),
             ("tts_ms", "TTS first chunk"), ("transport_ms", "transport"))


def breakdown(total_ms: float | None, timings: dict[str, object]) -> dict[str, float | None]:
    """Split one turn's end of speech -> first reply audio into its legs.

    VAD: the end-of-turn silence the model waited; ASR, reply, TTS: the
    model's own figures (ASR after the VAD closed the turn, so a speculative
    decode shows as ~0); transport: the rest, i.e. the audio's way to the
    model and back (Opus, jitter buffers, relay, gRPC) plus the VAD's
    hang-over past the last audible frame.
    """
    legs: dict[str, float | None] = {}
    for key in ("vad_ms", "asr_ms", "reply_ms", "tts_ms"):
        v = timings.get(key)
        legs[key] = float(v) if isinstance(v, (int, float)) else None
    known = [v for v in legs.values() if v is not None]
    legs["transport_ms"] = (total_ms - sum(known)) if total_ms is not None else None
    legs["total_ms"] = total_ms
    return legs


def speak(text: str, path: Path) -> Path:
    """Write ``text`` spoken by espeak-ng to ``path`` (a WAV file)."""
    if not text.strip():
        raise DemoError("the sentence to speak is empty")
    try:
        subprocess.run(
            ["espeak-ng", "-s", "150", "-w", str(path), text],
            check=True, capture_output=True, timeout=30,
        )
    except FileNotFoundError:
        raise DemoError("espeak-ng is not installed (run scripts/setup.sh)") from None
    except subprocess.CalledProcessError as exc:
        raise DemoError(f"espeak-ng failed: {exc.stderr.decode(errors='replace').strip()}") from None
    return path


def check_wav(path: Path) -> None:
    """Refuse a file the client cannot play, with a reason (mono/stereo 16-bit PCM WAV)."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise DemoError(f"{path}: {8 * w.getsampwidth()}-bit samples; need 16-bit PCM")
            if w.getnchannels() not in (1, 2):
                raise DemoError(f"{path}: {w.getnchannels()} channels; need mono or stereo")
            if w.getnframes() == 0:
                raise DemoError(f"{path}: no audio frames")
    except FileNotFoundError:
        raise DemoError(f"{path}: no such file") from None
    except (wave.Error, EOFError) as exc:
        raise DemoError(f"{path}: not a PCM WAV file ({exc})") from None


def write_wav(path: Path, pcm: bytes, sample_rate: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return path


def rms_int16(pcm: bytes) -> float:
    from lab.call import chunk_rms

    return chunk_rms(pcm)


def _fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def print_result(result: CallResult) -> None:
    f = result.figures
    click.echo("")
    click.echo(f"  heard:  {result.transcript or '(nothing)'}")
    click.echo(f"  reply:  {result.reply or '(nothing)'}")
    click.echo("")
    click.echo(f"  client <-> relay RTT             {_fmt_ms(f.client_relay_rtt_ms)}")
    click.echo(f"  relay <-> transceiver RTT        {_fmt_ms(f.relay_transceiver_rtt_ms)}")
    click.echo(f"  model processing                 {_fmt_ms(f.model_processing_ms)}")
    click.echo(f"  end of speech -> first reply      {_fmt_ms(f.speech_end_to_first_reply_audio_ms)}")
    if result.relay_counters:
        c = result.relay_counters
        forwarded = sum(v for k, v in c.items() if k.startswith("fwd_"))
        dropped = sum(v for k, v in c.items() if k.startswith("drop_"))
        to_txr = sum(c.get(k, 0) for k in ("fwd_to_transceiver", "fwd_new_flow",
                                           "fwd_to_transceiver6", "fwd_new_flow6"))
        to_client = sum(c.get(k, 0) for k in ("fwd_to_client", "fwd_to_client_learnt_nh",
                                              "fwd_to_client6", "fwd_to_client6_learnt_nh"))
        over6 = sum(v for k, v in c.items() if k.startswith("fwd_") and "6" in k)
        click.echo(
            f"\n  relay (XDP): {forwarded} packets forwarded "
            f"({to_txr} to the transceiver, {to_client} to the client"
            + (f"; {over6} of them an IPv6 client's" if over6 else "")
            + f"), {dropped} dropped; relay's own UDP stack saw {result.relay_stack_udp}"
        )
    if len(result.turns) > 1:
        click.echo("")
        head = "  turn  right  " + "".join(f"{label:>17}" for _, label in BREAKDOWN) + "   total"
        click.echo(head)
        for t in result.turns:
            b = t["breakdown"]
            assert isinstance(b, dict)
            cells = "".join(f"{_fmt_ms(b.get(k)):>17}" for k, _ in BREAKDOWN)
            click.echo(f"  {t['turn']:>4}  {'yes' if t['right'] else 'NO ':>5}  {cells}   "
                       f"{_fmt_ms(b.get('total_ms'))}")
        right = sum(bool(t["right"]) for t in result.turns)
        click.echo(f"\n  p50 end of speech -> first reply audio over {len(result.turns)} turns: "
                   f"{_fmt_ms(result.p50_ms)}; transcripts right: {right}/{len(result.turns)}")
    if result.reply_wav:
        secs = result.reply_samples / result.reply_sample_rate if result.reply_sample_rate else 0
        click.echo(f"\n  reply audio: {result.reply_wav} ({secs:.1f} s)")


async def run_demo(wav: Path, out: Path, timeout: float, xdp_mode: str, turns: int = 1,
                   sentence: str = "", ipv6: bool = False) -> CallResult:
    """Build the lab, place one call from the client namespace, measure it, tear down.

    ``ipv6``: the call's media over an IPv6 client address to the relay's
    IPv6 VIP (the client namespace drops its own IPv4 UDP; signaling stays
    on IPv4), translated by the relay to the IPv4 transceiver and back."""
    from lab.call import TimedCallClient, icmp_rtt_in, speak_turn
    from lab.client import read_wav_pcm
    from lab.stack import PrintProgress, StackOptions, start_stack
    from lab.topology import Lab

    pcm = read_wav_pcm(wav)
    progress = PrintProgress()
    async with start_stack(StackOptions(xdp_mode=xdp_mode, relays=1, ipv6=ipv6),
                           progress) as stack:
        relay = stack.relays[0]
        topo = stack.topology
        assert isinstance(topo, Lab)
        if ipv6:
            with progress.step("IPv6 only: dropping the client's IPv4 UDP"):
                await asyncio.to_thread(topo.drop_ipv4_udp, stack.client_ns)

        async def call() -> tuple[object, bytes, list[dict[str, object]]]:
            async with TimedCallClient(stack.signaling_url, stack.api_key, timeout=timeout) as client:
                await client.wait_event("model", state="connected")
                said = [await speak_turn(client, pcm, timeout=timeout) for _ in range(turns)]
                return said, bytes(client.reply), list(client.events)

        with progress.step("measuring client <-> relay and relay <-> transceiver RTT"):
            client_rtt = await icmp_rtt_in(stack.client_ns, relay.public_address)  # (ICMPv4)
            relay_rtt = await icmp_rtt_in(relay.netns, stack.transceiver_address)

        def relay_udp_in() -> int:
            """The relay's own stack's Udp InDatagrams: XDP-forwarded packets never count here."""
            return topo.snmp(relay.netns)["Udp"]["InDatagrams"]

        before = stack.relay_stats(0)
        udp_before = relay_udp_in()
        with progress.step("calling through the relay and speaking"):
            said, reply_pcm, events = await asyncio.wait_for(stack.client_call(call),
                                                             timeout * turns + 10)
        after = stack.relay_stats(0)
        stack_udp = relay_udp_in() - udp_before
        counters = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}
    import statistics

    from lab.call import Turn
    from transceiver.model.whisper import normalize

    assert isinstance(said, list)
    turn = said[0]
    assert isinstance(turn, Turn)
    per_turn: list[dict[str, object]] = []
    for i, t in enumerate(said, 1):
        total = t.speech_end_to_first_reply_audio_ms
        per_turn.append({"turn": i, "transcript": t.transcript,
                         "right": bool(sentence) and normalize(t.transcript) == normalize(sentence),
                         "breakdown": breakdown(total, t.timings)})
    totals = [t.speech_end_to_first_reply_audio_ms for t in said
              if t.speech_end_to_first_reply_audio_ms is not None]
    processing = turn.timings.get("processing_ms")
    result = CallResult(
        transcript=turn.transcript,
        reply=turn.reply,
        figures=Figures(
            client_relay_rtt_ms=client_rtt,
            relay_transceiver_rtt_ms=relay_rtt,
            model_processing_ms=float(processing) if processing is not None else None,
            speech_end_to_first_reply_audio_ms=turn.speech_end_to_first_reply_audio_ms,
        ),
        reply_samples=len(reply_pcm) // 2,
        reply_sample_rate=16000,
        reply_rms=rms_int16(reply_pcm),
        events=events,
        relay_counters=counters,
        relay_stack_udp=stack_udp,
        turns=per_turn,
        p50_ms=statistics.median(totals) if totals else None,
    )
    if reply_pcm:
        result.reply_wav = str(write_wav(out, reply_pcm, 16000))
    return result


@dataclass
class BrowserDemoResult:
    """One call placed by headless Chromium (``--client chromium``)."""

    transport: str
    """"udp" or "tcp" (UDP dropped in the client namespace, ICE-TCP to the relay's 443)."""
    transcript: str = ""
    """What the model heard (its last final transcript event)."""
    reply: str = ""
    """What it answered (its last reply event)."""
    pair: dict[str, object] = field(default_factory=dict)
    """getStats()' selected candidate pair: local and remote protocol, address, port, tcpType."""
    reply_packets: int = 0
    """RTP packets of reply audio the browser received."""
    reply_audio_energy: float = 0.0
    """getStats()' totalAudioEnergy of the reply: > 0 when it was not silence."""
    udp_dropped: int = 0
    """UDP packets nftables dropped in the client namespace (--transport tcp)."""
    tcpfront: dict[str, int] = field(default_factory=dict)
    """What the ICE-TCP front counted during the call (non-zero counters only)."""
    relay_counters: dict[str, int] = field(default_factory=dict)
    """What relay 1's XDP program counted during the call (non-zero verdicts only)."""
    hangup_status: int | None = None
    """Status of the page's DELETE of the call (204 when it ended cleanly)."""


def _last_text(events: list[dict[str, object]], kind: str, **match: object) -> str:
    for event in reversed(events):
        if event.get("type") == kind and all(event.get(k) == v for k, v in match.items()):
            return str(event.get("text", ""))
    return ""


def _answered(result: BrowserCallResult) -> bool:
    """The model's reply came back: its reply event, and reply audio that is not silence."""
    return (bool(result.events_of("reply")) and result.inbound.packets > 0
            and result.inbound.total_audio_energy > 0)


async def browser_demo_call(stack: Stack, wav: Path, timeout: float, transport: str, *,
                            udp_dropped: Callable[[], int] | None = None,
                            ipv6: bool = False) -> BrowserDemoResult:
    """One call from headless Chromium in ``stack``'s client namespace, checked
    as the demo checks it (tests/netns/test_ice_tcp.py runs this on its lab).

    ``transport="tcp"``: the stack runs the ICE-TCP front and the caller has
    dropped UDP in the client namespace (``udp_dropped`` counts it); the
    selected pair must be TCP to the relay's 443. Either way the call must
    connect and the model must answer, or this raises ``DemoError``. ``ipv6``:
    the selected pair must be to the relay's IPv6 VIP.
    """
    from lab.browser import browser_call
    from lab.stack import TCP_FRONT_PORT

    tcp = transport == "tcp"
    secret = await stack.client_secret()
    xdp_before = stack.relay_stats(0)
    front_before = stack.tcp_front_stats() if tcp else {}
    dropped_before = udp_dropped() if udp_dropped else 0
    result = await browser_call(
        stack.client_ns, stack.signaling_url + "/", audio_wav=wav, bearer=secret["value"],
        hold_seconds=timeout, until=_answered, connect_timeout=min(30.0, timeout),
        timeout=timeout + 30)
    xdp_after = stack.relay_stats(0)
    front_after = stack.tcp_front_stats() if tcp else {}
    if not result.connected:
        raise DemoError(f"the browser's call did not connect:\n{result.describe()}\n"
                        f"{stack.logs()}")
    if not _answered(result):
        raise DemoError(f"the model's reply did not arrive:\n{result.describe()}")
    pair = result.pair
    if pair is None or pair.local is None or pair.remote is None:
        raise DemoError(f"getStats() showed no selected candidate pair:\n{result.describe()}")
    if tcp and (pair.remote.protocol != "tcp" or pair.remote.port != TCP_FRONT_PORT):
        raise DemoError(f"the selected pair is not ICE-TCP to the relay's {TCP_FRONT_PORT}: "
                        f"{pair}")
    vip6 = stack.relays[0].public_address6
    if ipv6 and (not vip6 or pair.remote.address.strip("[]") != vip6):
        raise DemoError(f"the selected pair is not to the relay's IPv6 VIP {vip6 or '(none)'}: "
                        f"{pair}")
    return BrowserDemoResult(
        transport=transport,
        transcript=_last_text(result.events, "transcript", final=True),
        reply=_last_text(result.events, "reply"),
        pair={"local": asdict(pair.local), "remote": asdict(pair.remote)},
        reply_packets=result.inbound.packets,
        reply_audio_energy=result.inbound.total_audio_energy,
        udp_dropped=(udp_dropped() - dropped_before) if udp_dropped else 0,
        tcpfront={k: front_after[k] - front_before.get(k, 0) for k in front_after
                  if front_after[k] != front_before.get(k, 0)},
        relay_counters={k: xdp_after[k] - xdp_before.get(k, 0) for k in xdp_after
                        if xdp_after[k] != xdp_before.get(k, 0)},
        hangup_status=result.hangup_status,
    )


async def run_browser_demo(wav: Path, timeout: float, xdp_mode: str,
                           transport: str, ipv6: bool = False) -> BrowserDemoResult:
    """Build the lab and place one call from headless Chromium (``browser_demo_call``).

    ``transport="tcp"``: the lab runs the ICE-TCP front on relay 1's port 443
    and nftables drops every UDP packet in the client namespace for the call,
    so the only way through is ICE-TCP. ``ipv6``: the lab is dual stack and the
    client namespace drops what would reach the relay over IPv4 (its UDP; with
    tcp, its TCP to the IPv4 VIP's 443), so the call must use the IPv6 VIP.
    """
    from lab.browser import find_chromium
    from lab.nftables import NftError, drop_ipv4_tcp_to, drop_udp
    from lab.stack import TCP_FRONT_PORT, PrintProgress, StackOptions, start_stack

    if find_chromium() is None:
        raise DemoError("chromium is not installed (run scripts/setup.sh; apt: chromium)")
    tcp = transport == "tcp"
    progress = PrintProgress()
    async with start_stack(StackOptions(xdp_mode=xdp_mode, relays=1, tcp_front=tcp, ipv6=ipv6),
                           progress) as stack:
        with contextlib.ExitStack() as blocked:
            dropped: Callable[[], int] | None = None
            try:
                if tcp:
                    dropped = blocked.enter_context(drop_udp(stack.client_ns))
                    if ipv6:
                        blocked.enter_context(drop_ipv4_tcp_to(
                            stack.client_ns, stack.relays[0].public_address, TCP_FRONT_PORT))
                elif ipv6:
                    topo = stack.topology
                    assert topo is not None  # start_stack built it
                    await asyncio.to_thread(topo.drop_ipv4_udp, stack.client_ns)
                    dropped = functools.partial(topo.ipv4_udp_dropped, stack.client_ns)
            except (NftError, RuntimeError) as exc:
                raise DemoError(str(exc)) from None
            family = "IPv6 " if ipv6 else ""
            with progress.step(f"calling from Chromium over {family}{transport.upper()} "
                               "and speaking"):
                return await browser_demo_call(stack, wav, timeout, transport,
                                               udp_dropped=dropped, ipv6=ipv6)


def print_browser_result(result: BrowserDemoResult) -> None:
    local, remote = result.pair.get("local", {}), result.pair.get("remote", {})
    assert isinstance(local, dict) and isinstance(remote, dict)

    def end(c: dict[str, object]) -> str:
        kind = f" {c.get('tcp_type')}" if c.get("tcp_type") else ""
        address = str(c.get("address"))
        host = f"[{address}]" if ":" in address else address
        return f"{host}:{c.get('port')} ({c.get('type')}{kind})"

    click.echo("")
    click.echo(f"  heard:  {result.transcript or '(nothing)'}")
    click.echo(f"  reply:  {result.reply or '(nothing)'}")
    click.echo("")
    click.echo(f"  selected pair  {str(remote.get('protocol', '?')).upper()} "
               f"{end(local)} -> {end(remote)}")
    click.echo(f"  reply audio    {result.reply_packets} RTP packets, "
               f"energy {result.reply_audio_energy:.3f}")
    if result.transport == "tcp":
        f = result.tcpfront
        click.echo(f"  client's UDP   {result.udp_dropped} packets dropped by nftables in its "
                   "namespace")
        click.echo(f"  ICE-TCP front  {f.get('established', 0)} connection(s) established, "
                   f"{f.get('frames_to_transceiver', 0)} frames to the transceiver, "
                   f"{f.get('frames_to_client', 0)} to the client")
    c = result.relay_counters
    click.echo(f"  relay (XDP)    {c.get('fwd_new_flow', 0)} new UDP flows, "
               f"{c.get('fwd_to_client', 0)} packets to the client")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--wav", "wav", type=click.Path(dir_okay=False, path_type=Path),
              help="16-bit PCM WAV to speak into the call. Default: --say, spoken by espeak-ng.")
@click.option("--say", "sentence", default=DEFAULT_SENTENCE, show_default=True,
              help="Sentence to synthesize with espeak-ng when no --wav is given.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default=True, help="Where to save the model's spoken reply (WAV).")
@click.option("--timeout", type=click.FloatRange(min=5), default=60, show_default=True,
              help="Seconds the call may take once the lab is up.")
@click.option("--xdp-mode", type=click.Choice(["generic", "native"]), default="native",
              show_default=True, help="XDP attach mode on the lab's veth interfaces.")
@click.option("--turns", type=click.IntRange(1, 50), default=10, show_default=True,
              help="Times the sentence is spoken in the one call; the latency p50 is over them.")
@click.option("--ipv6", is_flag=True,
              help="Call over an IPv6 client address: the relay's IPv6 VIP (dual stack), "
                   "translated to the IPv4 transceiver and back; the client's IPv4 UDP is "
                   "dropped, so the call cannot fall back to IPv4. With --transport tcp, "
                   "its IPv4 TCP to the relay's 443 too: ICE-TCP to the IPv6 VIP.")
@click.option("--json", "json_out", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--client", type=click.Choice(["aiortc", "chromium"]), default="aiortc",
              show_default=True,
              help="Who places the call: the project's aiortc client, or Debian's Chromium "
                   "(headless, over DevTools) playing the sentence as its microphone.")
@click.option("--transport", type=click.Choice(["udp", "tcp"]), default="udp",
              show_default=True,
              help="tcp: drop every UDP packet in the client namespace and call over ICE-TCP "
                   "to the relay's port 443 (the lab runs the TCP front). Needs --client "
                   "chromium: aioice has no ICE-TCP.")
def demo(wav: Path | None, sentence: str, out: Path, timeout: float, xdp_mode: str, turns: int,
         ipv6: bool, json_out: bool, client: str, transport: str) -> None:
    """Place one voice call through the XDP relay, in network namespaces.

    \b
    Builds client, relay (public + private side), transceiver and model
    namespaces on this host, loads the relay, starts the orchestrator with its
    embedded directory, a transceiver and the offline model server, then an
    aiortc client in the client namespace speaks a sentence through the relay,
    --turns times in one call. It prints what the model heard and answered,
    four figures of the first turn:
      client <-> relay RTT, relay <-> transceiver RTT, the model's processing
      time, and end of speech -> first reply audio (client's clock),
    then per turn the breakdown of that wait (VAD, ASR, reply, TTS first
    chunk, transport) and its p50, and saves the spoken reply to --out.

    \b
    \b
    --client chromium: headless Chromium in the client namespace places the
    call from the transceiver's own web page, with the sentence as its fake
    microphone; it prints what the model heard and answered, the selected
    candidate pair and the reply audio's packets and energy (the browser
    keeps no recording, so --out, --turns and the latency figures are for
    the aiortc client). --transport tcp (with chromium): every UDP packet in
    the client namespace is dropped, the call goes over ICE-TCP to the
    relay's port 443 (voxrelay tcpfront), and the demo fails unless the
    selected pair is TCP and the model answered.

    \b
    Needs root (namespaces, XDP). Everything it creates is removed on exit,
    on error and on Ctrl-C. Setup progress goes to stderr.
    """
    import os

    if transport == "tcp" and client != "chromium":
        raise click.UsageError("--transport tcp needs --client chromium: aioice (the aiortc "
                               "client's ICE) has no ICE-TCP")
    if os.geteuid() != 0:
        raise click.ClickException("demo needs root: it creates network namespaces and loads XDP")
    with tempfile.TemporaryDirectory(prefix="voxrelay-demo-") as tmp:
        try:
            said = sentence if wav is None else ""
            if client == "chromium":
                from lab.browser import speech_wav

                # Chromium loops its fake microphone: the pause after the
                # sentence lets the model's VAD end the turn.
                wav = speech_wav(sentence, Path(tmp) / "speech.wav") if wav is None else wav
                check_wav(wav)
                browser = _run(run_browser_demo(wav.resolve(), timeout, xdp_mode, transport,
                                                 ipv6))
                if json_out:
                    click.echo(json.dumps(asdict(browser), indent=2))
                else:
                    print_browser_result(browser)
                return
            if wav is None:
                wav = speak(sentence, Path(tmp) / "speech.wav")
            check_wav(wav)
            result = _run(run_demo(wav.resolve(), out, timeout, xdp_mode, turns, said, ipv6))
        except DemoError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("\ninterrupted: everything the demo created has been removed", err=True)
            sys.exit(130)
        except Exception as exc:
            from lab.stack import StackError

            if isinstance(exc, (StackError, asyncio.TimeoutError)):
                msg = str(exc) or f"the call did not finish in {timeout:.0f} s"
                raise click.ClickException(msg) from None
            raise
    if json_out:
        click.echo(json.dumps(asdict(result), indent=2))
    else:
        print_result(result)


def _run(coro):  # type: ignore[no-untyped-def]
    """asyncio.run, with SIGTERM treated like Ctrl-C so that teardown runs for both.

    Not ``loop.add_signal_handler``: it routes signals through a wakeup fd that
    forked children inherit (pyroute2 forks helpers to open sockets in a
    namespace), so the SIGTERM that ends such a helper would cancel the demo.
    A plain handler that checks the pid only reacts to signals sent to us.
    """
    import os

    owner = os.getpid()

    async def main():  # type: ignore[no-untyped-def]
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None

        def on_sigterm(signum, frame):  # type: ignore[no-untyped-def]
            if os.getpid() != owner:
                os._exit(128 + signum)
            loop.call_soon_threadsafe(task.cancel)

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            return await coro
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return asyncio.run(main())
