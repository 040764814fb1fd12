# SPDX-License-Identifier: Apache-2.0
"""The ICE-TCP front's CPU per forwarded frame, beside the XDP path and coturn's TCP relay.

One lab (``lab.topology.Lab``, one relay), one echo on the transceiver, the
same load for every path: ``--frames`` round trips of a 172-byte payload (an
Opus RTP packet), ``--window`` in flight, from one client socket in the
client namespace. Each round trip is two forwarded frames (to the
transceiver and back). Side by side, in one run:

* **XDP relay**: UDP to VIP:3478 after a STUN Binding Request with a token;
  the cost is the program's own run time (BPF_ENABLE_STATS run_time_ns per
  run), the softirq work around it (veth, redirect) is not in it.
* **TCP front** (``voxrelay tcpfront run``, 1 worker): RFC 4571 frames on
  TCP 443 after the same STUN first frame; the cost is the front process's
  CPU time (all its threads, /proc/<pid>/task/*/schedstat), which holds its
  socket syscalls but not the TCP receive softirq work done on the sender's side.
* **coturn TCP** (``turnserver``, TURN over TCP, a UDP allocation and a
  channel to the echo): ChannelData on TCP 3478; the cost is turnserver's
  CPU time, measured as the front's. Skipped with a note when
  coturn is not installed.

``python -m bench.tcpfront --markdown`` prints the section BENCHMARKS.md
carries (root: namespaces, XDP).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.turn import (
    ALLOCATE,
    CHANNEL,
    CHANNEL_BIND,
    allocate_request,
    channel_bind_request,
    channel_data,
    response_ok,
)
from bench.voxrelay_candidate import _bpf_stats, _prog_run_stats
from lab import stun
from lab.netns import netns_socket
from lab.topology import FRONT_PORT as SIGNALING_PORT
from lab.topology import Lab
from orchestrator import bpfsys, loader, netlink
from orchestrator.tcpfront import frame, read_stats
from voxrelay import token

PAYLOAD = 172
ECHO_PORT = 40000
TCP_FRONT_PORT = 443
COTURN_PORT = 3478
"""coturn's TCP listener on the VIP (UDP 3478 there is the XDP program's)."""
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    path: str
    frames: int
    seconds: float
    cpu_ns: float | None
    """Relay-side CPU ns per forwarded frame (what is counted: see the module docstring)."""
    note: str = ""

    @property
    def rate(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


# --- the transceiver's echo --------------------------------------------------------------


class Echo:
    """Echoes every datagram on the transceiver's ECHO_PORT (a thread; its CPU is not counted)."""

    def __init__(self, lab: Lab) -> None:
        self.sock = netns_socket(lab.transceiver, socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((lab.transceiver_lan.address, ECHO_PORT))
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buf = bytearray(2048)
        while not self.stop.is_set():
            try:
                n, peer = self.sock.recvfrom_into(buf)
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(OSError):
                self.sock.sendto(memoryview(buf)[:n], peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


# --- clients (in the client namespace) -----------------------------------------------------


def _udp_load(sock: socket.socket, frames: int, window: int) -> int:
    """Round trips over a connected UDP socket; returns the replies received."""
    payload = os.urandom(PAYLOAD)
    got = 0
    sock.settimeout(0.5)
    for _ in range(0, frames, window):
        for _ in range(window):
            sock.send(payload)
        for _ in range(window):
            try:
                sock.recv(2048)
            except TimeoutError:
                break
            got += 1
    return got


def _tcp_load(sock: socket.socket, frames: int, window: int, record: bytes, reply: int) -> int:
    """Round trips of ``record`` (already framed) over TCP; each reply is ``reply`` bytes."""
    batch = record * window
    want = reply * window
    got = 0
    for _ in range(0, frames, window):
        sock.sendall(batch)
        left = want
        while left:
            chunk = sock.recv(min(left, 65536))
            if not chunk:
                return got
            left -= len(chunk)
        got += window
    return got


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def _turn_tcp_transact(sock: socket.socket, msg: bytes, rtype: int, txid: bytes) -> bool:
    sock.sendall(msg)
    header = _recv_exact(sock, 20)
    body = _recv_exact(sock, struct.unpack_from(">H", header, 2)[0])
    return response_ok(header + body, rtype, txid)


# --- CPU of a process -------------------------------------------------------------------------


def proc_cpu_ns(pid: int) -> int:
    """CPU time of ``pid``'s threads, in ns (schedstat: ns, not /proc/<pid>/stat's 10 ms ticks)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError):
            total += int(stat.read_text().split()[0])
    return total


@contextlib.contextmanager
def service(lab: Lab, argv: list[str], ready: Callable[[], bool], log: Path) -> Iterator[int]:
    with log.open("ab") as out:
        proc = netlink.popen_in_netns(lab.relay.netns, argv, stdout=out, stderr=subprocess.STDOUT,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)},
                                      process_group=0)
    try:
        deadline = time.monotonic() + 30
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not start: {log.read_text()[-400:]}")
            time.sleep(0.1)
        yield proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _listening(lab: Lab, port: int) -> Callable[[], bool]:
    return lambda: f":{port:04X} 00000000:0000 0A" in lab.read_proc_net(lab.relay.netns, "tcp")


# --- the three paths --------------------------------------------------------------------------


def run_xdp(lab: Lab, ufrag: str, prog_fd: int, frames: int, window: int) -> Result:
    def load() -> tuple[int, float]:
        def go() -> tuple[int, float]:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect(lab.relay.vip)
                s.settimeout(2)
                s.send(stun.binding_request(ufrag))
                s.recv(2048)  # the echo of the request: the flow exists
                started = time.monotonic()
                got = _udp_load(s, frames, window)
                return got, time.monotonic() - started
        return lab.run(lab.client, go)

    before = _prog_run_stats(prog_fd)
    with _bpf_stats():
        got, seconds = load()
    after = _prog_run_stats(prog_fd)
    runs = after[1] - before[1]
    cost = (after[0] - before[0]) / runs if runs else None
    return Result("XDP relay (program run time)", 2 * got, seconds, cost)


def run_front(lab: Lab, ufrag: str, work: Path, frames: int, window: int) -> Result:
    stats = work / "tcpfront.stats"
    config = work / "tcpfront.toml"
    relay = lab.relay
    config.write_text(
        "[relay]\n"
        f'name = "{relay.name}"\npublic_address = "{relay.public.address}"\n'
        f'private_address = "{relay.private.address}"\n'
        f"public_tcp_ports = [{SIGNALING_PORT}, {TCP_FRONT_PORT}, {COTURN_PORT}]\n"
        "[tcpfront]\n"
        # One worker: its pid is the process whose CPU is measured (workers = 0,
        # the default, would start one per CPU under a supervisor that does no work).
        f'port = {TCP_FRONT_PORT}\nworkers = 1\nstats_file = "{stats}"\nmetrics_listen = ""\n')
    argv = [sys.executable, "-m", "voxrelay.cli", "tcpfront", "run", "--config", str(config)]
    with service(lab, argv, _listening(lab, TCP_FRONT_PORT), work / "tcpfront.log") as pid:
        def go() -> tuple[int, float]:
            with socket.create_connection((relay.public.address, TCP_FRONT_PORT), 5) as s:
                s.sendall(frame(stun.binding_request(ufrag)))
                first = _recv_exact(s, 2)
                _recv_exact(s, int.from_bytes(first, "big"))
                started = time.monotonic()
                got = _tcp_load(s, frames, window, frame(os.urandom(PAYLOAD)), 2 + PAYLOAD)
                return got, time.monotonic() - started

        cpu0 = proc_cpu_ns(pid)
        got, seconds = lab.run(lab.client, go)
        cpu1 = proc_cpu_ns(pid)
        counted = read_stats(stats)
    forwarded = counted["frames_to_transceiver"] + counted["frames_to_client"]
    note = f"{forwarded} frames counted by the front"
    return Result("TCP front, 1 worker (process CPU)", 2 * got, seconds,
                  (cpu1 - cpu0) / (2 * got) if got else None, note)


def run_coturn(lab: Lab, work: Path, frames: int, window: int) -> Result:
    import shutil

    if shutil.which("turnserver") is None:
        return Result("coturn TCP relay", 0, 0, None,
                      "not measured: coturn is not installed (apt install coturn)")
    relay = lab.relay
    argv = ["turnserver", "-n", "--no-auth", "--no-tls", "--no-dtls", "--no-udp", "--no-cli",
            "--listening-ip", relay.public.address, "--listening-port", str(COTURN_PORT),
            "--relay-ip", relay.private.address, "--min-port", "62000", "--max-port", "62999",
            "--relay-threads", "1", "--realm", "bench",
            "--allowed-peer-ip", lab.transceiver_lan.address,
            "--total-quota", "0", "--user-quota", "0", "--max-bps", "0",
            "--log-file", str(work / "coturn.log"), "--simple-log", "--no-stdout-log",
            "--pidfile", str(work / "coturn.pid")]
    peer = (lab.transceiver_lan.address, ECHO_PORT)
    with service(lab, argv, _listening(lab, COTURN_PORT), work / "coturn.out") as pid:
        def go() -> tuple[int, float]:
            with socket.create_connection((relay.public.address, COTURN_PORT), 5) as s:
                t1, t2 = os.urandom(12), os.urandom(12)
                if not (_turn_tcp_transact(s, allocate_request(t1), ALLOCATE, t1)
                        and _turn_tcp_transact(s, channel_bind_request(t2, peer), CHANNEL_BIND,
                                               t2)):
                    raise RuntimeError("coturn refused the allocation or the channel")
                record = channel_data(os.urandom(PAYLOAD), CHANNEL)
                started = time.monotonic()
                got = _tcp_load(s, frames, window, record, len(record))
                return got, time.monotonic() - started

        cpu0 = proc_cpu_ns(pid)
        got, seconds = lab.run(lab.client, go)
        cpu1 = proc_cpu_ns(pid)
    return Result("coturn TCP relay, 1 relay thread (process CPU)", 2 * got, seconds,
                  (cpu1 - cpu0) / (2 * got) if got else None)


# --- all of it --------------------------------------------------------------------------------


def measure(frames: int, window: int) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="voxrelay-bench-tcp-") as tmp, Lab() as lab:
        work = Path(tmp)
        status = lab.load_relay(public_tcp_ports=[SIGNALING_PORT, TCP_FRONT_PORT, COTURN_PORT])
        maps = loader.open_maps(lab.relay.name)
        key = token.new_key()
        maps.set_key(1, key)
        maps.set_transceiver(1, lab.transceiver_lan.address)
        del maps  # bcc's fds closed before the lab unpins
        assert status.prog_id is not None
        prog_fd = bpfsys.prog_fd_by_id(status.prog_id)
        echo = Echo(lab)
        try:
            def mint() -> str:
                return token.mint(key, key_id=1, transceiver_id=1, port=ECHO_PORT)

            results.append(run_xdp(lab, mint(), prog_fd, frames, window))
            results.append(run_front(lab, mint(), work, frames, window))
            try:
                results.append(run_coturn(lab, work, frames, window))
            except (RuntimeError, OSError) as exc:
                results.append(Result("coturn TCP relay", 0, 0, None, f"not measured: {exc}"))
        finally:
            echo.close()
            bpfsys.close(prog_fd)
    return results


def markdown(results: list[Result], frames: int, window: int) -> str:
    lines = [
        "## ICE-TCP front: CPU per forwarded frame (bench/tcpfront.py)",
        "",
        (f"One lab, one run: {frames:,} round trips of a {PAYLOAD}-byte payload, {window} in "
        "flight, from one client socket to a UDP echo on the transceiver (two forwarded "
        "frames per round trip). The XDP figure is the program's own run time "
        "(BPF_ENABLE_STATS); the TCP front's and coturn's are their process's CPU time "
        "(schedstat, all threads), which holds their socket syscalls but not the TCP receive softirq that runs "
        "on the sender's side. Rates are this Python client's, not a ceiling."),
        "",
        "| path | frames forwarded | frames/s | relay CPU per frame | note |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        cost = f"{r.cpu_ns / 1000:.2f} µs" if r.cpu_ns is not None else "n/a"
        lines.append(f"| {r.path} | {r.frames:,} | {r.rate:,.0f} | {cost} | {r.note} |")
    xdp, front = results[0].cpu_ns, results[1].cpu_ns
    if xdp and front:
        lines += ["", (f"The TCP front costs {front / xdp:.0f}x the XDP program per frame: "
                       "it is the fallback for callers without UDP, not the media path.")]
    lines += ["", (
        f"Host: {os.uname().nodename}, kernel {os.uname().release}, {os.cpu_count()} CPUs "
        f"shared with other work; `python -m bench.tcpfront --markdown --frames {frames}` "
        f"({time.strftime('%Y-%m-%d', time.gmtime())}). The front runs 1 worker (`[tcpfront] "
        "workers` starts one per core on one SO_REUSEPORT port; not measured here: one client "
        "connection lands on one worker). Per frame it pays its own syscalls: one UDP `send` "
        "per frame and a TCP read shared by the frames of a segment one way, one UDP `recv` "
        "per datagram and one TCP write per burst the other; that puts it beside coturn's C, "
        "and a caller takes this path only when UDP is blocked.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--frames", type=int, default=20000, help="round trips per path")
    ap.add_argument("--window", type=int, default=16, help="round trips in flight")
    ap.add_argument("--markdown", action="store_true", help="print the BENCHMARKS.md section")
    args = ap.parse_args(argv)
    results = measure(args.frames, args.window)
    if args.markdown:
        print(markdown(results, args.frames, args.window))
    else:
        for r in results:
            cost = f"{r.cpu_ns:.0f} ns" if r.cpu_ns is not None else "n/a"
            print(f"{r.path}: {r.frames} frames in {r.seconds:.2f} s, {cost}/frame {r.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
