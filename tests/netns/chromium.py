# SPDX-License-Identifier: Apache-2.0
"""Debian's Chromium, headless, in a network namespace, driven over CDP.

The DevTools protocol runs over ``--remote-debugging-pipe`` (fds 3 and 4 of
the browser process, NUL-terminated JSON) rather than ``--remote-debugging-port``:
the browser then opens no TCP port in the client namespace (so it adds nothing
to what the "no path around the relay" checks see), two parallel runs cannot
collide on a port, and the test process needs no socket inside the namespace.

Nothing is downloaded: the browser is the ``chromium`` Debian package that
scripts/setup.sh installs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

# Debian's browser binary itself, then the launcher scripts on PATH (the
# launcher adds /etc/chromium.d flags and runs a shell memory check we do not need).
CHROMIUM_BINARIES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")

# The flags the lab needs (issue 5): no sandbox (root, no user namespaces for
# it), no GPU, no background traffic that would leave the namespace or add
# noise, QUIC off, and a fake microphone that plays a WAV file.
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
        if self.fake_audio is not None and not Path(self.fake_audio).is_file():
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
        self._reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
        read_file = os.fdopen(resp_r, "rb", buffering=0)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(self._reader), read_file
        )
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
