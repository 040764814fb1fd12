# SPDX-License-Identifier: Apache-2.0
"""The voxrelay XDP relay as a bench candidate (its PROG_TEST_RUN costs: bench/progcost.py).

Compiles bpf/relay.c with the kernel helper's ``orchestrator.bpfprog`` and ``lab.bpftest``
(``compile_relay``, ``load_relay_fn``, ``prog_test_run``) and writes the
config, key and transceiver entries straight into the bcc tables (with the
ctypes types bcc builds from bpf/structs.h). orchestrator/bccmaps.py is the
typed way to do that; the bench uses the raw tables so it depends only on
the C layout, and only for the fields named in bpf/structs.h.

The relay is configured for a load test: no per-source new-flow limit and no
per-token flow cap (the generator opens 10,000 flows from one address with
one token).
"""

from __future__ import annotations

import importlib
import socket
import struct
import time
from typing import Any

from bench.candidates import KEY_ID, RELAY_PORT, TXR_ID, Candidate
from bench.topo import RELAY_PRIV_IP, TXR_IP, VIP, BenchTopology, in_netns

AF_INET = 2
TRANSCEIVER_ACTIVE = 1


def _need(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeError(f"voxrelay XDP relay not available on this branch yet ({exc})") from None


def _be32(ip: str) -> int:
    """An IPv4 address as the __be32 a C struct holds, read as a host integer."""
    return struct.unpack("=I", socket.inet_aton(ip))[0]


def _be16(port: int) -> int:
    return struct.unpack("=H", struct.pack(">H", port))[0]


def configure(bpf: Any, topo: BenchTopology, key: bytes, nh_generation: int = 1) -> None:
    """Write config[0], keys[KEY_ID] and transceivers[TXR_ID]."""
    cfg_t = bpf["config"]
    cfg = cfg_t.Leaf()
    cfg.public_addr.addr[0] = _be32(VIP)
    cfg.private_addr.addr[0] = _be32(RELAY_PRIV_IP)
    cfg.public_port = _be16(RELAY_PORT)
    cfg.family = AF_INET
    cfg.port_min, cfg.port_max = 20000, 59999
    cfg.public_ifindex = topo.ifindex[topo.r_pub]
    cfg.private_ifindex = topo.ifindex[topo.r_priv]
    cfg.new_flows_per_sec = 0
    cfg.max_flows_per_token = 0
    cfg.clock_offset_ns = time.time_ns() - time.monotonic_ns()
    cfg.flow_idle_ns = 600 * 10**9
    cfg.nh_generation = nh_generation
    cfg_t[cfg_t.Key(0)] = cfg

    keys = bpf["keys"]
    k = keys.Leaf()
    k.k0, k.k1 = struct.unpack("<QQ", key)
    k.active = 1
    keys[keys.Key(KEY_ID)] = k

    txrs = bpf["transceivers"]
    t = txrs.Leaf()
    t.addr.addr[0] = _be32(TXR_IP)
    t.family = AF_INET
    t.status = TRANSCEIVER_ACTIVE
    txrs[txrs.Key(TXR_ID)] = t


def stats(bpf: Any) -> dict[int, int]:
    table = bpf["stats"]
    return {int(k.value): int(sum(int(x) for x in v)) for k, v in table.items()}


class VoxRelay(Candidate):
    def start(self) -> None:
        bpfprog = _need("orchestrator.bpfprog")
        topo = self.topo
        self.bpf = bpfprog.compile_relay()
        configure(self.bpf, topo, self.token_key)
        fn = bpfprog.load_relay_fn(self.bpf)
        self.prog_fd = fn.fd
        from bcc import BPF

        for ifname in (topo.r_pub, topo.r_priv):
            with in_netns(topo.ns_relay):
                BPF.attach_xdp(ifname, fn, 0)
            self.attached.links.append((topo.ns_relay, ifname))

    def stop(self) -> None:
        if hasattr(self, "bpf"):
            self.final_stats = stats(self.bpf)
        super().stop()  # also frees this round's maps (each round compiles afresh)

    def in_situ_cost(self, load: Any) -> float | None:
        """Run ``load()`` with BPF_ENABLE_STATS on and return the relay
        program's mean ns per run (public side: the load goes one way)."""
        before = _prog_run_stats(self.prog_fd)
        with _bpf_stats():
            load()
        after = _prog_run_stats(self.prog_fd)
        runs = after[1] - before[1]
        return (after[0] - before[0]) / runs if runs > 0 else None


SYS_BPF = 321            # x86_64
BPF_ENABLE_STATS = 32    # uapi bpf.h enum bpf_cmd
BPF_STATS_RUN_TIME = 0


class _bpf_stats:
    """Kernel run-time accounting of BPF programs while the returned fd is
    open (BPF_ENABLE_STATS): closed, the accounting stops by itself, so a
    crash cannot leave it on for the machine's other users."""

    def __enter__(self) -> None:
        import ctypes
        import os

        libc = ctypes.CDLL(None, use_errno=True)
        attr = (ctypes.c_uint32 * 4)(BPF_STATS_RUN_TIME, 0, 0, 0)
        fd = libc.syscall(SYS_BPF, BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"BPF_ENABLE_STATS failed: {os.strerror(err)}")
        self.fd = fd

    def __exit__(self, *exc: object) -> None:
        import os

        os.close(self.fd)


def _prog_run_stats(prog_fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a program, from its fd's fdinfo."""
    import os

    fields = {}
    with open(f"/proc/{os.getpid()}/fdinfo/{prog_fd}") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k.strip()] = v.strip()
    return int(fields.get("run_time_ns", 0)), int(fields.get("run_cnt", 0))
