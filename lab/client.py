# SPDX-License-Identifier: Apache-2.0
"""An aiortc client for the transceiver's HTTP API (tests and ``voxrelay demo``).

``place_call`` speaks a WAV (or PCM) as the microphone, collects the JSON
events from the ``events`` data channel and records the reply audio. For finer
control (ICE restart mid-call, several utterances) use ``CallClient``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import string
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import aiohttp
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from transceiver.ice import (
    accept_remote_candidates,
    aioice_connection,
    random_ice_password,
    restart_ice,
    set_local_credentials,
)
from transceiver.media import CHUNK_BYTES, OPUS_RATE, SAMPLE_RATE, ReplyTrack, pcm_chunks


class CallFailed(Exception):
    """The call could not be placed or did not complete; the message says why."""


def read_wav_pcm(path: str | Path) -> bytes:
    """Any audio file ffmpeg reads -> 16 kHz mono s16le PCM."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    out = bytearray()
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(audio=0):
                for f in resampler.resample(frame):
                    out += f.to_ndarray().tobytes()
            for f in resampler.resample(None):
                out += f.to_ndarray().tobytes()
    except (av.FFmpegError, OSError) as exc:
        raise CallFailed(f"cannot read audio file {path}: {exc}") from None
    return bytes(out)


def write_wav(path: str | Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm)


@dataclass
class CallResult:
    call_id: str
    events: list[dict[str, Any]]
    reply_pcm: bytes
    answer_sdp: str
    connect_ms: float = 0.0

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    @property
    def transcript(self) -> str:
        return " ".join(e["text"] for e in self.of_type("transcript") if e.get("final"))

    @property
    def reply(self) -> str:
        return " ".join(e["text"] for e in self.of_type("reply"))

    @property
    def reply_peak(self) -> int:
        """Largest absolute sample of the reply audio (0 means silence)."""
        import numpy as np

        if not self.reply_pcm:
            return 0
        return int(np.abs(np.frombuffer(self.reply_pcm, dtype="<i2").astype(int)).max())


