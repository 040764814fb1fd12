# SPDX-License-Identifier: Apache-2.0
"""The relays under test, each set up on the same lab and torn down after.

Every candidate answers the same questions:
- where the client sends (``dst``) and what a load packet looks like;
- how a flow is created (``prime``: a STUN primer with a token, a TURN
  allocation, or nothing for conntrack);
- where ping-pong goes and with what primer/prefix.

All of them deliver load to the transceiver's LOAD_PORT, where the sink XDP
program on t0 counts and drops it, and ping-pong to ECHO_PORT (udpecho).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import xdp
from bench.topo import CLIENT_IP, RELAY_PRIV_IP, TXR_IP, VIP, BenchTopology
from bench.turn import channel_data
from lab.stun import binding_request
from voxrelay.token import mint, new_key

ROOT = Path(__file__).resolve().parent.parent
RELAY_PORT = 3478
PING_SPORT = 30000
SPORT_BASE = 40000
TXR_ID = 1
KEY_ID = 1
PAYLOAD = 200


def rtp_payload(size: int = PAYLOAD) -> bytes:
    """Same bytes udpgen sends by default (RTP v2, PT 111)."""
    return bytes([0x80, 111]) + b"\xa5" * (size - 2)


@dataclass
class Candidate:
    """Base: a candidate that needs no setup (used by subclasses)."""

    key: str
    label: str
    topo: BenchTopology
    work: Path
    dst: tuple[str, int] = (VIP, RELAY_PORT)
    user_cpu: int | None = None       # the core a userspace relay is pinned to
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    attached: xdp.Attached = field(default_factory=xdp.Attached)
    token_key: bytes = field(default_factory=new_key)

    # --- lifecycle -------------------------------------------------------
    def start(self) -> None:
        pass

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        self.procs.clear()
        self.attached.detach_all()
        for name in ("sink", "bpf"):  # bcc modules of this round (re-made by start)
            mod = self.__dict__.pop(name, None)
            if mod is not None:
                with contextlib.suppress(Exception):
                    mod.cleanup()

    # --- load ------------------------------------------------------------
    def load_payload(self) -> bytes | None:
        """None: udpgen's default RTP payload."""
        return None

    def prime_payload(self, port: int) -> bytes | None:
        """The first packet of each flow, or None when none is needed."""
        return binding_request(self.token(port))

    def prime(self, flows: int, gen: Path) -> None:
        payload = self.prime_payload(xdp.LOAD_PORT)
        if payload is None:
            return
        f = self.work / f"prime-{self.key}.bin"
        f.write_bytes(payload)
        subprocess.run(
            self.topo.cmd(self.topo.ns_client, [
                str(gen), "--src", CLIENT_IP, "--dst", self.dst[0], "--dport", str(self.dst[1]),
                "--sport-base", str(SPORT_BASE), "--flows", str(flows), "--count", str(flows),
                "--rate", "20000", "--duration", "10", "--payload-file", str(f),
            ]),
            check=True, capture_output=True, timeout=30,
        )
        time.sleep(0.3)

    # --- ping --------------------------------------------------------------
    supports_ping = True

    def ping_dst(self) -> tuple[str, int]:
        return self.dst

    def ping_args(self) -> list[str]:
        payload = self.prime_payload(xdp.ECHO_PORT)
        if payload is None:
            return []
        f = self.work / f"ping-prime-{self.key}.bin"
        f.write_bytes(payload)
        return ["--prime", str(f)]

    # --- accounting ----------------------------------------------------------
    def cpu_seconds(self) -> float | None:
        """CPU time (user+sys) of the candidate's own process, if it has one."""
        if not self.procs:
            return None
        tck = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for p in self.procs:
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tck
        return total

    def token(self, port: int) -> str:
        return mint(self.token_key, key_id=KEY_ID, transceiver_id=TXR_ID, port=port, ttl=3600)


class GeneratorOnly(Candidate):
    """Baseline: packets end at the relay's public interface (XDP_DROP)."""

    supports_ping = False

    def start(self) -> None:
        self.sink = xdp.load_sink()
        self.attached.attach(self.sink, "xdp_sink", self.topo.ns_relay, self.topo.r_pub)

    def prime_payload(self, port: int) -> bytes | None:
        return None


