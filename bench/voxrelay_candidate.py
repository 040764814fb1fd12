"""The voxrelay XDP relay as a bench candidate, and its PROG_TEST_RUN costs.

Compiles bpf/relay.c with the kernel helper's ``orchestrator.bpfprog``
(``compile_relay``, ``load_relay_fn``, ``prog_test_run``) and writes the
config, key and transceiver entries straight into the bcc tables (with the
ctypes types bcc builds from bpf/structs.h). orchestrator/maps.py will be the
typed way to do that; the bench uses the raw tables so it depends only on
the C layout, and only for the fields named in bpf/structs.h.

The relay is configured for a load test: no per-source new-flow limit and no
per-token flow cap (the generator opens 10,000 flows from one address with
one token).
"""

from __future__ import annotations

import importlib
import socket
import statistics
import struct
import time
from typing import Any

from bench import xdp
from bench.candidates import KEY_ID, RELAY_PORT, TXR_ID, Candidate
from bench.stun import binding_request
from bench.topo import CLIENT_IP, RELAY_PRIV_IP, TXR_IP, VIP, Lab, in_netns
from voxrelay.token import mint, new_key

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


def configure(bpf: Any, lb: Lab, key: bytes, nh_generation: int = 1) -> None:
    """Write config[0], keys[KEY_ID] and transceivers[TXR_ID]."""
    cfg_t = bpf["config"]
    cfg = cfg_t.Leaf()
    cfg.public_addr.addr[0] = _be32(VIP)
    cfg.private_addr.addr[0] = _be32(RELAY_PRIV_IP)
    cfg.public_port = _be16(RELAY_PORT)
    cfg.family = AF_INET
    cfg.port_min, cfg.port_max = 20000, 59999
    cfg.public_ifindex = lb.ifindex[lb.r_pub]
    cfg.private_ifindex = lb.ifindex[lb.r_priv]
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
        lb = self.lab
        self.bpf = bpfprog.compile_relay()
        configure(self.bpf, lb, self.token_key)
        fn = bpfprog.load_relay_fn(self.bpf)
        from bcc import BPF

        for ifname in (lb.r_pub, lb.r_priv):
            with in_netns(lb.ns_relay):
                BPF.attach_xdp(ifname, fn, 0)
            self.attached.links.append((lb.ns_relay, ifname))

    def stop(self) -> None:
        if hasattr(self, "bpf"):
            self.final_stats = stats(self.bpf)
        super().stop()


def _udp_frame(src_mac: str, dst_mac: str, src: tuple[str, int], dst: tuple[str, int],
               payload: bytes) -> bytes:
    """An Ethernet/IPv4/UDP frame with correct checksums."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    pkt = (Ether(src=src_mac, dst=dst_mac) / IP(src=src[0], dst=dst[0], flags="DF")
           / UDP(sport=src[1], dport=dst[1]) / payload)
    return bytes(pkt)


def prog_test_run_costs(lb: Lab, calls: int = 2000) -> dict[str, float]:
    """Median ns per run of the relay program alone, via BPF_PROG_TEST_RUN.

    The program rewrites the packet in place and the kernel does not restore
    it between repeats, so each case is N single runs of a fresh copy (the
    kernel's own timing of each run; median over N). Cases:
    - new flow: a STUN Binding Request with a valid token from a new port
      (SipHash, port allocation, two inserts, fib lookup);
    - known flow, cold next hop: the cached next hop is invalidated before
      each run (nh_generation bumped), so every run calls bpf_fib_lookup;
    - known flow, cached next hop: the common case of a media packet.
    """
    bpfprog = _need("orchestrator.bpfprog")
    key = new_key()
    bpf = bpfprog.compile_relay()
    configure(bpf, lb, key)
    fn = bpfprog.load_relay_fn(bpf)
    token = mint(key, key_id=KEY_ID, transceiver_id=TXR_ID, port=xdp.LOAD_PORT)
    smac, dmac = lb.mac[lb.c0], lb.mac[lb.r_pub]
    ifx = lb.ifindex[lb.r_pub]
    out: dict[str, float] = {}
    with in_netns(lb.ns_relay):
        def run(frame: bytes) -> tuple[int, int]:
            r = bpfprog.prog_test_run(fn.fd, frame, 1, ingress_ifindex=ifx)
            return r.retval, r.duration_ns

        n = min(calls, 5000)
        new = [run(_udp_frame(smac, dmac, (CLIENT_IP, 10000 + i), (VIP, RELAY_PORT),
                              binding_request(token))) for i in range(n)]
        media = _udp_frame(smac, dmac, (CLIENT_IP, 10000), (VIP, RELAY_PORT),
                           bytes([0x80, 111]) + b"\xa5" * 198)
        cached = [run(media) for _ in range(calls)]
        cold = []
        for i in range(calls):
            configure(bpf, lb, key, nh_generation=2 + i)
            cold.append(run(media))
        st = stats(bpf)
    for name, runs in (("new flow (STUN + token)", new),
                       ("known flow, cold next hop (fib_lookup)", cold),
                       ("known flow, cached next hop", cached)):
        actions = {a for a, _ in runs}
        if actions - {3, 4}:  # XDP_TX or XDP_REDIRECT
            raise RuntimeError(f"PROG_TEST_RUN case {name!r} returned actions {actions}; "
                               f"stats {st}")
        out[name] = float(statistics.median(d for _, d in runs))
    return out
