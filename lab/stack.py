# SPDX-License-Identifier: Apache-2.0
"""A running voxrelay stack in network namespaces: the demo's and the whole-chain tests' ``Stack``.

``lab.topology.Lab`` builds the namespaces and links; ``start_stack`` starts the
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
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from lab.topology import Lab
    from orchestrator.probe import ProbeResult
    from orchestrator.relay import FlowEntry
    from voxrelay.config import RelayConfig

T = TypeVar("T")


class StackError(RuntimeError):
    """A step of ``start_stack`` failed; the message says which step and shows the service's log."""


class Progress(Protocol):
    """Where ``start_stack`` reports its setup steps (the demo prints them; tests log them)."""

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


_NOTABLE = ("closing:", "consent", "WARNING", "ERROR", "Traceback")
"""Marks of the log lines ``Service.log_notable`` keeps."""


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

        # The child holds its own copy of the descriptor; ours closes on leaving.
        with open(self.log_path, "ab") as log:
            self.proc = popen_in_netns(
                self.netns,
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                process_group=0,
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"({self.name}: no log)"
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(text)

    def log_notable(self, limit: int = 60) -> str:
        """The log's last ``limit`` lines that say why a call closed or what went wrong."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"({self.name}: no log)"
        notable = [line for line in text
                   if any(mark in line for mark in _NOTABLE) and "ended by DELETE" not in line]
        return f"--- notable lines of {self.log_path} ---\n" + "\n".join(notable[-limit:])

    async def wait_ready(self, probe: Callable[[], Awaitable[bool]], timeout: float) -> None:
        """Poll ``probe`` until it is true; fail early, with the log, if the process exits."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if not self.running():
                code = self.proc.returncode if self.proc is not None else None
                raise StackError(f"{self.name} exited with status {code} while starting\n{self.log_tail()}")
            if await probe():
                return
            await asyncio.sleep(0.1)
        raise StackError(f"{self.name} not ready after {timeout:.0f} s\n{self.log_tail()}")

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
class StackOptions:
    xdp_mode: str = "native"
    """XDP mode on the lab's veths: native (the peers run XDP_PASS) or generic."""
    relays: int = 2
    """Relays in the topology (the second one is for failover)."""
    workdir: Path | None = None
    """Logs and config files; a temporary directory when None (removed on a clean exit)."""
    model_streams: int = 16
    """The model's --max-streams, and the transceiver's model_streams to match."""
    start_timeout: float = 60.0
    """Seconds each service has to become ready (bcc compiles and model loading are slow on 2 cores)."""
    cors_origins: tuple[str, ...] = ()
    """The transceiver's ``cors_origins``: web origins besides its own that may call."""
    tcp_front: bool = False
    """Run the ICE-TCP front (``voxrelay tcpfront run``) on relay 1's port 443, list
    443 in its ``public_tcp_ports`` and advertise ``tcp=443`` for it in the answer."""
    tcp_front_settings: dict[str, object] = field(default_factory=dict)
    """Extra ``[tcpfront]`` settings for it (limits, timeouts)."""
    public_nets: tuple[str, str] | None = None
    """The relays' public /24s (``lab.topology.Lab.public_nets``); None: the lab's default."""
    signaling_tls: tuple[Path, Path] | None = None
    """(certificate, key) PEM files: the signaling front serves HTTPS with them
    (``lab.tlsfront``) and ``signaling_url`` is https://. ``voxrelay lab up``
    sets it, since a browser grants the microphone only to a secure page."""
    relay_runner: Callable[[str, Path], list[str]] | None = None
    """Runs each relay some other way than this process's loader and a child
    orchestrator: called with the relay's namespace and a config file holding
    both its ``[relay]`` and ``[orchestrator]`` tables, it returns the argv of
    one process (started in the caller's namespace) that loads the relay from
    that file and then runs the orchestrator, as the relay image does
    (tests/netns/test_image.py runs it with podman)."""
    transceiver_workers: int = 1
    """``[transceiver] workers``: 1 runs the one process (ids and ports as before);
    N runs N workers (ids TRANSCEIVER_ID..+N-1) behind the transceiver's own front."""
    transceiver_settings: dict[str, object] = field(default_factory=dict)
    """Extra ``[transceiver]`` settings (e.g. worker_restart_seconds)."""
    ipv6: bool = False
    """Dual stack: IPv6 on the client side (``Lab(ipv6=True)``), each relay's
    IPv6 VIP in its config and in the answer, after its IPv4 one."""


@dataclass(frozen=True)
class RelayHandle:
    """One relay of the stack, as the tests and the demo address it."""

    name: str
    """Relay name: its maps are pinned under /sys/fs/bpf/voxrelay/<name>/."""
    netns: str
    public_if: str
    private_if: str
    public_address: str
    private_address: str
    public_port: int = 3478
    public_address6: str = ""
    """Its IPv6 VIP (``StackOptions.ipv6``), or ""."""


# Ports of the lab's services (each in its own namespace, so fixed numbers are safe).
DIRECTORY_PORT = 7480
SIGNALING_PORT = 8080
"""The transceiver's HTTP port, and the front's (``lab.topology.FRONT_PORT``)."""
MODEL_PORT = 50051
TCP_FRONT_PORT = 443
"""The ICE-TCP front's port on relay 1's public address (``StackOptions.tcp_front``)."""
TCP_FRONT_STATS = "tcpfront.stats"
"""Its counters file in the stack's workdir (relay 1's orchestrator reads it too)."""
ORCHESTRATOR_METRICS = "127.0.0.1:9478"
"""Every orchestrator's /metrics, on loopback in its relay's namespace."""
TRANSCEIVER_ID = 1
REBIND_HOST = 50
"""Host part of the client's second address on relay 1's subnet (address-change test)."""


@dataclass
class Stack:
    """The running stack: handles to every service ``start_stack`` started on its
    ``lab.topology.Lab`` (``topology``), and the addresses to reach them."""

    options: StackOptions
    workdir: Path
    client_ns: str = ""
    client_if: str = ""
    """The client's interface towards relay 1."""
    client_address: str = ""
    client_mac: str = ""
    client_rebind_address: str = ""
    """A free address on the client's relay-1 subnet, for the address-change test."""
    transceiver_ns: str = ""
    transceiver_address: str = ""
    """The transceiver's private address: media arrives here only from relays."""
    transceiver_signaling_port: int = SIGNALING_PORT
    transceiver_id: int = TRANSCEIVER_ID
    model_ns: str = ""
    model_address: str = ""
    directory_url: str = ""
    """The embedded directory (orchestrator of relay 1), on the private side."""
    directory_secret_file: Path | None = None
    """The directory secret every service of the lab shares (in ``workdir``)."""
    api_key: str = ""
    """The transceiver's signaling API key: what a backend (or an aiortc client,
    which sends no Origin) presents; browsers get a client secret minted with it."""
    relays: list[RelayHandle] = field(default_factory=list)
    signaling_url: str = ""
    """The transceiver's HTTP API as the client namespace reaches it (through
    the signaling front on the last relay, never the transceiver's own address)."""
    services: dict[str, Service] = field(default_factory=dict)
    topology: Lab | None = None
    """The namespaces and links the services run in (built first, removed last)."""
    tcp_front_stats_file: Path | None = None
    """The ICE-TCP front's counters file, when ``StackOptions.tcp_front``."""

    def orchestrator_metrics(self, index: int = 0) -> str:
        """The /metrics text of relay ``index + 1``'s orchestrator (fetched in its namespace)."""
        import urllib.request

        from orchestrator.netlink import run_in_netns

        def fetch() -> str:
            url = f"http://{ORCHESTRATOR_METRICS}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                return str(response.read().decode())

        return run_in_netns(self.relays[index].netns, fetch)

    def tcp_front_stats(self) -> dict[str, int]:
        """The ICE-TCP front's counters (``orchestrator.tcpfront.COUNTERS`` names)."""
        from orchestrator.tcpfront import read_stats

        assert self.tcp_front_stats_file is not None, "the stack runs no TCP front"
        return read_stats(self.tcp_front_stats_file)

    def service(self, name: str, netns: str | None, argv: list[str], **env: str) -> Service:
        svc = Service(name, netns, argv, self.workdir / f"{name}.log", env=dict(env))
        self.services[name] = svc
        return svc

    def relay_stats(self, index: int = 0) -> dict[str, int]:
        """The relay's per-verdict counters, summed over CPUs, by lower-case name
        (``fwd_to_client``...), read straight from the pinned stats map."""
        return read_relay_stats(self.relays[index].name)

    def relay_flows(self, index: int = 0) -> list[FlowEntry]:
        """Relay ``index``'s flows with their media telemetry (from its pins)."""
        from orchestrator.pinview import open_pinview

        with open_pinview(self.relays[index].name) as view:
            return view.flows()

    def relay_transceivers(self, index: int = 0) -> dict[int, str]:
        """Relay ``index``'s transceivers map: id -> "active" | "draining" (from its pins)."""
        from orchestrator.pinview import open_pinview

        with open_pinview(self.relays[index].name) as view:
            return {i: t.status for i, t in view.transceivers().items()}

    def transceiver_announced(self) -> bool:
        """True when the embedded directory holds the lab's transceiver's record
        (whatever the operator's intent), read from relay 1's namespace. It asks
        with a heartbeat, which is the one read that sees a removed record; its
        load of 0 lasts until the transceiver's own next beat."""
        from orchestrator.netlink import run_in_netns

        def ask() -> bool:
            import json
            import urllib.error
            import urllib.request

            request = urllib.request.Request(  # noqa: S310 - our own http:// URL
                f"{self.directory_url}/v1/transceivers/{self.transceiver_id}/heartbeat",
                data=b"{}", method="POST",
                headers={"Authorization": f"Bearer {self.directory_secret}",
                         "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
                    return bool(json.loads(response.read()).get("id"))
            except (urllib.error.URLError, OSError):
                return False

        return run_in_netns(self.relays[0].netns, ask)

    def probe_new_flow(self, index: int = 0, timeout: float = 0.3) -> ProbeResult:
        """One STUN probe from the client namespace through relay ``index``, on a
        new flow to the transceiver's probe responder (a fresh probe token minted
        with the directory's current key); blocking, one attempt."""
        from orchestrator.netlink import run_in_netns
        from orchestrator.probe import ProbeResult, probe
        from voxrelay.directory import connect
        from voxrelay.probe import DEFAULT_PROBE_PORT, mint_probe_token

        async def keyring():  # type: ignore[no-untyped-def]
            directory = connect(self.directory_url, secret=self.directory_secret)
            try:
                return await directory.keyring()
            finally:
                await directory.close()

        relay = self.relays[index]
        ring = run_in_netns(self.relays[0].netns, lambda: asyncio.run(keyring()))
        if ring.current is None:
            return ProbeResult(False, f"{relay.public_address}:{relay.public_port}",
                               self.transceiver_id, reason="the directory has no token key yet")
        ufrag = mint_probe_token(ring.keys, ring.current, self.transceiver_id, DEFAULT_PROBE_PORT)
        return run_in_netns(self.client_ns, probe, (relay.public_address, relay.public_port),
                            ufrag, timeout=timeout, attempts=1, transceiver_id=self.transceiver_id)

    def run_in_client(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on a thread in the client namespace (blocking)."""
        from orchestrator.netlink import run_in_netns

        return run_in_netns(self.client_ns, fn, *args)

    async def client_call(
        self, coro_fn: Callable[..., Coroutine[Any, Any, T]], *args: object
    ) -> T:
        """Run ``await coro_fn(*args)`` on its own event loop in the client namespace.

        Every socket the coroutine opens (signaling, ICE, DTLS) then belongs to
        the client namespace; the caller's loop stays free meanwhile.
        """
        return await asyncio.to_thread(self.run_in_client, lambda: asyncio.run(coro_fn(*args)))

    def logs(self, lines: int = 20) -> str:
        """The last ``lines`` of every service's log, after each one's notable lines."""
        return "\n".join(svc.log_notable() + "\n" + svc.log_tail(lines)
                         for svc in self.services.values())

    @property
    def directory_secret(self) -> str:
        from voxrelay.secrets import load_secrets

        assert self.directory_secret_file is not None, "the stack is not started"
        return load_secrets(self.directory_secret_file)[0]

    async def client_secret(self, seconds: float | None = None) -> dict[str, Any]:
        """Mint an ephemeral client secret as an application backend would
        (POST /v1/realtime/client_secrets with the API key, from the client
        namespace): ``{"value": "ek_...", "expires_at": ...}``."""
        import aiohttp

        body = {} if seconds is None else {"expires_after": {"seconds": seconds}}

        async def mint() -> dict[str, Any]:
            # The lab's TLS front has a self-signed certificate (StackOptions.signaling_tls).
            async with aiohttp.ClientSession() as session, session.post(
                f"{self.signaling_url}/v1/realtime/client_secrets", json=body,
                headers={"Authorization": f"Bearer {self.api_key}"},
                ssl=not self.signaling_url.startswith("https:"),
            ) as response:
                payload: dict[str, Any] = await response.json()
                if response.status != 200:
                    raise StackError(f"minting a client secret: {response.status} {payload}")
                return payload

        return await self.client_call(mint)


def read_relay_stats(relay_name: str) -> dict[str, int]:
    """Counters of a loaded relay (label -> sum over CPUs), read from its pins.

    Through ``orchestrator.pinview``, so that reading them needs no bcc
    compile (which ``loader.open_maps`` does, and which costs seconds of CPU
    per call).
    """
    from orchestrator.pinview import open_pinview

    with open_pinview(relay_name) as view:
        return view.stats()


def _remove_empty_pin_root() -> None:
    """/sys/fs/bpf/voxrelay itself, if the lab's relays were the last ones in it."""
    from orchestrator import pins

    root = pins.pin_dir_for("x").parent
    with contextlib.suppress(OSError):  # not empty (another relay) or already gone
        root.rmdir()


def _write_toml(path: Path, tables: dict[str, dict[str, object]]) -> Path:
    import json

    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            # JSON strings, numbers and lists of strings are valid TOML values.
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def _relay_table(relay: RelayConfig) -> dict[str, object]:
    """A ``[relay]`` table for ``_write_toml``: every field of ``relay``."""
    import dataclasses

    return {f.name: getattr(relay, f.name) for f in dataclasses.fields(relay)}


async def _probe_through_relays(running: Stack, deadline: float) -> None:
    """Wait until a STUN probe from the client namespace comes back through every
    relay: the key is in the relay's map, the transceiver is in it, and the
    transceiver's probe responder answers (orchestrator/probe.py)."""
    loop = asyncio.get_running_loop()
    pending = list(running.relays)
    reason = "no probe sent"
    while pending:
        if loop.time() > deadline:
            try:
                stats = {k: v for k, v in read_relay_stats(pending[0].name).items() if v}
            except OSError as exc:
                stats = {"unreadable": str(exc)}  # type: ignore[dict-item]
            raise StackError(
                f"relay {pending[0].name} does not forward to the transceiver: {reason}\n"
                f"relay counters: {stats}\n{running.logs()}"
            )
        for name, svc in running.services.items():
            if not svc.running():
                raise StackError(f"{name} exited while the lab was starting\n{svc.log_tail()}")
        result = await asyncio.to_thread(running.probe_new_flow, running.relays.index(pending[0]))
        if result.ok:
            pending.pop(0)
        else:
            reason = result.reason
            await asyncio.sleep(0.2)


async def _start_tcp_front(running: Stack, host: Any, env: dict[str, str]) -> None:
    """``voxrelay tcpfront run`` in relay 1's namespace, ready when its port listens
    (read from /proc/net/tcp, so that readiness costs the front no connection)."""
    from lab import topology

    running.tcp_front_stats_file = running.workdir / TCP_FRONT_STATS
    config = _write_toml(running.workdir / "tcpfront.toml", {
        "relay": {"name": host.name, "public_interface": host.public.ifname,
                  "private_interface": host.private.ifname,
                  "public_address": host.public.address, "private_address": host.private.address,
                  # dual stack: the front listens on the IPv6 VIP too
                  **({"public_address6": host.public6.address} if host.public6 else {}),
                  "public_tcp_ports": [topology.FRONT_PORT, TCP_FRONT_PORT]},
        "tcpfront": {"port": TCP_FRONT_PORT, "stats_file": str(running.tcp_front_stats_file),
                     "metrics_listen": "127.0.0.1:9479", **running.options.tcp_front_settings},
    })
    svc = running.service("tcpfront", host.netns,
                          python_argv("tcpfront", "run", "--config", str(config)), **env)
    svc.start()
    topo = running.topology
    assert topo is not None
    listening = f":{TCP_FRONT_PORT:04X} 00000000:0000 0A"

    async def listens() -> bool:
        text = await asyncio.to_thread(topo.read_proc_net, host.netns, "tcp")
        return listening in text

    await svc.wait_ready(listens, running.options.start_timeout)


@contextlib.asynccontextmanager
async def start_stack(options: StackOptions | None = None, progress: Progress | None = None) -> AsyncIterator[Stack]:
    """Build the topology, load the relay, start the services; undo all of it on exit.

    * relay 1's orchestrator runs the embedded directory (on its private
      address); relay 2's orchestrator syncs its maps from that directory;
    * the transceiver announces itself there, mints tokens with its keys and
      advertises both relays' VIPs, relay 1 first;
    * the signaling front (``lab.tcpfront``) on the last relay's public
      side stands in for a public load balancer in front of the transceiver's
      HTTP API; it is the only way the client reaches that API.

    Ready means: a STUN probe from the client namespace comes back from the
    transceiver through every relay.
    """
    from lab import topology

    options = options or StackOptions()
    progress = progress or QuietProgress()
    own_workdir = options.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="voxrelay-lab-")) if own_workdir else Path(options.workdir)  # type: ignore[arg-type]
    workdir.mkdir(parents=True, exist_ok=True)
    running = Stack(options=options, workdir=workdir)
    loop = asyncio.get_running_loop()
    env = {"PYTHONPATH": str(source_root())}
    clean_exit = False
    try:
        async with contextlib.AsyncExitStack() as undo:
            # pyroute2's blocking API cannot run inside an event loop: the
            # topology is built and removed on a worker thread (which also keeps
            # its SIGTERM handler out of our loop: ``_run`` in demo.py owns it).
            topo = topology.Lab(relays=options.relays, xdp_mode=options.xdp_mode,
                                ipv6=options.ipv6)
            if options.public_nets is not None:
                topo.public_nets = options.public_nets
            running.topology = topo
            with progress.step(f"building namespaces (client, {options.relays} relay(s), transceiver, model)"):
                undo.push_async_callback(asyncio.to_thread, _remove_empty_pin_root)
                undo.push_async_callback(asyncio.to_thread, topo.close)
                await asyncio.to_thread(topo.__enter__)
            running.client_ns = topo.client
            running.transceiver_ns = topo.transceiver
            running.transceiver_address = topo.transceiver_lan.address
            running.model_ns = topo.model
            running.model_address = topo.model_lan.address
            for host in topo.relay_hosts:
                running.relays.append(RelayHandle(
                    host.name, host.netns, host.public.ifname, host.private.ifname,
                    host.public.address, host.private.address,
                    public_address6=host.public6.address if host.public6 else ""))
            # The relays' own TCP (orchestrator 2 -> the directory on relay 1,
            # the signaling front -> the transceiver) crosses another relay's
            # native-XDP veth; a CHECKSUM_PARTIAL packet is not completed on
            # that path, so the relays' private sides send full checksums.
            from lab.netns import set_tx_checksum

            for host in topo.relay_hosts:
                await asyncio.to_thread(set_tx_checksum, host.private.ifname, False, host.netns)
            first = topo.relay_hosts[0]
            running.client_if = first.client_side.ifname
            running.client_address = first.client_side.address
            running.client_mac = first.client_side.mac
            running.client_rebind_address = first.client_side.address.rsplit(".", 1)[0] + f".{REBIND_HOST}"
            running.directory_url = f"http://{first.private.address}:{DIRECTORY_PORT}"
            # The lab's secrets, made the way a one-host deployment makes them
            # (voxrelay.secrets), in the workdir instead of /var/lib/voxrelay.
            from voxrelay.secrets import write_secret_file

            running.directory_secret_file = workdir / "directory.secret"
            write_secret_file(running.directory_secret_file)
            api_key_file = workdir / "api-key"
            running.api_key = write_secret_file(api_key_file)

            # Services stop before the topology goes: registered later, undone first.
            async def stop_services() -> None:
                for svc in reversed(list(running.services.values())):
                    await svc.stop()

            undo.push_async_callback(stop_services)

            with progress.step(f"loading the XDP relay ({options.xdp_mode}) on {len(running.relays)} relay(s)"):
                for index in range(len(running.relays) if options.relay_runner is None else 0):
                    tcp_ports: dict[str, Any] = ({"public_tcp_ports": [topology.FRONT_PORT, TCP_FRONT_PORT]}
                                 if options.tcp_front and index == 0 else {})
                    await asyncio.to_thread(topo.load_relay, index, **tcp_ports)

            with progress.step("starting the orchestrator (embedded directory) and the model server"):
                orchestrators = []
                for index, host in enumerate(topo.relay_hosts):
                    config = _write_toml(workdir / f"orchestrator-{index + 1}.toml", {
                        "relay": {"name": host.name},
                        "orchestrator": {
                            "directory": "embedded" if index == 0 else running.directory_url,
                            "listen": f"{host.private.address}:{DIRECTORY_PORT}",
                            "metrics_listen": ORCHESTRATOR_METRICS,
                            "directory_secret_file": str(running.directory_secret_file),
                            "state_dir": str(workdir / f"state-{index + 1}"),
                        },
                        # Relay 1's orchestrator reads the ICE-TCP front's counters
                        # (its /metrics carries them), as on a production relay host.
                        **({"tcpfront": {"stats_file": str(workdir / TCP_FRONT_STATS)}}
                           if options.tcp_front and index == 0 else {}),
                    })
                    if options.relay_runner is None:
                        svc = running.service(f"orchestrator-{index + 1}", host.netns,
                                          python_argv("orchestrator", "run", "-v", "--config", str(config)),
                                          **env)
                    else:
                        # The runner loads the relay itself: the whole [relay] table, beside
                        # the orchestrator's, in the one file it is given.
                        relay_table = _relay_table(host.relay_config(
                            xdp_mode=options.xdp_mode,
                            **({"public_tcp_ports": [topology.FRONT_PORT, TCP_FRONT_PORT]}
                               if options.tcp_front and index == 0 else {})))
                        config = _write_toml(config, {**tomllib.loads(config.read_text()),
                                                      "relay": relay_table})
                        svc = running.service(f"orchestrator-{index + 1}", None,
                                              options.relay_runner(host.netns, config))
                    orchestrators.append(svc)
                model = running.service("model", running.model_ns, python_argv(
                    "model", "serve", "--listen", f"{running.model_address}:{MODEL_PORT}", "--reply", "echo",
                    "--max-streams", str(options.model_streams)), **env)
                # The directory first: the second orchestrator syncs from it.
                orchestrators[0].start()
                model.start()
                await orchestrators[0].wait_ready(
                    lambda: tcp_open(first.netns, first.private.address, DIRECTORY_PORT), options.start_timeout)
                for svc in orchestrators[1:]:
                    svc.start()
                await model.wait_ready(
                    lambda: tcp_open(running.model_ns, running.model_address, MODEL_PORT), options.start_timeout)

            with progress.step("starting the transceiver and its signaling front"):
                relays = [f"{r.public_address}:{r.public_port}" for r in running.relays]
                if options.tcp_front:
                    relays[0] += f" tcp={TCP_FRONT_PORT}"
                # A dual-stack relay is listed once per VIP; the TCP front listens on both.
                relays += [f"[{r.public_address6}]:{r.public_port}"
                           + (f" tcp={TCP_FRONT_PORT}" if options.tcp_front and i == 0 else "")
                           for i, r in enumerate(running.relays) if r.public_address6]
                config = _write_toml(workdir / "transceiver.toml", {"transceiver": {
                    "id": TRANSCEIVER_ID,
                    "listen": f"{running.transceiver_address}:{SIGNALING_PORT}",
                    "private_address": running.transceiver_address,
                    "relays": relays,
                    "directory": running.directory_url,
                    "model": f"{running.model_address}:{MODEL_PORT}",
                    "drain_grace_seconds": 1.0,
                    "directory_secret_file": str(running.directory_secret_file),
                    "api_key_file": str(api_key_file),
                    "cors_origins": list(options.cors_origins),
                    "model_streams": options.model_streams,
                    "workers": options.transceiver_workers,
                    **options.transceiver_settings,
                }})
                # -v: every call's closing reason is in its log (and in a failing test's report).
                txr = running.service("transceiver", running.transceiver_ns,
                                  python_argv("transceiver", "run", "-v", "--config", str(config)),
                                  **env)
                txr.start()
                await txr.wait_ready(
                    lambda: tcp_open(running.transceiver_ns, running.transceiver_address, SIGNALING_PORT),
                    options.start_timeout)
                front_relay = topo.relay_hosts[-1]
                front_argv = [sys.executable, "-m", "lab.tcpfront"]
                scheme = "http"
                if options.signaling_tls is not None:
                    cert, key = options.signaling_tls
                    front_argv = [sys.executable, "-m", "lab.tlsfront", "--cert", str(cert),
                                  "--key", str(key)]
                    scheme = "https"
                front = running.service("signaling-front", front_relay.netns, [
                    *front_argv,
                    f"{front_relay.public.address}:{SIGNALING_PORT}",
                    f"{running.transceiver_address}:{SIGNALING_PORT}"], **env)
                front.start()
                await front.wait_ready(
                    lambda: tcp_open(running.client_ns, front_relay.public.address, SIGNALING_PORT),
                    options.start_timeout)
                running.signaling_url = f"{scheme}://{front_relay.public.address}:{SIGNALING_PORT}"

            if options.tcp_front:
                with progress.step(f"starting the ICE-TCP front on relay 1's port {TCP_FRONT_PORT}"):
                    await _start_tcp_front(running, first, env)

            with progress.step("waiting until a STUN probe reaches the transceiver through every relay"):
                await _probe_through_relays(running, loop.time() + options.start_timeout)
            yield running
        clean_exit = True
    finally:
        if own_workdir and clean_exit:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
