# SPDX-License-Identifier: Apache-2.0
"""The few bpf(2) commands the loader needs that bcc does not wrap.

bcc 0.26 attaches XDP only through netlink (``attach_xdp``), which outlives
the process and silently replaces whatever was attached. The loader uses
BPF links instead: ``BPF_LINK_CREATE`` refuses an interface that already has
a program (EBUSY), a pinned link outlives the loader process, and
``BPF_LINK_UPDATE`` with ``BPF_F_REPLACE`` swaps the program atomically only
if the expected old one is still attached. Those commands, pinning, and the
info queries are issued here as raw syscalls: the attribute layouts are a
stable kernel ABI (offsets from uapi ``linux/bpf.h``), which keeps this free
of any particular libbpf version.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

_SYS_BPF = {"x86_64": 321, "aarch64": 280}[os.uname().machine]

# enum bpf_cmd
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_DETACH = 34

BPF_PROG_TYPE_XDP = 6
BPF_XDP = 37  # enum bpf_attach_type
BPF_LINK_TYPE_XDP = 6
BPF_F_REPLACE = 1 << 2

# linux/if_link.h
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4
XDP_MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}

XDP_PASS = 2

# enum bpf_map_type, for messages
MAP_TYPE_NAMES = {
    1: "hash", 2: "array", 3: "prog_array", 4: "perf_event_array", 5: "percpu_hash",
    6: "percpu_array", 9: "lru_hash", 10: "lru_percpu_hash", 14: "devmap", 17: "cpumap",
}

T = TypeVar("T")

_ATTR_SIZE = 128
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf(2) command failed; ``errno`` is the kernel's answer."""


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    ret = _libc.syscall(_SYS_BPF, cmd, attr, ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return int(ret)


def _attr() -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(_ATTR_SIZE)


def close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


# --- objects in bpffs ----------------------------------------------------------


def obj_pin(fd: int, path: str) -> None:
    """Pin a map, program or link fd at ``path`` (EEXIST if the path is taken)."""
    name = ctypes.create_string_buffer(path.encode())
    attr = _attr()
    struct.pack_into("=QI", attr, 0, ctypes.addressof(name), fd)
    _bpf(BPF_OBJ_PIN, attr, f"pin at {path}")


def obj_get(path: str) -> int:
    """Open the object pinned at ``path``; returns a new fd the caller closes."""
    name = ctypes.create_string_buffer(path.encode())
    attr = _attr()
    struct.pack_into("=Q", attr, 0, ctypes.addressof(name))
    return _bpf(BPF_OBJ_GET, attr, f"open pin {path}")


def _info(fd: int, size: int, what: str) -> bytes:
    buf = ctypes.create_string_buffer(size)
    attr = _attr()
    struct.pack_into("=IIQ", attr, 0, fd, size, ctypes.addressof(buf))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr, what)
    return buf.raw


@dataclass(frozen=True)
class MapInfo:
    """``struct bpf_map_info``: what the kernel says a map is."""

    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    name: str

    @property
    def type_name(self) -> str:
        return MAP_TYPE_NAMES.get(self.type, f"type {self.type}")


@dataclass(frozen=True)
class ProgInfo:
    """``struct bpf_prog_info`` (the fields the loader reports)."""

    id: int
    type: int
    name: str
    tag: str


@dataclass(frozen=True)
class BpfLinkInfo:
    """``struct bpf_link_info`` for an XDP link; ``ifindex`` is 0 once detached."""

    id: int
    type: int
    prog_id: int
    ifindex: int


def map_info(fd: int) -> MapInfo:
    raw = _info(fd, 88, "map info")
    type_, id_, key, value, entries = struct.unpack_from("=IIIII", raw, 0)
    name = raw[24:40].split(b"\0", 1)[0].decode(errors="replace")
    return MapInfo(id_, type_, key, value, entries, name)


def prog_info(fd: int) -> ProgInfo:
    raw = _info(fd, 232, "program info")
    type_, id_ = struct.unpack_from("=II", raw, 0)
    tag = raw[8:16].hex()
    name = raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    return ProgInfo(id_, type_, name, tag)


def link_info(fd: int) -> BpfLinkInfo:
    raw = _info(fd, 48, "link info")
    type_, id_, prog_id = struct.unpack_from("=III", raw, 0)
    (ifindex,) = struct.unpack_from("=I", raw, 16)
    return BpfLinkInfo(id_, type_, prog_id, ifindex if type_ == BPF_LINK_TYPE_XDP else 0)


def with_pinned_fd(path: str | os.PathLike[str], fn: Callable[[int], T]) -> T:
    """``fn(fd)`` on the object pinned at ``path``; the fd is opened and closed here.

    E.g. ``with_pinned_fd(pin, map_info)``.
    """
    fd = obj_get(os.fspath(path))
    try:
        return fn(fd)
    finally:
        close(fd)


def prog_fd_by_id(prog_id: int) -> int:
    attr = _attr()
    struct.pack_into("=I", attr, 0, prog_id)
    return _bpf(BPF_PROG_GET_FD_BY_ID, attr, f"open program id {prog_id}")


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int,
               name: str = "") -> int:
    """Create a map; returns its fd (used to pin maps that a program did not make)."""
    attr = _attr()
    struct.pack_into("=IIII", attr, 0, map_type, key_size, value_size, max_entries)
    struct.pack_into("=16s", attr, 28, name.encode()[:15])  # map_name
    return _bpf(BPF_MAP_CREATE, attr, f"create map {name!r}")


