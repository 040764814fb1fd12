# SPDX-License-Identifier: Apache-2.0
"""The bench's own XDP programs (bench/xdp/*.c), loaded with bcc.

``Attached`` remembers every (namespace, interface) it attached to, and
``detach_all`` removes them, so a failed run leaves no program behind (the
namespaces are deleted anyway, which also drops their programs).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.topo import in_netns

XDP_DIR = Path(__file__).parent / "xdp"
ECHO_PORT = 7000   # ping-pong port: the sink passes it to the stack
LOAD_PORT = 5004   # the transceiver port load is sent to (counted, dropped)


def _mac_bytes(mac: str) -> str:
    return ",".join(f"0x{b}" for b in mac.split(":"))


@dataclass
class Attached:
    links: list[tuple[str, str]] = field(default_factory=list)
    modules: list[Any] = field(default_factory=list)

    def attach(self, bpf: Any, fn_name: str, ns: str, ifname: str) -> None:
        from bcc import BPF

        fn = bpf.load_func(fn_name, BPF.XDP)
        with in_netns(ns):
            BPF.attach_xdp(ifname, fn, 0)
        self.links.append((ns, ifname))

    def detach(self, ns: str, ifname: str) -> None:
        from bcc import BPF

        with in_netns(ns):
            BPF.remove_xdp(ifname, 0)
        self.links.remove((ns, ifname))

    def detach_all(self) -> None:
        for ns, ifname in list(self.links):
            with contextlib.suppress(Exception):
                self.detach(ns, ifname)


def load_sink() -> Any:
    from bcc import BPF

    return BPF(src_file=str(XDP_DIR / "sink.c"), cflags=[f"-DECHO_PORT={ECHO_PORT}"])


def load_ceiling(out_ifindex: int, smac: str, dmac: str) -> Any:
    from bcc import BPF

    return BPF(
        src_file=str(XDP_DIR / "ceiling.c"),
        cflags=[
            f"-DOUT_IFINDEX={out_ifindex}",
            f"-DSMAC={_mac_bytes(smac)}",
            f"-DDMAC={_mac_bytes(dmac)}",
        ],
    )


def sink_total(bpf: Any) -> int:
    """Packets counted by a loaded sink, summed over CPUs."""
    table = bpf["sink_count"]
    return int(sum(int(v) for v in table[table.Key(0)]))


def load_gen(out_ifindex: int) -> Any:
    from bcc import BPF

    return BPF(src_file=str(XDP_DIR / "gen.c"), cflags=[f"-DOUT_IFINDEX={out_ifindex}"])


def xdp_generate(gen: Any, frame: bytes, flows: int, sport_base: int, duration: float,
                 cpu: int = 0) -> tuple[int, float]:
    """Send ``frame`` (its source port replaced round-robin over ``flows``
    ports from ``sport_base``) out of the generator's interface for about
    ``duration`` s with BPF_PROG_TEST_RUN live frames, on ``cpu``. The
    caller must be in the generator's namespace. Returns (frames, seconds)."""
    import os
    import time

    from bcc import BPF

    from lab.bpftest import prog_test_run

    cfg_t = gen["gen_config"]
    cfg = cfg_t.Leaf()
    cfg.flows, cfg.sport_base = flows, sport_base
    for i, b in enumerate(frame[:42]):
        cfg.hdr[i] = b
    cfg_t[cfg_t.Key(0)] = cfg
    fd = gen.load_func("xdp_gen", BPF.XDP).fd
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        chunk, sent = 100_000, 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration:
            prog_test_run(fd, frame, chunk, live_frames=True, batch_size=64)
            sent += chunk
        return sent, time.monotonic() - t0
    finally:
        os.sched_setaffinity(0, before)
