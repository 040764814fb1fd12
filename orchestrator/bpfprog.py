"""Compile the XDP relay with bcc, and run it on packets with BPF_PROG_TEST_RUN.

``compile_relay`` is the only place that turns ``bpf/relay.c`` into a
``bcc.BPF``; the loader (attach, pin, replace) builds on it. ``bcc`` is
imported lazily, so that pure modules such as ``orchestrator.verdicts`` can
find the C sources through ``bpf_dir`` on machines without bcc.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # pragma: no cover
    import bcc

RELAY_SOURCE = "relay.c"
RELAY_FUNCTION = "xdp_relay"
"""Name of the XDP entry point in relay.c."""

BPF_FS_ROOT = Path("/sys/fs/bpf/voxrelay")
"""Maps of relay <name> are pinned under BPF_FS_ROOT/<name>/."""

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
XDP_ACTION_NAMES = {0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}

BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
"""uapi bpf.h: run XDP on real frames (reset per repetition; TX/REDIRECT/PASS take effect)."""

_IFNDEF = re.compile(r"^#ifndef\s+([A-Z][A-Z0-9_]*)\s*$", re.MULTILINE)
_PIN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def bpf_dir() -> Path:
    """The directory holding relay.c and its headers.

    ``$VOXRELAY_BPF_DIR`` when set (it must hold relay.c): a build of other C
    against the same pins, as the upgrade test does with a copy of bpf/ that
    has one more drop reason. Else the source tree's ``bpf/`` beside the
    package when present (a checkout or an editable install), else
    ``<sys.prefix>/share/voxrelay/bpf`` (where pyproject's data-files put it
    for a regular install).
    """
    override = os.environ.get("VOXRELAY_BPF_DIR")
    if override:
        # No fallback: a mistyped override must not silently build the default C.
        if not (Path(override) / RELAY_SOURCE).is_file():
            raise FileNotFoundError(f"VOXRELAY_BPF_DIR={override} holds no {RELAY_SOURCE}")
        return Path(override)
    candidates = [
        Path(__file__).resolve().parent.parent / "bpf",
        Path(sys.prefix) / "share" / "voxrelay" / "bpf",
    ]
    for candidate in candidates:
        if (candidate / RELAY_SOURCE).is_file():
            return candidate
    raise FileNotFoundError(
        "cannot find the relay's C sources: looked for "
        + " and ".join(str(c / RELAY_SOURCE) for c in candidates)
    )


@lru_cache(maxsize=1)
def tunable_limits() -> frozenset[str]:
    """Names in bpf/consts.h that ``-D`` may override (its ``#ifndef`` values)."""
    text = (bpf_dir() / "consts.h").read_text()
    return frozenset(n for n in _IFNDEF.findall(text) if not n.startswith("VOXRELAY_"))


def relay_cflags(
    overrides: Mapping[str, int] | None = None, pin_dir: Path | str | None = None
) -> list[str]:
    """The clang flags for relay.c: include path, limit overrides, pin dir.

    Raises ValueError for a limit that consts.h does not define or a value
    that is not a positive integer, so that a typo cannot silently compile
    the default.
    """
    flags = [f"-I{bpf_dir()}"]
    known = tunable_limits()
    for name, value in sorted((overrides or {}).items()):
        if name not in known:
            raise ValueError(
                f"unknown relay limit {name!r}; known: {', '.join(sorted(known))}"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"relay limit {name} must be a positive integer, got {value!r}")
        flags.append(f"-D{name}={value}")
    if pin_dir is not None:
        path = str(pin_dir)
        if '"' in path or "\\" in path:
            raise ValueError(f"pin directory {path!r} must not contain quotes or backslashes")
        flags.append(f'-DPIN_DIR="{path}"')
    return flags


def pin_dir_for(relay_name: str) -> Path:
    """``/sys/fs/bpf/voxrelay/<relay_name>``, refusing names that are not one path part."""
    if not _PIN_NAME.match(relay_name) or relay_name in (".", ".."):
        raise ValueError(
            f"relay name {relay_name!r} must be letters, digits, '_', '-' or '.'"
        )
    return BPF_FS_ROOT / relay_name


def compile_relay(
    overrides: Mapping[str, int] | None = None,
    pin_dir: Path | str | None = None,
    *,
    debug: int = 0,
) -> bcc.BPF:
    """Compile bpf/relay.c and create (or reopen) its maps.

    ``overrides`` replaces limits from consts.h (e.g. ``{"MAX_FLOWS": 4096}``).
    With ``pin_dir``, every map is pinned as ``<pin_dir>/<map name>``: an
    existing pin is reused (a replacement program keeps the flows), a missing
    one is created and pinned. The directory is created if needed. Removing
    pins is the caller's job (see ``unpin_maps``).

    The program itself is not loaded here; ``load_relay_fn`` does that.
    Raises ``orchestrator.maps.MapLayoutError`` when a reused pin has another
    type or key/value size than this build's map.
    """
    import bcc  # lazy: only the kernel side needs it

    if pin_dir is not None:
        Path(pin_dir).mkdir(parents=True, exist_ok=True)
    src = bpf_dir() / RELAY_SOURCE
    bpf = bcc.BPF(src_file=str(src).encode(), cflags=relay_cflags(overrides, pin_dir),
                  debug=debug)
    if pin_dir is not None:
        # bcc reuses a pin of the right name whatever its layout: check it.
        from orchestrator.maps import check_map_layouts

        try:
            check_map_layouts(bpf)
        except BaseException:
            bpf.cleanup()
            raise
    return bpf


def load_relay_fn(bpf: bcc.BPF) -> object:
    """Load (verify) the XDP entry point; returns bcc's function (``.fd``)."""
    import bcc

    return bpf.load_func(RELAY_FUNCTION, bcc.BPF.XDP)


MAP_NAMES = ("config", "keys", "transceivers", "flows", "reverse", "rate", "token_flows",
             "stats")
"""Every map in bpf/maps.h, i.e. every pin under a relay's pin directory."""


def unpin_maps(pin_dir: Path | str) -> list[Path]:
    """Remove the relay's map pins (and the directory, once empty).

    Returns the pins removed. Only names in MAP_NAMES are touched.
    """
    removed = []
    directory = Path(pin_dir)
    for name in MAP_NAMES:
        pin = directory / name
        if pin.exists():
            pin.unlink()
            removed.append(pin)
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
    return removed


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
    import bcc

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