def _map_elem(cmd: int, fd: int, key: bytes | None, key_size: int, out_size: int,
              what: str) -> bytes | None:
    """A map command of ``{map_fd, key, value/next_key}`` that fills ``out_size`` bytes;
    None when the kernel answers ENOENT (no such key, or no next key)."""
    key_buf = ctypes.create_string_buffer(key, key_size) if key is not None else None
    out_buf = ctypes.create_string_buffer(out_size)
    attr = _attr()
    struct.pack_into("=IIQQ", attr, 0, fd, 0,
                     ctypes.addressof(key_buf) if key_buf is not None else 0,
                     ctypes.addressof(out_buf))
    try:
        _bpf(cmd, attr, what)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return out_buf.raw


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value at ``key`` (raw bytes, ``value_size`` long; per-CPU maps: one
    8-byte-aligned slot per possible CPU), or None when the key is absent."""
    return _map_elem(BPF_MAP_LOOKUP_ELEM, fd, key, len(key), value_size, "map lookup")


def map_update(fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    """Write ``value`` at ``key`` (flags: BPF_ANY 0, BPF_NOEXIST 1, BPF_EXIST 2)."""
    key_buf = ctypes.create_string_buffer(key, len(key))
    value_buf = ctypes.create_string_buffer(value, len(value))
    attr = _attr()
    struct.pack_into("=IIQQQ", attr, 0, fd, 0, ctypes.addressof(key_buf),
                     ctypes.addressof(value_buf), flags)
    _bpf(BPF_MAP_UPDATE_ELEM, attr, "map update")


def map_delete(fd: int, key: bytes) -> bool:
    """Delete ``key``; False when it was not there (ENOENT)."""
    key_buf = ctypes.create_string_buffer(key, len(key))
    attr = _attr()
    struct.pack_into("=IIQ", attr, 0, fd, 0, ctypes.addressof(key_buf))
    try:
        _bpf(BPF_MAP_DELETE_ELEM, attr, "map delete")
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_next_key(fd: int, key: bytes | None, key_size: int) -> bytes | None:
    """The key after ``key`` (the first key when ``key`` is None), or None at the end.

    The kernel's order is the map's own (hash buckets), not sorted; a key
    deleted meanwhile makes a hash map start over from its first key, so a
    walk of a busy map may see a key twice (callers that count use a set).
    """
    return _map_elem(BPF_MAP_GET_NEXT_KEY, fd, key, key_size, key_size, "map next key")


def possible_cpus() -> int:
    """CPUs the kernel may bring up: the number of slots in a per-CPU map's value."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


# --- programs and links ---------------------------------------------------------


def load_xdp_pass(name: str = "xdp_pass") -> int:
    """Load a two-instruction XDP program that returns XDP_PASS; returns its fd.

    It is what a veth peer needs so that ``XDP_REDIRECT`` into the veth
    works; no compiler is involved (r0 = XDP_PASS; exit).
    """
    insns = struct.pack("=BBhi", 0xB7, 0, 0, XDP_PASS) + struct.pack("=BBhi", 0x95, 0, 0, 0)
    insn_buf = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = _attr()
    struct.pack_into("=IIQQ", attr, 0, BPF_PROG_TYPE_XDP, 2, ctypes.addressof(insn_buf),
                     ctypes.addressof(license_))
    struct.pack_into("=16s", attr, 48, name.encode()[:15])
    return _bpf(BPF_PROG_LOAD, attr, "load the XDP_PASS program")


def link_create_xdp(prog_fd: int, ifindex: int, mode_flags: int) -> int:
    """Attach ``prog_fd`` to ``ifindex`` (in the calling thread's netns) as a BPF link.

    The kernel refuses with EBUSY if any XDP program is already attached,
    by link or by netlink: a second load can never silently replace one.
    """
    attr = _attr()
    struct.pack_into("=IIII", attr, 0, prog_fd, ifindex, BPF_XDP, mode_flags)
    return _bpf(BPF_LINK_CREATE, attr, f"attach XDP to ifindex {ifindex}")


def link_update(link_fd: int, new_prog_fd: int, old_prog_fd: int) -> None:
    """Atomically swap a link's program, only if ``old_prog_fd``'s program is attached.

    Else the kernel answers EPERM.
    """
    attr = _attr()
    struct.pack_into("=IIII", attr, 0, link_fd, new_prog_fd, BPF_F_REPLACE, old_prog_fd)
    _bpf(BPF_LINK_UPDATE, attr, "replace the program of an XDP link")


def link_detach(link_fd: int) -> None:
    """Detach a link now, even if other fds or pins still hold it (it goes defunct)."""
    attr = _attr()
    struct.pack_into("=I", attr, 0, link_fd)
    try:
        _bpf(BPF_LINK_DETACH, attr, "detach an XDP link")
    except BpfError as exc:
        if exc.errno != errno.ENOLINK:  # already detached (its device went away)
            raise
