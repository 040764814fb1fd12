# SPDX-License-Identifier: Apache-2.0
"""Run the XDP relay on packets with BPF_PROG_TEST_RUN (tests, bench, lab).

Lab tooling, not product code: the orchestrator never runs its program on
synthetic packets. bcc exposes libbpf's ``bpf_prog_test_run_opts`` through
``bcc.libbcc``; this module declares its argument struct and wraps it.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from typing import NamedTuple

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
XDP_ACTION_NAMES = {0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}

BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
"""uapi bpf.h: run XDP on real frames (reset per repetition; TX/REDIRECT/PASS take effect)."""


class TestRun(NamedTuple):
    """Result of one BPF_PROG_TEST_RUN."""

    retval: int
    """The program's return value (an XDP action)."""
    data_out: bytes
    """The packet as the program left it."""
    duration_ns: int
    """Average run time per repetition, as the kernel measured it."""


class _BpfTestRunOpts(ctypes.Structure):
    """``struct bpf_test_run_opts`` from libbpf's bpf.h (libbpf >= 0.7; Debian 12 has 1.1)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class XdpMd(ctypes.Structure):
    """``struct xdp_md`` (uapi bpf.h): the context PROG_TEST_RUN may be given."""

    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


@lru_cache(maxsize=1)
def _test_run_fn() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    import bcc  # optional heavy dependency: only a test run needs it

    # libbcc links libbpf, so its handle resolves libbpf's symbols too; bcc's
    # Python binding does not declare this one.
    fn = bcc.libbcc.lib.bpf_prog_test_run_opts
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, ctypes.POINTER(_BpfTestRunOpts)]
    return fn


def prog_test_run(
    prog_fd: int,
    packet: bytes,
    repeat: int = 1,
    *,
    ingress_ifindex: int | None = None,
    out_size: int | None = None,
    live_frames: bool = False,
    batch_size: int = 0,
) -> TestRun:
    """Run the XDP program ``prog_fd`` once (or ``repeat`` times) on ``packet``.

    With ``ingress_ifindex`` the packet appears to arrive on that interface
    (of the calling thread's network namespace, which is also where
    bpf_fib_lookup looks); without it, on loopback. The kernel does not reset
    the packet between repeats: a rewriting program sees its own output from
    the second run on.

    ``live_frames`` (BPF_F_TEST_XDP_LIVE_FRAMES) carries out the verdicts:
    XDP_TX and XDP_REDIRECT really transmit and XDP_PASS enters the stack, so
    use it only in a namespace you own. Frames come from a page pool
    (``batch_size`` frames per batch, kernel default 64, at most 256) that the
    input is copied into when a page is first allocated: a repetition on a
    recycled page sees an earlier run's rewrite, so a rewriting program's
    later repetitions may take another path (measured here: about half of
    20,000 known-flow copies). The kernel returns no data then (``data_out``
    is empty): read the counters.

    Raises OSError with the kernel's errno when the run itself fails.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    size_out = out_size if out_size is not None else len(packet) + 256
    buf_in = ctypes.create_string_buffer(bytes(packet), len(packet))
    buf_out = ctypes.create_string_buffer(size_out)
    opts = _BpfTestRunOpts()
    opts.sz = ctypes.sizeof(_BpfTestRunOpts)
    opts.data_in = ctypes.cast(buf_in, ctypes.c_void_p)
    opts.data_size_in = len(packet)
    if not live_frames:
        opts.data_out = ctypes.cast(buf_out, ctypes.c_void_p)
        opts.data_size_out = size_out
    else:
        opts.flags = BPF_F_TEST_XDP_LIVE_FRAMES
        opts.batch_size = batch_size
    opts.repeat = repeat
    ctx = None
    if ingress_ifindex is not None:
        ctx = XdpMd(data=0, data_end=len(packet), ingress_ifindex=ingress_ifindex)
        opts.ctx_in = ctypes.cast(ctypes.pointer(ctx), ctypes.c_void_p)
        opts.ctx_size_in = ctypes.sizeof(XdpMd)
    rc = _test_run_fn()(prog_fd, ctypes.byref(opts))
    if rc != 0:
        errno = -rc if rc < 0 else ctypes.get_errno()
        raise OSError(errno, f"BPF_PROG_TEST_RUN failed: errno {errno}")
    data_out = b"" if live_frames else buf_out.raw[: opts.data_size_out]
    return TestRun(opts.retval, data_out, opts.duration)
