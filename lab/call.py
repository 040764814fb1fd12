# SPDX-License-Identifier: Apache-2.0
"""The demo's call, measured on the client's clock, plus the RTT probes.

The call itself is ``lab.client.CallClient`` (the transceiver's own
aiortc client); this module adds what the demo reports and the tests assert:
when speech ended and when the first audible reply frame came back, and ICMP
round trips for the client->relay and relay->transceiver legs.

Everything here runs inside one network namespace: ``run_in_netns`` (from
``orchestrator.netlink``) gives a thread in it, and ``asyncio.run`` on that
thread makes every socket the call opens (aiohttp signaling, aioice media)
belong to that namespace.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lab.client import CallClient, read_wav_pcm
from transceiver.ice import short_audio_jitter
from transceiver.media import CHUNK_BYTES, SAMPLE_RATE

# A 20 ms frame whose RMS (int16 units) is above this is speech, not silence or
# codec noise. espeak-ng speech sits in the thousands; Opus silence below 10.
AUDIBLE_RMS = 200.0


def chunk_rms(chunk: bytes) -> float:
    samples = np.frombuffer(chunk[: len(chunk) - len(chunk) % 2], dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0


def speech_end_offset(pcm: bytes) -> float:
    """Seconds from the start of ``pcm`` to the end of its last audible 20 ms chunk."""
    last = -1
    for i in range(0, len(pcm), CHUNK_BYTES):
        if chunk_rms(pcm[i : i + CHUNK_BYTES]) >= AUDIBLE_RMS:
            last = i // CHUNK_BYTES
    if last < 0:
        raise ValueError("the audio to speak is silent (no 20 ms chunk above the speech level)")
    return (last + 1) * CHUNK_BYTES / 2 / SAMPLE_RATE


class TimedCallClient(CallClient):
    """``CallClient`` that timestamps the reply audio it receives (monotonic clock)."""

    def __post_init__(self) -> None:
        # The client's receiver holds one audio frame, as a browser's adaptive
        # buffer settles to on a clean path (aiortc's fixed 4 would add 60 ms
        # to every measured turn that no real client has). Before the peer
        # connection: its receiver's buffer is built at addTrack (until this
        # ran first, a process's first timed call had aiortc's 4 frames).
        short_audio_jitter(like_a_browser=True)
        super().__post_init__()
        self.audible_at: list[float] = []
        """Arrival time of each audible 20 ms reply chunk."""
        self.chunks_received = 0

    def _on_chunk(self, arrived_at: float, chunk: bytes) -> None:
        super()._on_chunk(arrived_at, chunk)
        self.chunks_received += 1
        if chunk_rms(chunk) >= AUDIBLE_RMS:
            self.audible_at.append(arrived_at)

    def first_audible_after(self, t: float) -> float | None:
        return next((a for a in self.audible_at if a >= t), None)


@dataclass
class Turn:
    """One spoken turn as the client saw it."""

    transcript: str
    reply: str
    speech_end_at: float
    first_reply_audio_at: float | None
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def speech_end_to_first_reply_audio_ms(self) -> float | None:
        if self.first_reply_audio_at is None:
            return None
        return (self.first_reply_audio_at - self.speech_end_at) * 1000


async def speak_turn(client: TimedCallClient, pcm: bytes, timeout: float) -> Turn:
    """Speak ``pcm`` and wait for the turn's transcript, reply and reply audio."""
    start = len(client.events)
    spoken_at = time.monotonic()
    speech_end_at = spoken_at + speech_end_offset(pcm)
    await client.say_and_wait_reply(pcm, timeout=timeout)
    events = client.events[start:]
    transcript = " ".join(e["text"] for e in events if e.get("type") == "transcript" and e.get("final"))
    reply = " ".join(e["text"] for e in events if e.get("type") == "reply")
    timings: dict[str, Any] = {}
    for e in events:
        if e.get("type") == "timings":
            timings.update({k: v for k, v in e.items() if k not in ("type",)})
    return Turn(transcript, reply, speech_end_at, client.first_audible_after(speech_end_at), timings)


def load_pcm(path: str) -> bytes:
    return read_wav_pcm(path)


# ------------------------------------------------------------------ ICMP RTT


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_rtt_ms(dst: str, count: int = 5, timeout: float = 1.0) -> float | None:
    """Median ICMP echo round trip to ``dst`` from this thread's namespace, in ms.

    A raw socket (we are root); None when no echo came back.
    """
    ident = os.getpid() & 0xFFFF
    rtts: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(timeout)
        for seq in range(count):
            payload = struct.pack("!d", time.monotonic()) + b"voxrelay-rtt"
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", 8, 0, _icmp_checksum(header + payload), ident, seq) + payload
            sent = time.monotonic()
            s.sendto(packet, (dst, 0))
            deadline = sent + timeout
            while time.monotonic() < deadline:
                try:
                    data, addr = s.recvfrom(2048)
                except TimeoutError:
                    break
                ihl = (data[0] & 0x0F) * 4
                typ, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
                if typ == 0 and rid == ident and rseq == seq and addr[0] == dst:
                    rtts.append((time.monotonic() - sent) * 1000)
                    break
            time.sleep(0.02)
    return statistics.median(rtts) if rtts else None


def in_netns(netns: str | None, fn: Any, *args: Any) -> Any:
    from orchestrator.netlink import run_in_netns

    return run_in_netns(netns, fn, *args)


async def icmp_rtt_in(netns: str | None, dst: str, count: int = 5) -> float | None:
    return await asyncio.to_thread(in_netns, netns, icmp_rtt_ms, dst, count)
