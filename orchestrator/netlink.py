# SPDX-License-Identifier: Apache-2.0
"""The netlink the relay itself needs, through pyroute2: interfaces, addresses, XDP.

What builds a lab (namespaces, veths, bridges, routes, neighbours, offloads)
is ``lab/netns.py``; sysctls are ``orchestrator.hostnet``'s. Every function
takes ``netns``: the name of a network namespace under ``/run/netns``
(``None`` is the caller's own), so that a relay loaded into a namespace is
handled from outside it. Nothing shells out to ``ip``.

Namespaces are entered in three ways, each where it fits:

* netlink: ``IPRoute(netns=...)`` opens its socket inside the namespace, and
  this process then talks through it (so BPF program fds can be passed);
* ``/proc/sys/net`` and ioctl sockets: a short-lived thread that ``setns()``
  into the namespace (network namespaces are per thread on Linux, and
  ``/proc/sys/net`` and sockets bind to the opening thread's namespace);
* sysfs (``/sys/class/net``), which shows the namespace of whoever mounted
  it: a forked child with a private mount namespace that remounts ``/sys``
  (only the lab needs it: ``lab/netns.py``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as _netns

T = TypeVar("T")
P = ParamSpec("P")

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class NetlinkSetupError(RuntimeError):
    """A namespace, link or setting could not be put in place; the message says which."""


@dataclass(frozen=True)
class LinkInfo:
    """One interface as the kernel reports it."""

    ifname: str
    ifindex: int
    mac: str
    netns: str | None
    up: bool


# --- namespaces -------------------------------------------------------------


def netns_path(name: str) -> str:
    return str(Path(NETNS_RUN_DIR) / name)


def netns_exists(name: str) -> bool:
    return name in _netns.listnetns()


@contextlib.contextmanager
def iproute(netns: str | None = None) -> Iterator[IPRoute]:
    """An ``IPRoute`` inside ``netns``; never creates the namespace by accident."""
    if netns is not None and not netns_exists(netns):
        raise NetlinkSetupError(f"network namespace {netns!r} does not exist")
    ipr = IPRoute(netns=netns, flags=0) if netns is not None else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def enter_netns(name: str) -> None:
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name!r}: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(netns: str | None, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call ``fn(*args, **kwargs)`` on a thread inside ``netns`` and return its result.

    The thread ends with the call, so the caller's namespace is never touched.
    Sockets created inside keep their namespace after the call returns.
    ``/proc/self/net`` names the main thread: use ``/proc/thread-self/net``.
    """
    if netns is None:
        return fn(*args, **kwargs)
    if not netns_exists(netns):
        raise NetlinkSetupError(f"network namespace {netns!r} does not exist")
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            enter_netns(netns)
            result.append(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=target, name=f"netns:{netns}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def popen_in_netns(
    netns: str | None, argv: Sequence[str], **kwargs: Any
) -> subprocess.Popen[Any]:
    """Start ``argv`` inside ``netns`` (like ``ip netns exec``, without ``ip``).

    util-linux's ``nsenter --net=/run/netns/<name>`` does the setns(): a
    Python ``preexec_fn`` would run between fork and exec of a process that
    has threads (echo servers, watchers), where taking any lock can deadlock.
    /sys is not remounted, so the child sees the caller's sysfs.
    """
    if netns is None:
        return subprocess.Popen(list(argv), **kwargs)
    if not netns_exists(netns):
        raise NetlinkSetupError(f"network namespace {netns!r} does not exist")
    return subprocess.Popen(["nsenter", f"--net={netns_path(netns)}", "--", *argv], **kwargs)


# --- links ------------------------------------------------------------------


def link_index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _existing_index(ipr: IPRoute, ifname: str, netns: str | None) -> int:
    """The ifindex of ``ifname``; NetlinkSetupError (naming the netns) if there is none."""
    index = link_index(ipr, ifname)
    if index is None:
        raise NetlinkSetupError(f"no interface {ifname!r} in netns {netns or '(current)'}")
    return index


