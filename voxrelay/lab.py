"""A running voxrelay stack in network namespaces: the demo's and the whole-chain tests' lab.

``voxrelay.topology`` builds the namespaces and links; this module starts the
services on top of it and tears them down again:

* the XDP relay, loaded on the relay's public and private interfaces;
* the orchestrator (embedded directory plus map sync), in the relay namespace;
* the model server (``voxrelay model serve``), in the model namespace;
* a transceiver (``voxrelay transceiver``), in the transceiver namespace.

Services run as child processes of this one, each entered into its namespace
(``orchestrator.netlink.popen_in_netns``: only the network namespace changes,
so they share our files) and each in its own process group. A terminal's Ctrl-C therefore
reaches only this process, which then stops them in order: SIGTERM, a grace
period, then SIGKILL for the whole group. Every step registers its undo on an
``AsyncExitStack`` before it acts, so a failure half-way leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

T = TypeVar("T")


class LabError(RuntimeError):
    """A lab step failed; the message says which step and shows the service's log."""


class Progress(Protocol):
    """Where the lab reports its setup steps (the demo prints them; tests log them)."""

    def step(self, label: str) -> contextlib.AbstractContextManager[None]: ...


class QuietProgress:
    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        yield


class PrintProgress:
    """``[n] label ... ok (0.4 s)`` lines on a stream (stderr by default)."""

    def __init__(self, stream=None, total: int | None = None) -> None:  # type: ignore[no-untyped-def]
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.count = 0

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        self.count += 1
        prefix = f"[{self.count}/{self.total}]" if self.total else f"[{self.count}]"
        self.stream.write(f"{prefix} {label} ... ")
        self.stream.flush()
        started = time.monotonic()
        try:
            yield
        except BaseException as exc:
            reason = "interrupted" if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)) else "failed"
            self.stream.write(f"{reason}\n")
            self.stream.flush()
            raise
        self.stream.write(f"ok ({time.monotonic() - started:.1f} s)\n")
        self.stream.flush()


@dataclass
class Service:
    """One child process in a network namespace, its own process group, logging to a file."""

    name: str
    netns: str | None
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from orchestrator.netlink import popen_in_netns

        log = open(self.log_path, "ab")
        try:
            self.proc = popen_in_netns(
                self.netns,
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                process_group=0,
            )
        finally:
            log.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"({self.name}: no log)"
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(text)

    async def wait_ready(self, probe: Callable[[], Awaitable[bool]], timeout: float) -> None:
        """Poll ``probe`` until it is true; fail early, with the log, if the process exits."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if not self.running():
                code = self.proc.returncode if self.proc is not None else None
                raise LabError(f"{self.name} exited with status {code} while starting\n{self.log_tail()}")
            if await probe():
                return
            await asyncio.sleep(0.1)
        raise LabError(f"{self.name} not ready after {timeout:.0f} s\n{self.log_tail()}")

    async def stop(self, grace: float = 5.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        # SIGKILL the group even after a clean exit of the leader: a helper it
        # started (a subprocess of its own) must not outlive the lab.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            await asyncio.to_thread(proc.wait, 5)
        self.proc = None


def python_argv(*args: str) -> list[str]:
    """Run a voxrelay subcommand with this interpreter and this source tree."""
    return [sys.executable, "-m", "voxrelay.cli", *args]


def source_root() -> Path:
    return Path(__file__).resolve().parent.parent


async def tcp_open(netns: str | None, host: str, port: int) -> bool:
    """True when a TCP connect to host:port succeeds from inside ``netns``."""

    def connect() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            try:
                s.connect((host, port))
            except OSError:
                return False
            return True

    from orchestrator.netlink import run_in_netns

    return await asyncio.to_thread(run_in_netns, netns, connect)


@dataclass
class LabOptions:
    xdp_mode: str = "generic"
    """XDP mode on the lab's veths. generic works everywhere; native needs the peer program."""
    relays: int = 2
    """Relays in the topology (the second one is for failover)."""
    workdir: Path | None = None
    """Logs and config files; a temporary directory when None (kept on failure)."""
    start_timeout: float = 30.0
    """Seconds each service has to become ready."""


@dataclass(frozen=True)
class RelayHandle:
    """One relay of the lab, as the tests and the demo address it."""

    name: str
    """Relay name: its maps are pinned under /sys/fs/bpf/voxrelay/<name>/."""
    netns: str
    public_if: str
    private_if: str
    public_address: str
    private_address: str
    public_port: int = 3478


@dataclass
class Lab:
    """Handles to everything the lab started. Built by ``start_lab``."""

    options: LabOptions
    workdir: Path
    client_ns: str = ""
    client_if: str = ""
    client_address: str = ""
    transceiver_ns: str = ""
    transceiver_address: str = ""
    """The transceiver's private address: media arrives here only from relays."""
    model_ns: str = ""
    relays: list[RelayHandle] = field(default_factory=list)
    signaling_url: str = ""
    """The transceiver's HTTP API as the client namespace reaches it (through
    the signaling front on the last relay, never the transceiver's own address)."""
    services: dict[str, Service] = field(default_factory=dict)
    topology: object | None = None

    def service(self, name: str, netns: str | None, argv: list[str], **env: str) -> Service:
        svc = Service(name, netns, argv, self.workdir / f"{name}.log", env=dict(env))
        self.services[name] = svc
        return svc

    def relay_stats(self, index: int = 0) -> dict[str, int]:
        """The relay's per-verdict counters, summed over CPUs, by lower-case name."""
        from orchestrator.maps import read_stats  # kernel room: pinned stats map reader

        return dict(read_stats(self.relays[index].name))

    def run_in_client(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on a thread in the client namespace (blocking)."""
        from orchestrator.netlink import run_in_netns

        return run_in_netns(self.client_ns, fn, *args)

    async def client_call(self, coro_fn: Callable[..., Awaitable[T]], *args: object) -> T:
        """Run ``await coro_fn(*args)`` on its own event loop in the client namespace.

        Every socket the coroutine opens (signaling, ICE, DTLS) then belongs to
        the client namespace; the caller's loop stays free meanwhile.
        """
        return await asyncio.to_thread(self.run_in_client, lambda: asyncio.run(coro_fn(*args)))

    def logs(self) -> str:
        return "\n".join(svc.log_tail() for svc in self.services.values())


@contextlib.asynccontextmanager
async def start_lab(options: LabOptions | None = None, progress: Progress | None = None) -> AsyncIterator[Lab]:
    """Build the topology, load the relay, start the services; undo all of it on exit."""
    options = options or LabOptions()
    progress = progress or QuietProgress()
    own_workdir = options.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="voxrelay-lab-")) if own_workdir else Path(options.workdir)  # type: ignore[arg-type]
    workdir.mkdir(parents=True, exist_ok=True)
    lab = Lab(options=options, workdir=workdir)
    async with contextlib.AsyncExitStack() as stack:
        # Services stop before the topology goes: registered later, undone first.
        raise LabError(
            "the lab is not wired yet: it needs voxrelay.topology (host), the relay loader "
            "(kernel/host), the orchestrator (orch), the transceiver (txr) and the model (model)"
        )
        yield lab