@dataclass
class CallClient:
    """One call through the HTTP API; use as ``async with CallClient(url) as c:``."""

    url: str
    token: str = ""
    timeout: float = 20.0
    events: list[dict[str, Any]] = field(default_factory=list)
    call_id: str = ""
    location: str = ""
    answer_sdp: str = ""

    def __post_init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = ReplyTrack(rate=OPUS_RATE)  # straight into the Opus encoder
        self.reply = bytearray()
        self._event_cond = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.channel = self.pc.createDataChannel("events")
        self.channel.on("message", self._on_message)
        self.pc.addTrack(self.mic)
        self.pc.on("track", self._on_track)

    async def __aenter__(self) -> Self:
        # The credential on every request of the session (POST, PATCH, GET, DELETE).
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._session = aiohttp.ClientSession(base_url=self.url.rstrip("/") + "/", headers=auth)
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _headers(self) -> dict[str, str]:
        return {"Content-Type": "application/sdp"}

    def _on_message(self, message: str | bytes) -> None:
        event = json.loads(message)
        self.events.append(event)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._event_cond:
            self._event_cond.notify_all()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._tasks.append(asyncio.create_task(self._record(track)))

    async def _record(self, track: MediaStreamTrack) -> None:
        async for arrived_at, chunk in pcm_chunks(track, on_frame=self._on_frame):
            self._on_chunk(arrived_at, chunk)

    def _on_frame(self, arrived_at: float) -> bool:
        """Every reply frame's arrival (monotonic); False: do not decode it."""
        return True

    def _on_chunk(self, arrived_at: float, chunk: bytes) -> None:
        """One 20 ms chunk of the reply (16 kHz mono s16le)."""
        self.reply += chunk

    async def _sdp_request(self, method: str, path: str, sdp: str) -> aiohttp.ClientResponse:
        assert self._session is not None
        response = await self._session.request(
            method, path.lstrip("/"), data=sdp, headers=self._headers()
        )
        await response.read()
        return response

    async def connect(self) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        started = time.monotonic()
        response = await self._sdp_request("POST", "v1/calls", self.pc.localDescription.sdp)
        if response.status != 201:
            raise CallFailed(f"POST /v1/calls: {response.status} {await response.text()}")
        self.location = response.headers["Location"]
        self.call_id = self.location.rsplit("/", 1)[-1]
        self.answer_sdp = await response.text()
        await self.pc.setRemoteDescription(RTCSessionDescription(self.answer_sdp, "answer"))
        await self.wait_for(lambda: self.pc.connectionState == "connected", "ICE/DTLS to connect",
                            poll=True)
        self.connect_ms = (time.monotonic() - started) * 1000

    async def wait_for(self, predicate: Any, what: str, *, poll: bool = False,
                       timeout: float | None = None) -> None:
        """Wait until ``predicate()`` holds (re-checked on each event, or every 20 ms)."""
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                if poll:
                    while not predicate():
                        await asyncio.sleep(0.02)
                else:
                    async with self._event_cond:
                        await self._event_cond.wait_for(predicate)
        except TimeoutError:
            raise CallFailed(f"timed out after {limit} s waiting for {what}") from None

    async def wait_event(self, kind: str, after: int = 0, timeout: float | None = None,
                         **match: Any) -> dict[str, Any]:
        """The first event of ``kind`` (from index ``after``) whose fields match."""

        def find() -> dict[str, Any] | None:
            for e in self.events[after:]:
                if e.get("type") == kind and all(e.get(k) == v for k, v in match.items()):
                    return e
            return None

        await self.wait_for(lambda: find() is not None, f"a {kind!r} event {match or ''}",
                            timeout=timeout)
        found = find()
        assert found is not None
        return found

    def speak(self, pcm: bytes) -> None:
        """Send ``pcm`` (16 kHz mono s16le) as the microphone; silence follows."""
        self.mic.push(pcm)

    async def say_and_wait_reply(self, pcm: bytes, timeout: float | None = None) -> None:
        """Speak, then wait for the turn's final transcript, reply audio and turn end."""
        start = len(self.events)
        reply_before = len(self.reply)
        self.speak(pcm)
        await self.wait_event("transcript", start, timeout, final=True)
        await self.wait_event("turn_end", start, timeout)
        # The last reply chunks are still in flight when turn_end arrives.
        await self.wait_for(lambda: len(self.reply) > reply_before + CHUNK_BYTES * 5,
                            "reply audio", poll=True, timeout=timeout)
        await asyncio.sleep(0.3)

    async def restart_ice(self) -> str:
        """ICE restart through PATCH; returns the new server ufrag."""
        ice_transport = self.pc.getTransceivers()[0].receiver.transport.transport
        conn = aioice_connection(ice_transport)
        ufrag = "".join(secrets.choice(string.ascii_letters) for _ in range(8))
        password = random_ice_password()
        # aiortc's offer reads the credentials from the aioice connection.
        set_local_credentials(conn, ufrag, password)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        response = await self._sdp_request("PATCH", self.location, self.pc.localDescription.sdp)
        if response.status != 200:
            raise CallFailed(f"PATCH {self.location}: {response.status} {await response.text()}")
        answer = await response.text()
        from aiortc import sdp as aiosdp

        media = aiosdp.SessionDescription.parse(answer).media
        remote = media[0].ice if media else None
        if remote is None or not remote.usernameFragment or not remote.password:
            raise CallFailed(f"PATCH {self.location}: the answer lacks ice-ufrag or ice-pwd")
        remote_ufrag, remote_pwd = remote.usernameFragment, remote.password
        task = restart_ice(conn, local_username=ufrag, local_password=password,
                           remote_username=remote_ufrag, remote_password=remote_pwd)
        # Or the new answer's relay candidates never reach the check list, and
        # the restart waits for the transceiver's next consent check (up to 5 s).
        accept_remote_candidates(ice_transport)
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        assert task is not None
        if not await task:
            raise CallFailed("ICE restart did not nominate a pair")
        self.answer_sdp = answer
        return remote_ufrag

    async def status(self) -> dict[str, Any]:
        """The transceiver's view of this call (``GET`` its location)."""
        if self._session is None or not self.location:
            raise CallFailed("the call is not placed (or was hung up)")
        async with self._session.get(self.location.lstrip("/")) as response:
            if response.status != 200:
                raise CallFailed(f"GET {self.location}: {response.status} {await response.text()}")
            body: dict[str, Any] = await response.json()
            return body

    async def hangup(self) -> int:
        if self._session is None or not self.location:
            return 0
        response = await self._session.delete(self.location.lstrip("/"), headers=self._headers())
        await response.read()
        self.location = ""
        return response.status

    async def close(self) -> None:
        try:
            await self.hangup()
        except aiohttp.ClientError:
            pass
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def result(self) -> CallResult:
        return CallResult(self.call_id, list(self.events), bytes(self.reply), self.answer_sdp,
                          getattr(self, "connect_ms", 0.0))


async def place_call(
    url: str,
    audio: str | Path | bytes,
    token: str = "",
    *,
    timeout: float = 30.0,
    reply_wav: str | Path | None = None,
) -> CallResult:
    """Call ``url``, speak ``audio`` (a file path or 16 kHz mono PCM), wait for the reply.

    Raises ``CallFailed`` with the reason when any step does not happen.
    """
    pcm = audio if isinstance(audio, bytes) else read_wav_pcm(audio)
    async with CallClient(url, token, timeout) as client:
        await client.wait_event("model", state="connected")
        await client.say_and_wait_reply(pcm)
        result = client.result()
    if reply_wav is not None:
        write_wav(reply_wav, result.reply_pcm)
    return result