class Direct(Candidate):
    """Plain kernel forwarding without NAT: the client addresses the
    transceiver itself. The "direct path" for latency."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.dst = (TXR_IP, xdp.LOAD_PORT)

    def prime_payload(self, port: int) -> bytes | None:
        return None

    def ping_dst(self) -> tuple[str, int]:
        return (TXR_IP, xdp.ECHO_PORT)


class Ceiling(Candidate):
    """No-op XDP: rewrite MACs, redirect to the private interface."""

    supports_ping = False

    def start(self) -> None:
        topo = self.topo
        self.bpf = xdp.load_ceiling(topo.ifindex[topo.r_priv], topo.mac[topo.r_priv], topo.mac[topo.t0])
        self.attached.attach(self.bpf, "xdp_ceiling", topo.ns_relay, topo.r_pub)

    def prime_payload(self, port: int) -> bytes | None:
        return None


class Nftables(Candidate):
    """Kernel NAT: DNAT VIP:3478 to the transceiver, masquerade out of the
    private side. The ping-pong client port is DNATed to the echo port."""

    def start(self) -> None:
        topo = self.topo
        rules = f"""
table ip vxbench {{
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {VIP} udp dport {RELAY_PORT} udp sport {PING_SPORT} dnat to {TXR_IP}:{xdp.ECHO_PORT}
    ip daddr {VIP} udp dport {RELAY_PORT} dnat to {TXR_IP}:{xdp.LOAD_PORT}
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{topo.r_priv}" masquerade
  }}
}}
"""
        f = self.work / "nft.conf"
        f.write_text(rules)
        topo.run(topo.ns_relay, ["nft", "-f", str(f)])

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.topo.run(self.topo.ns_relay, ["nft", "delete", "table", "ip", "vxbench"])
        super().stop()

    def prime_payload(self, port: int) -> bytes | None:
        # conntrack creates the flow on the first packet; send an RTP-shaped one
        # so that setup cost is not inside the timed run.
        return rtp_payload()


class UserspacePython(Candidate):
    """bench/userspace_relay.py pinned to its own core."""

    def start(self) -> None:
        topo = self.topo
        argv = [
            sys.executable, "-m", "bench.userspace_relay",
            "--public", f"{VIP}:{RELAY_PORT}", "--private", RELAY_PRIV_IP,
            "--key", f"{KEY_ID}={self.token_key.hex()}", "--transceiver", f"{TXR_ID}={TXR_IP}",
            "--duration", "600",
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        p = subprocess.Popen(topo.cmd(topo.ns_relay, argv, cpu=self.user_cpu), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
        self.procs.append(p)
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"userspace relay did not start: {line!r} {p.stderr.read() if p.stderr else ''}")


class Coturn(Candidate):
    """Debian's coturn, --no-auth, one relay thread pinned to its own core;
    loaded through one TURN allocation + channel per flow."""

    def start(self) -> None:
        topo = self.topo
        argv = [
            "turnserver", "-n", "--no-auth", "--no-tls", "--no-dtls", "--no-tcp",
            "--no-cli", "--listening-ip", VIP, "--listening-port", str(RELAY_PORT),
            "--relay-ip", RELAY_PRIV_IP, "--min-port", "20000", "--max-port", "59999",
            "--relay-threads", "1", "--realm", "bench", "--allowed-peer-ip", TXR_IP,
            "--total-quota", "0", "--user-quota", "0", "--max-bps", "0",
            "--log-file", str(self.work / "coturn.log"), "--simple-log",
            "--pidfile", str(self.work / "coturn.pid"), "--no-stdout-log",
        ]
        p = subprocess.Popen(topo.cmd(topo.ns_relay, argv, cpu=self.user_cpu),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        time.sleep(1.0)
        if p.poll() is not None:
            raise RuntimeError(f"turnserver exited: {p.stderr.read() if p.stderr else ''}")

    def _allocate(self, sport_base: int, flows: int, peer_port: int) -> None:
        topo = self.topo
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        r = subprocess.run(
            topo.cmd(topo.ns_client, [
                sys.executable, "-m", "bench.turn", "--server", f"{VIP}:{RELAY_PORT}",
                "--peer", f"{TXR_IP}:{peer_port}", "--src", CLIENT_IP,
                "--sport-base", str(sport_base), "--flows", str(flows),
            ]),
            capture_output=True, text=True, timeout=240, env=env, check=False,
        )
        if r.returncode != 0:
            raise RuntimeError(f"TURN allocations failed: {r.stdout} {r.stderr[-500:]}")

    def prime(self, flows: int, gen: Path) -> None:
        self._allocate(SPORT_BASE, flows, xdp.LOAD_PORT)

    def load_payload(self) -> bytes | None:
        return channel_data(rtp_payload())

    def ping_args(self) -> list[str]:
        self._allocate(PING_SPORT, 1, xdp.ECHO_PORT)
        f = self.work / "turn-prefix.bin"
        f.write_bytes(channel_data(b"\x00" * PAYLOAD)[:4])
        return ["--prefix-file", str(f)]


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="vxbench-"))