def link_info(ifname: str, netns: str | None = None) -> LinkInfo:
    """The interface ``ifname`` in ``netns``; raises NetlinkSetupError if absent."""
    with iproute(netns) as ipr:
        index = _existing_index(ipr, ifname, netns)
        (msg,) = ipr.link("get", index=index)
        return LinkInfo(
            ifname=ifname,
            ifindex=index,
            mac=msg.get_attr("IFLA_ADDRESS"),
            netns=netns,
            up=bool(msg["flags"] & 1),
        )


def addresses(ifname: str, netns: str | None = None) -> list[str]:
    """The IPv4 addresses on ``ifname`` as ``addr/prefix`` strings, in kernel order."""
    with iproute(netns) as ipr:
        index = _existing_index(ipr, ifname, netns)
        return [
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(index=index, family=socket.AF_INET)
        ]


def addresses6(ifname: str, netns: str | None = None) -> list[str]:
    """The global IPv6 addresses on ``ifname`` (no link-local, nothing
    tentative) as ``addr/prefix`` strings, in kernel order."""
    tentative = 0x40  # IFA_F_TENTATIVE: still in duplicate address detection
    with iproute(netns) as ipr:
        index = _existing_index(ipr, ifname, netns)
        out = []
        for a in ipr.get_addr(index=index, family=socket.AF_INET6):
            flags = a.get_attr("IFA_FLAGS") or a["flags"]
            if a["scope"] != 0 or flags & tentative:  # 0: RT_SCOPE_UNIVERSE
                continue
            out.append(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
        return out


# --- XDP as netlink sees it ------------------------------------------------------

# IFLA_XDP_ATTACHED, as a number or as pyroute2's names for it.
_XDP_ATTACHED_MODES: dict[int | str, str] = {
    1: "native", 2: "generic", 3: "offload", 4: "multi",
    "xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload", "xdpmulti": "multi",
}


def xdp_attached(ifname: str, netns: str | None = None) -> tuple[str | None, int | None]:
    """``(mode, prog id)`` of the XDP program on ``ifname``, or ``(None, None)``.

    Mode is "native", "generic", "offload" or "multi" (IFLA_XDP_ATTACHED).
    This sees programs attached by netlink and by BPF link alike.
    """
    with iproute(netns) as ipr:
        index = _existing_index(ipr, ifname, netns)
        (msg,) = ipr.link("get", index=index)
        xdp = msg.get_attr("IFLA_XDP")
        if xdp is None:
            return None, None
        attached = xdp.get_attr("IFLA_XDP_ATTACHED") or 0
        if not attached:
            return None, None
        prog_id = (xdp.get_attr("IFLA_XDP_PROG_ID") or xdp.get_attr("IFLA_XDP_DRV_PROG_ID")
                   or xdp.get_attr("IFLA_XDP_SKB_PROG_ID"))
        return _XDP_ATTACHED_MODES.get(attached, str(attached)), prog_id


def set_xdp_fd(
    ifname: str, prog_fd: int, flags: int, netns: str | None = None, expected_fd: int | None = None
) -> None:
    """Attach (``prog_fd`` >= 0) or detach (-1) an XDP program by netlink (IFLA_XDP).

    ``flags`` are XDP_FLAGS_*; pass UPDATE_IF_NOEXIST to refuse replacing,
    or REPLACE with ``expected_fd`` to act only on that program.
    """
    with iproute(netns) as ipr:
        index = _existing_index(ipr, ifname, netns)
        attrs: list[tuple[str, int]] = [("IFLA_XDP_FD", prog_fd), ("IFLA_XDP_FLAGS", flags)]
        if expected_fd is not None:
            attrs.append(("IFLA_XDP_EXPECTED_FD", expected_fd))
        ipr.link("set", index=index, xdp={"attrs": attrs})
