# SPDX-License-Identifier: Apache-2.0
"""Debian's Chromium, headless, in a network namespace: the driver and the call harness.

Two layers:

* ``Chromium``: one browser process and one page, driven over the DevTools
  protocol (CDP). The protocol runs over ``--remote-debugging-pipe`` (fds 3
  and 4 of the browser process, NUL-terminated JSON) rather than
  ``--remote-debugging-port``: the browser then opens no TCP port in the
  client namespace (so it adds nothing to what the "no path around the relay"
  checks see), two parallel runs cannot collide on a port, and the test
  process needs no socket inside the namespace. Only the browser enters the
  namespace (``nsenter --net``): setns() is per thread, and a separate
  process is the one place where entering it cannot leak into our own
  threads. No node, no playwright: CDP over a pipe is a few hundred lines,
  follows Debian's Chromium as it moves, and needs nothing downloaded.
* ``open_browser_call`` / ``browser_call``: a WebRTC call placed by the page
  the transceiver serves (transceiver/static/index.html + app.js) through
  its script API ``window.voxrelay`` (call, stats, hangup, events). The page
  logic stays in that JS; this module only calls it and turns its
  ``getStats()`` summary into ``StatsSample``/``BrowserCallResult``. A test
  can act mid-call (``during=``, or the ``BrowserCall`` handle of
  ``open_browser_call``) and go on polling stats afterwards.

Same origin: open the signaling URL's own page. Cross-origin: ``serve_static``
serves the same page from another origin (127.0.0.1 in the client
namespace, a secure context without flags), and the page calls the
signaling URL it is given, which must then allow that origin by CORS.

Nothing is downloaded: the browser is the ``chromium`` Debian package that
scripts/setup.sh installs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import transceiver

# Debian's browser binary itself, then the launcher scripts on PATH (the
# launcher adds /etc/chromium.d flags and runs a shell memory check we do not need).
CHROMIUM_BINARIES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")

# The flags the lab needs (issue 5): no sandbox (root, no user namespaces for
# it), no GPU, no background traffic that would leave the namespace or add
# noise, QUIC off, and a fake microphone that plays a WAV file. Host
# candidates carry real addresses, not mDNS .local names (the relay and the
# transceiver see, and the tests assert, addresses), and the reply's audio
# element plays without a user gesture (headless: nobody clicks).
BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--remote-debugging-pipe",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
)


class ChromiumError(RuntimeError):
    """The browser could not be started, died, or a CDP command failed."""


def find_chromium() -> str | None:
    for name in CHROMIUM_BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class Chromium:
    """One headless browser process and one page (a flattened CDP session).

    Use as ``async with Chromium(netns=..., fake_audio=...) as browser:``; the
    process and its profile directory are removed on exit, also on error.
    """

    netns: str | None = None
    """Network namespace (a name under /run/netns) to run in; None: the caller's."""
    fake_audio: Path | None = None
    """WAV file played as the microphone (--use-file-for-fake-audio-capture)."""
    window_size: tuple[int, int] = (1024, 768)
    secure_origins: tuple[str, ...] = ()
    """http:// origins to treat as secure: getUserMedia and WebRTC need a secure
    context, and the lab serves its page over plain HTTP (no certificates)."""
    console: list[str] = field(default_factory=list)
    """Console messages and uncaught exceptions of the page, for failure messages."""
    extra_flags: tuple[str, ...] = ()
    """More command-line flags, e.g. ``--ignore-certificate-errors-spki-list=...``
    to trust the self-signed certificate of ``voxrelay lab up``."""

    _proc: subprocess.Popen[bytes] | None = None
    _profile: tempfile.TemporaryDirectory[str] | None = None
    _reader: asyncio.StreamReader | None = None
    _write_fd: int = -1
    _next_id: int = 0
    _pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _read_task: asyncio.Task[None] | None = None
    _session: str | None = None
    _stderr_path: Path | None = None

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def command_line(self, binary: str, profile: str) -> list[str]:
        argv = [binary, *BASE_FLAGS, f"--user-data-dir={profile}",
                f"--window-size={self.window_size[0]},{self.window_size[1]}"]
        if self.fake_audio is not None:
            argv.append(f"--use-file-for-fake-audio-capture={self.fake_audio}")
        if self.secure_origins:
            argv.append("--unsafely-treat-insecure-origin-as-secure=" + ",".join(self.secure_origins))
        argv.extend(self.extra_flags)
        argv.append("about:blank")
        if self.netns is not None:
            # nsenter only switches the network namespace; the browser keeps
            # the host's mount namespace, so /run/netns/<ns> must exist.
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]
        return argv

    async def start(self) -> None:
        binary = find_chromium()
        if binary is None:
            raise ChromiumError("chromium is not installed (apt-get install chromium)")
        if self.fake_audio is not None and not Path(self.fake_audio).is_file():  # noqa: ASYNC240 - one stat
            raise ChromiumError(f"fake audio file {self.fake_audio} does not exist")
        self._profile = tempfile.TemporaryDirectory(prefix="voxrelay-chromium-")
        self._stderr_path = Path(self._profile.name) / "stderr.log"
        # fd 3: the browser reads commands; fd 4: it writes responses and events.
        cmd_r, cmd_w = os.pipe()
        resp_r, resp_w = os.pipe()

        try:
            self._proc = self._spawn(
                self.command_line(binary, self._profile.name), self._stderr_path, cmd_r, resp_w
            )
        finally:
            os.close(cmd_r)
            os.close(resp_w)
        self._write_fd = cmd_w
        loop = asyncio.get_running_loop()
        reader = self._reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
        read_file = os.fdopen(resp_r, "rb", buffering=0)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), read_file)
        self._read_task = asyncio.create_task(self._read_loop())
        version = await self.send("Browser.getVersion", timeout=30)
        self.version = version.get("product", "?")
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        self._session = attached["sessionId"]
        await self.send("Page.enable", session=True)
        await self.send("Runtime.enable", session=True)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                try:
                    raw = await self._reader.readuntil(b"\0")
                except asyncio.IncompleteReadError:
                    break
                msg = json.loads(raw[:-1])
                if "id" in msg:
                    fut = self._pending.pop(msg["id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                else:
                    self._on_event(msg)
        finally:
            err = ChromiumError(f"chromium closed its DevTools pipe; {self.stderr_tail()}")
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(err)
            self._pending.clear()

    def _on_event(self, msg: dict[str, Any]) -> None:
        method = msg.get("method")
        params = msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(
                str(a.get("value", a.get("description", ""))) for a in params.get("args", [])
            )
            self.console.append(f"console.{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            desc = details.get("exception", {}).get("description") or details.get("text")
            self.console.append(f"exception: {desc}")

    def stderr_tail(self, lines: int = 15) -> str:
        if self._stderr_path is None or not self._stderr_path.exists():
            return "no stderr"
        tail = self._stderr_path.read_text(errors="replace").splitlines()[-lines:]
        return "stderr tail:\n" + "\n".join(tail)

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: bool = False,
        timeout: float = 15.0,
    ) -> dict[str, Any]:
        """Send one CDP command; return its result or raise ChromiumError."""
        if self._write_fd < 0:
            raise ChromiumError("chromium is not running")
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self._session
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = fut
        os.write(self._write_fd, json.dumps(msg).encode() + b"\0")
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._pending.pop(msg["id"], None)
            raise ChromiumError(f"CDP {method} got no answer in {timeout:.0f} s") from None
        if "error" in reply:
            raise ChromiumError(f"CDP {method} failed: {reply['error']}")
        return reply.get("result", {})

    async def navigate(self, url: str) -> None:
        result = await self.send("Page.navigate", {"url": url}, session=True)
        if result.get("errorText"):
            raise ChromiumError(f"cannot load {url}: {result['errorText']}")
        await self.wait_for("document.readyState === 'complete'", timeout=15)

    async def evaluate(self, expression: str, *, await_promise: bool = False) -> Any:
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": await_promise},
            session=True,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            desc = details.get("exception", {}).get("description") or details.get("text")
            raise ChromiumError(f"page threw evaluating {expression!r}: {desc}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, *, timeout: float, poll: float = 0.25) -> Any:
        """Poll a JS expression until it is truthy; return its value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        value: Any = None
        while loop.time() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(poll)
        raise ChromiumError(
            f"{expression!r} still falsy after {timeout:.0f} s (last {value!r}); "
            f"page console: {self.console[-10:]}"
        )

    async def text(self) -> str:
        return str(await self.evaluate("document.body ? document.body.innerText : ''"))

    async def screenshot(self, path: Path) -> Path:
        result = await self.send("Page.captureScreenshot", {"format": "png"}, session=True)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    @staticmethod
    def _spawn(argv: list[str], stderr_path: Path, cmd_r: int, resp_w: int) -> subprocess.Popen[bytes]:
        # Synchronous on purpose: fork+exec returns at once, and a spawn that
        # cannot be interrupted half way leaves no browser that close() does not know of.
        with open(stderr_path, "wb") as stderr:
            return subprocess.Popen(
                # bash places the pipe ends on 3 and 4, closes the originals and
                # execs, so the browser (or nsenter, which execs it) is the pid.
                # Its own process group lets close() end renderers with it.
                [
                    "/bin/bash", "-c",
                    f'exec 3<&{cmd_r} 4>&{resp_w} {cmd_r}<&- {resp_w}>&-; exec "$@"',
                    "chromium-launch", *argv,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=(cmd_r, resp_w),
                process_group=0,
            )

    async def close(self) -> None:
        if self._write_fd >= 0 and self._proc is not None and self._proc.poll() is None:
            try:
                await self.send("Browser.close", timeout=5)
            except ChromiumError:
                pass
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                # The browser leads its own process group (process_group=0):
                # end its renderer and utility children with it, and nothing else.
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=5)
            self._proc = None
        if self._read_task is not None:
            self._read_task.cancel()
            # The loop ends in cancellation here; the pending sends already got
            # its failure (its finally), so its outcome is collected, not raised.
            await asyncio.gather(self._read_task, return_exceptions=True)
            self._read_task = None
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None


# --------------------------------------------------------------- the call harness

STATIC_ROOT = Path(transceiver.__file__).resolve().parent / "static"
"""The page the transceiver serves at ``/`` (index.html, app.js)."""
STATIC_PORT = 8099
"""Port of ``serve_static`` (in the client namespace, so a fixed number is safe)."""
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class Candidate:
    """One ICE candidate of the selected pair, as getStats() reports it."""

    type: str
    """host, srflx, prflx or relay."""
    protocol: str
    """udp or tcp."""
    address: str
    port: int
    tcp_type: str | None = None
    """active, passive or so (ICE-TCP); None for UDP."""

    @classmethod
    def from_js(cls, raw: dict[str, Any] | None) -> Candidate | None:
        if not raw:
            return None
        return cls(type=str(raw.get("type")), protocol=str(raw.get("protocol")),
                   address=str(raw.get("address")), port=int(raw.get("port") or 0),
                   tcp_type=raw.get("tcpType"))

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class SelectedPair:
    """The transport's selected candidate pair (RTCTransportStats.selectedCandidatePairId)."""

    local: Candidate | None
    remote: Candidate | None
    state: str
    nominated: bool


@dataclass(frozen=True)
class AudioCounters:
    """The call's inbound (reply) audio: RTCInboundRtpStreamStats of kind audio."""

    packets: int = 0
    bytes: int = 0
    total_audio_energy: float = 0.0
    """Sum over received samples of (level^2 x duration): > 0 when the reply is not silence."""
    packets_lost: int = 0


@dataclass(frozen=True)
class StatsSample:
    """One poll of ``window.voxrelay.stats()``."""

    at: float
    """Seconds since the call was placed (monotonic clock of this process)."""
    connection_state: str
    ice_connection_state: str
    pair: SelectedPair | None
    inbound: AudioCounters
    outbound_packets: int

    @classmethod
    def from_js(cls, at: float, raw: dict[str, Any]) -> StatsSample:
        pair = raw.get("pair")
        inbound = raw.get("inbound") or {}
        return cls(
            at=at,
            connection_state=str(raw.get("connectionState")),
            ice_connection_state=str(raw.get("iceConnectionState")),
            pair=SelectedPair(Candidate.from_js(pair.get("local")), Candidate.from_js(pair.get("remote")),
                              str(pair.get("state")), bool(pair.get("nominated"))) if pair else None,
            inbound=AudioCounters(int(inbound.get("packets", 0)), int(inbound.get("bytes", 0)),
                                  float(inbound.get("totalAudioEnergy", 0.0)),
                                  int(inbound.get("packetsLost", 0))),
            outbound_packets=int((raw.get("outbound") or {}).get("packets", 0)),
        )


@dataclass(frozen=True)
class SignalingReply:
    """What the page's POST /v1/calls got: 201 and the call's URL, or the refusal."""

    ok: bool
    status: int
    """HTTP status; 0 when the fetch itself failed (network, or CORS: the browser hides which)."""
    body: str
    """The response body when refused (the signaling error JSON), or the fetch error."""
    location: str | None
    """Absolute URL of the call (the Location header, resolved against the signaling URL)."""


@dataclass
class BrowserCallResult:
    """Everything a browser call showed, filled in while it runs."""

    signaling: SignalingReply | None = None
    connected: bool = False
    """The peer connection reached "connected" (ICE and DTLS)."""
    samples: list[StatsSample] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    """JSON events from the data channel "events" (transceiver/call.py), in order."""
    errors: list[str] = field(default_factory=list)
    """The page's own errors and the harness's (a timeout, a refused POST)."""
    hangup_status: int | None = None
    """Status of the DELETE; None when the call was never hung up by the page."""
    console: list[str] = field(default_factory=list)

    @property
    def last(self) -> StatsSample | None:
        return self.samples[-1] if self.samples else None

    @property
    def pair(self) -> SelectedPair | None:
        """The last selected pair seen."""
        for sample in reversed(self.samples):
            if sample.pair is not None:
                return sample.pair
        return None

    @property
    def inbound(self) -> AudioCounters:
        return self.last.inbound if self.last is not None else AudioCounters()

    @property
    def call_id(self) -> str | None:
        if self.signaling is None or not self.signaling.location:
            return None
        return self.signaling.location.rstrip("/").rsplit("/", 1)[-1]

    def events_of(self, kind: str, **match: object) -> list[dict[str, Any]]:
        """Events with ``type == kind`` and the given field values."""
        return [e for e in self.events if e.get("type") == kind
                and all(e.get(k) == v for k, v in match.items())]

    def describe(self) -> str:
        """A failure message's worth: the state, the last stats, errors, the console tail."""
        return (f"signaling={self.signaling} connected={self.connected} last={self.last}\n"
                f"events={[e.get('type') for e in self.events]} errors={self.errors}\n"
                f"console={self.console[-10:]}")


def speech_wav(text: str, path: Path, *, pad_seconds: float = 2.0) -> Path:
    """``text`` spoken by espeak-ng (as the demo speaks), then ``pad_seconds`` of
    silence: Chromium loops its fake microphone's file, and without a pause
    after the sentence the model's VAD never sees the turn end."""
    import wave

    from lab.demo import speak

    speak(text, path)
    with wave.open(str(path), "rb") as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    pad = b"\0" * (int(params.framerate * pad_seconds) * params.sampwidth * params.nchannels)
    with wave.open(str(path), "wb") as w:
        w.setparams(params)
        w.writeframes(frames + pad)
    return path


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class BrowserCall:
    """A call in progress in one browser page (from ``open_browser_call``).

    Every ``poll()`` appends a ``StatsSample`` and the new events to
    ``result``; ``wait_until`` and ``hold`` poll until a condition or a time.
    """

    def __init__(self, browser: Chromium, result: BrowserCallResult) -> None:
        self.browser = browser
        self.result = result
        self._placed_at = time.monotonic()

    async def place(self, signaling_url: str | None, bearer: str | None) -> SignalingReply:
        args = {"url": signaling_url, "bearer": bearer}
        self._placed_at = time.monotonic()
        raw = await self.browser.evaluate(f"window.voxrelay.call({json.dumps(args)})",
                                          await_promise=True)
        reply = SignalingReply(bool(raw.get("ok")), int(raw.get("status", 0)),
                               str(raw.get("body", "")), raw.get("location"))
        self.result.signaling = reply
        if not reply.ok:
            self.result.errors.append(f"POST /v1/calls: {reply.status} {reply.body}")
        return reply

    async def poll(self) -> StatsSample:
        raw = await self.browser.evaluate("window.voxrelay.stats()", await_promise=True)
        sample = StatsSample.from_js(time.monotonic() - self._placed_at, raw)
        self.result.samples.append(sample)
        if sample.connection_state == "connected":
            self.result.connected = True
        seen = len(self.result.events)
        more = await self.browser.evaluate(f"window.voxrelay.events.slice({seen})")
        self.result.events.extend(more or [])
        errors = await self.browser.evaluate("window.voxrelay.errors")
        page_errors = [f"page: {e}" for e in errors or []]
        self.result.errors = [e for e in self.result.errors if not e.startswith("page: ")] + page_errors
        self.result.console = list(self.browser.console)
        return sample

    async def wait_until(self, predicate: Callable[[BrowserCallResult], bool], *,
                         timeout: float, poll: float = 0.2, what: str | None = "condition") -> bool:
        """Poll until ``predicate(result)``; False after ``timeout`` s (noted in
        ``result.errors`` as ``what`` unless ``what`` is None)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            await self.poll()
            if predicate(self.result):
                return True
            if loop.time() >= deadline:
                if what is not None:
                    self.result.errors.append(f"{what}: not reached within {timeout:.1f} s")
                return False
            await asyncio.sleep(poll)

    async def wait_connected(self, timeout: float) -> bool:
        return await self.wait_until(lambda r: r.connected, timeout=timeout, what="connected")

    async def hold(self, seconds: float, *, until: Callable[[BrowserCallResult], bool] | None = None,
                   poll: float = 0.2) -> None:
        """Keep the call up for ``seconds`` (or until ``until(result)``), polling stats."""
        # Holding for the whole time is the point, not a failure: nothing noted.
        await self.wait_until(until or (lambda _r: False), timeout=seconds, poll=poll, what=None)

    async def hangup(self) -> int:
        """DELETE the call (from the page, with its Bearer) and close the peer connection."""
        raw = await self.browser.evaluate("window.voxrelay.hangup()", await_promise=True)
        self.result.hangup_status = int(raw.get("status", 0))
        return self.result.hangup_status


@contextlib.asynccontextmanager
async def open_browser_call(
    netns: str | None,
    page_url: str,
    *,
    audio_wav: Path,
    signaling_url: str | None = None,
    bearer: str | None = None,
    connect_timeout: float = 20.0,
    secure_origins: tuple[str, ...] = (),
    browser_flags: tuple[str, ...] = (),
) -> AsyncIterator[BrowserCall]:
    """Start Chromium in ``netns``, open ``page_url`` and place a call from it.

    ``signaling_url``: where the page POSTs (None: the page's own origin);
    ``bearer``: its Authorization token. On entry the POST has been answered
    and, when it was accepted, the connection is up or ``connect_timeout``
    has passed: check ``call.result.signaling`` and ``call.result.connected``
    (nothing raises for a refused or failed call, so that a test can assert
    the refusal). On exit the call is hung up if the page still holds it,
    and the browser and its profile are gone.
    """
    origins = list(secure_origins)
    page_origin = origin_of(page_url)
    if page_origin.startswith("http://") and urlsplit(page_url).hostname not in LOCAL_HOSTS:
        # getUserMedia and RTCPeerConnection want a secure context; the lab is plain HTTP.
        origins.append(page_origin)
    result = BrowserCallResult()
    async with Chromium(netns=netns, fake_audio=audio_wav, secure_origins=tuple(origins),
                        extra_flags=browser_flags) as browser:
        call = BrowserCall(browser, result)
        try:
            await browser.navigate(page_url)
            await browser.wait_for("typeof window.voxrelay === 'object'", timeout=10)
            reply = await call.place(signaling_url, bearer)
            if reply.ok:
                await call.wait_connected(connect_timeout)
            yield call
        finally:
            result.console = list(browser.console)
            if result.signaling is not None and result.signaling.ok and result.hangup_status is None:
                with contextlib.suppress(ChromiumError):
                    await call.hangup()


async def browser_call(
    netns: str | None,
    page_url: str,
    *,
    audio_wav: Path,
    signaling_url: str | None = None,
    bearer: str | None = None,
    hold_seconds: float = 10.0,
    until: Callable[[BrowserCallResult], bool] | None = None,
    during: Callable[[BrowserCall], Awaitable[None]] | None = None,
    connect_timeout: float = 20.0,
    timeout: float = 60.0,
    browser_flags: tuple[str, ...] = (),
) -> BrowserCallResult:
    """One call, start to hang-up: place it, run ``during(call)`` once it is
    connected, then poll stats for ``hold_seconds`` (or until ``until(result)``),
    hang up and return what was seen. ``timeout`` bounds all of it; when it
    passes, the result so far comes back with the reason in ``errors``.
    """
    result: BrowserCallResult | None = None
    try:
        async with asyncio.timeout(timeout), open_browser_call(
            netns, page_url, audio_wav=audio_wav, signaling_url=signaling_url, bearer=bearer,
            connect_timeout=connect_timeout, browser_flags=browser_flags,
        ) as call:
            result = call.result
            if result.connected:
                if during is not None:
                    await during(call)
                await call.hold(hold_seconds, until=until)
            if result.signaling is not None and result.signaling.ok:
                await call.hangup()
    except TimeoutError:
        if result is None:
            raise ChromiumError(f"the browser did not place the call within {timeout:.0f} s") from None
        result.errors.append(f"browser call: timed out after {timeout:.0f} s")
    assert result is not None
    return result


def make_static_app(root: Path) -> Any:
    """The page as the transceiver serves it (``/`` and ``/static/``), from another origin."""
    from aiohttp import web

    async def index(_request: web.Request) -> web.StreamResponse:
        return web.FileResponse(root / "index.html")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_static("/static/", root)
    return app


@contextlib.asynccontextmanager
async def serve_static(netns: str | None, *, root: Path = STATIC_ROOT, host: str = "127.0.0.1",
                       port: int = STATIC_PORT, timeout: float = 20.0) -> AsyncIterator[str]:
    """Serve ``root`` as a page of another origin inside ``netns``; yield its URL.

    127.0.0.1 is a secure context for Chromium without flags, and its origin is
    not the signaling URL's: a page from here calling signaling is cross-origin.
    """
    from lab.stack import Service, source_root, tcp_open

    with tempfile.TemporaryDirectory(prefix="voxrelay-static-") as tmp:
        svc = Service("static-page", netns,
                      [sys.executable, "-m", "lab.browser", "serve-static", str(root), f"{host}:{port}"],
                      Path(tmp) / "static.log", env={"PYTHONPATH": str(source_root())})
        try:
            svc.start()
            await svc.wait_ready(lambda: tcp_open(netns, host, port), timeout)
            yield f"http://{host}:{port}/"
        finally:
            await svc.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.browser")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve-static", help="serve a page directory (index.html, static/)")
    serve.add_argument("root", type=Path)
    serve.add_argument("listen", help="host:port")
    args = parser.parse_args(argv)
    from aiohttp import web

    host, _, port = args.listen.rpartition(":")
    web.run_app(make_static_app(args.root), host=host, port=int(port), print=None)


if __name__ == "__main__":
    main()
