"""Network plumbing for the relay and its lab, through pyroute2.

Everything here is idempotent in the way pyroute2's ``ensure()`` is: it adds
what is missing, leaves what is already right alone, replaces what differs,
and returns once the change is visible. Every function takes ``netns``: the
name of a network namespace under ``/run/netns`` (``None`` is the caller's
own). Nothing shells out to ``ip``.

Namespaces are entered in three ways, each where it fits:

* netlink: ``IPRoute(netns=...)`` opens its socket inside the namespace, and
  this process then talks through it (so BPF program fds can be passed);
* ``/proc/sys/net`` and ioctl sockets: a short-lived thread that ``setns()``
  into the namespace (network namespaces are per thread on Linux, and
  ``/proc/sys/net`` and sockets bind to the opening thread's namespace);
* sysfs (``/sys/class/net``), which shows the namespace of whoever mounted
  it: a forked child with a private mount namespace that remounts ``/sys``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import ipaddress
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute, NetlinkError
from pyroute2 import netns as _netns
from pyroute2.netlink.rtnl import ndmsg

T = TypeVar("T")

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_SLAVE = 1 << 19
_MNT_DETACH = 2

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
    return os.path.join(NETNS_RUN_DIR, name)


def netns_exists(name: str) -> bool:
    return name in _netns.listnetns()


def list_netns() -> list[str]:
    return sorted(_netns.listnetns())


def create_netns(name: str) -> None:
    """Create the namespace ``name`` unless it exists, and bring its loopback up."""
    if not netns_exists(name):
        _netns.create(name)
    with iproute(name) as ipr:
        lo = ipr.link_lookup(ifname="lo")
        if lo:
            ipr.link("set", index=lo[0], state="up")


def delete_netns(name: str) -> None:
    """Remove the namespace ``name`` (its veths go with it). Absent is fine."""
    if not netns_exists(name):
        return
    try:
        _netns.remove(name)
    except FileNotFoundError:
        pass


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


def _setns(name: str) -> None:
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name!r}: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(netns: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
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
            _setns(netns)
            result.append(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=target, name=f"netns:{netns}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def netns_socket(
    netns: str | None, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM
) -> socket.socket:
    """A socket that lives in ``netns`` (usable from any thread afterwards)."""
    return run_in_netns(netns, socket.socket, family, type)


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


def _with_netns_sysfs(netns: str | None, path: str, value: str) -> None:
    """Write ``value`` to a sysfs ``path`` as seen from inside ``netns``.

    sysfs shows the devices of the namespace that mounted it, so a forked
    child enters the namespace, takes a private mount namespace, mounts a
    fresh sysfs on /sys and writes there. The host's /sys is not touched.
    """
    if netns is None:
        with open(path, "w") as f:
            f.write(value)
        return
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report errno through the pipe, never return
        code = 0
        try:
            os.close(read_end)
            _setns(netns)
            if _libc.unshare(CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
            if _libc.mount(b"none", b"/", None, _MS_REC | _MS_SLAVE, None) != 0:
                raise OSError(ctypes.get_errno(), "make / a slave mount")
            _libc.umount2(b"/sys", _MNT_DETACH)
            if _libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None) != 0:
                raise OSError(ctypes.get_errno(), "mount sysfs")
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            code = exc.errno or errno.EIO
        except BaseException:  # noqa: BLE001 - the child must reach os._exit
            code = errno.EIO
        os.write(write_end, code.to_bytes(4, "little"))
        os._exit(0)
    os.close(write_end)
    try:
        data = os.read(read_end, 4)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    code = int.from_bytes(data, "little") if len(data) == 4 else errno.EIO
    if code:
        raise OSError(code, f"writing {value!r} to {path} in netns {netns!r}: {os.strerror(code)}")


# --- links ------------------------------------------------------------------


def _link_index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def link_info(ifname: str, netns: str | None = None) -> LinkInfo:
    """The interface ``ifname`` in ``netns``; raises NetlinkSetupError if absent."""
    with iproute(netns) as ipr:
        index = _link_index(ipr, ifname)
        if index is None:
            raise NetlinkSetupError(f"no interface {ifname!r} in netns {netns or '(current)'}")
        (msg,) = ipr.link("get", index=index)
        return LinkInfo(
            ifname=ifname,
            ifindex=index,
            mac=msg.get_attr("IFLA_ADDRESS"),
            netns=netns,
            up=bool(msg["flags"] & 1),
        )


def link_exists(ifname: str, netns: str | None = None) -> bool:
    if netns is not None and not netns_exists(netns):
        return False
    with iproute(netns) as ipr:
        return _link_index(ipr, ifname) is not None


def ensure_veth(
    ifname: str,
    peer: str,
    *,
    netns: str | None = None,
    peer_netns: str | None = None,
    mtu: int | None = None,
) -> tuple[LinkInfo, LinkInfo]:
    """A veth pair ``ifname`` (in ``netns``) <-> ``peer`` (in ``peer_netns``), both up.

    The pair is created directly inside ``netns`` with its peer inside
    ``peer_netns`` (IFLA_NET_NS_FD), so the names never exist in the caller's
    namespace and cannot collide there. If both ends already exist where
    asked, nothing is created. Names are at most 15 characters (IFNAMSIZ).
    """
    for name in (ifname, peer):
        if not 0 < len(name) <= 15:
            raise ValueError(f"interface name {name!r} must be 1..15 characters")
    if not (link_exists(ifname, netns) and link_exists(peer, peer_netns)):
        peer_spec: dict[str, Any] = {"ifname": peer}
        if peer_netns != netns:
            if peer_netns is None:
                raise ValueError("a veth from a namespace to the caller's own needs netns=None "
                                 "for the caller's end; swap ifname and peer")
            peer_spec["net_ns_fd"] = netns_path(peer_netns)
        with iproute(netns) as ipr:
            try:
                ipr.link("add", ifname=ifname, kind="veth", peer=peer_spec)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
                raise NetlinkSetupError(
                    f"{ifname!r} or {peer!r} exists, but not as a pair between "
                    f"{netns or '(current)'} and {peer_netns or '(current)'}; delete it first"
                ) from None
    for name, target in ((ifname, netns), (peer, peer_netns)):
        set_link_up(name, target, mtu=mtu)
    return link_info(ifname, netns), link_info(peer, peer_netns)


def set_link_up(ifname: str, netns: str | None = None, *, mtu: int | None = None,
                master: str | None = None) -> None:
    """Bring ``ifname`` up (optionally set its MTU and enslave it to ``master``)."""
    with iproute(netns) as ipr:
        index = _link_index(ipr, ifname)
        if index is None:
            raise NetlinkSetupError(f"no interface {ifname!r} in netns {netns or '(current)'}")
        spec: dict[str, Any] = {"index": index, "state": "up"}
        if mtu is not None:
            spec["mtu"] = mtu
        if master is not None:
            master_index = _link_index(ipr, master)
            if master_index is None:
                raise NetlinkSetupError(f"no bridge {master!r} in netns {netns or '(current)'}")
            spec["master"] = master_index
        ipr.link("set", **spec)


def ensure_bridge(ifname: str, netns: str | None = None, *, mac: str | None = None) -> LinkInfo:
    """A Linux bridge ``ifname``, up; ``mac`` pins its address (else it follows its ports)."""
    if not link_exists(ifname, netns):
        spec: dict[str, Any] = {"ifname": ifname, "kind": "bridge"}
        if mac is not None:
            spec["address"] = mac
        with iproute(netns) as ipr:
            ipr.link("add", **spec)
    set_link_up(ifname, netns)
    return link_info(ifname, netns)


def delete_link(ifname: str, netns: str | None = None) -> None:
    """Delete ``ifname`` (a veth takes its peer with it). Absent is fine."""
    if netns is not None and not netns_exists(netns):
        return
    with iproute(netns) as ipr:
        index = _link_index(ipr, ifname)
        if index is None:
            return
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise


def ensure_address(ifname: str, cidr: str, netns: str | None = None) -> None:
    """Put ``cidr`` (e.g. ``"10.0.0.1/24"``) on ``ifname`` unless it is there."""
    iface = ipaddress.ip_interface(cidr)
    with iproute(netns) as ipr:
        index = _link_index(ipr, ifname)
        if index is None:
            raise NetlinkSetupError(f"no interface {ifname!r} in netns {netns or '(current)'}")
        present = [
            a for a in ipr.get_addr(index=index)
            if a.get_attr("IFA_ADDRESS") == str(iface.ip) and a["prefixlen"] == iface.network.prefixlen
        ]
        if present:
            return
        try:
            ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise


def addresses(ifname: str, netns: str | None = None) -> list[str]:
    """The IPv4 addresses on ``ifname`` as ``addr/prefix`` strings, in kernel order."""
    with iproute(netns) as ipr:
        index = _link_index(ipr, ifname)
        if index is None:
            raise NetlinkSetupError(f"no interface {ifname!r} in netns {netns or '(current)'}")
        return [
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(index=index, family=socket.AF_INET)
        ]


def ensure_route(
    dst: str, *, gateway: str | None = None, ifname: str | None = None, netns: str | None = None
) -> None:
    """Route ``dst`` (a CIDR, or ``"default"``) via ``gateway`` and/or out of ``ifname``.

    Uses RTM_NEWROUTE with replace semantics, so running it twice is harmless
    and a different existing route to the same prefix is replaced.
    """
    spec: dict[str, Any] = {}
    if dst == "default":
        spec["dst"] = "0.0.0.0/0"
    else:
        net = ipaddress.ip_network(dst)
        spec["dst"] = str(net)
    if gateway is not None:
        spec["gateway"] = gateway
    with iproute(netns) as ipr:
        if ifname is not None:
            index = _link_index(ipr, ifname)
            if index is None:
                raise NetlinkSetupError(f"no interface {ifname!r} in netns {netns or '(current)'}")
            spec["oif"] = index
        ipr.route("replace", **spec)


def ensure_neighbour(
    ifname: str, ip: str, mac: str, *, netns: str | None = None, permanent: bool = True
) -> None:
    """A neighbour entry ``ip -> mac`` on ``ifname`` (permanent by default).

    ``replace`` creates or overwrites, so this is safe to repeat. A
    permanent entry is never aged or probed, which keeps ARP out of tests.
    """
    state = ndmsg.states["permanent"] if permanent else ndmsg.states["reachable"]
    with iproute(netns) as ipr:
        index = _link_index(ipr, ifname)
        if index is None:
            raise NetlinkSetupError(f"no interface {ifname!r} in netns {netns or '(current)'}")
        ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=index, state=state)


def neighbour(ifname: str, ip: str, netns: str | None = None) -> tuple[str, str] | None:
    """``(mac, state name)`` of the entry for ``ip`` on ``ifname``, or None."""
    with iproute(netns) as ipr:
        index = _link_index(ipr, ifname)
        if index is None:
            raise NetlinkSetupError(f"no interface {ifname!r} in netns {netns or '(current)'}")
        for entry in ipr.get_neighbours(ifindex=index, dst=ip):
            mac = entry.get_attr("NDA_LLADDR")
            if mac is None:
                continue
            names = [n for n, bit in ndmsg.states.items() if bit and entry["state"] & bit]
            return mac, ",".join(names) or "none"
    return None


# --- sysctls ------------------------------------------------------------------


def _sysctl_file(key: str) -> str:
    key = key.replace(".", "/") if "/" not in key else key
    if ".." in key or key.startswith("/"):
        raise ValueError(f"bad sysctl key {key!r}")
    return f"/proc/sys/{key}"


def set_sysctl(key: str, value: str | int, netns: str | None = None) -> None:
    """Write a sysctl (``net.ipv4.ip_forward`` or ``net/ipv4/...`` form) in ``netns``.

    Use the slash form for keys with dots in them (interface names).
    """
    path = _sysctl_file(key)

    def write() -> None:
        # The newline makes an empty value a real write (clearing a list sysctl).
        with open(path, "w") as f:
            f.write(f"{value}\n")

    run_in_netns(netns, write)


def get_sysctl(key: str, netns: str | None = None) -> str:
    path = _sysctl_file(key)

    def read() -> str:
        with open(path) as f:
            return f.read().strip()

    return run_in_netns(netns, read)


def set_forwarding(ifname: str, netns: str | None = None, enabled: bool = True) -> None:
    """IPv4 forwarding on ``ifname``: ``bpf_fib_lookup`` answers FWD_DISABLED without it."""
    set_sysctl(f"net/ipv4/conf/{ifname}/forwarding", int(enabled), netns)


def reserve_local_ports(port_min: int, port_max: int, netns: str | None = None) -> None:
    """Keep the kernel from giving ``port_min..port_max`` to local sockets.

    The relay allocates its flow ports from this range in XDP; a local socket
    bound to one of them would otherwise shadow or collide with a flow.
    """
    if not 1 <= port_min <= port_max <= 65535:
        raise ValueError(f"port range {port_min}..{port_max} is not within 1..65535")
    set_sysctl("net/ipv4/ip_local_reserved_ports", f"{port_min}-{port_max}", netns)


# --- offloads and NAPI ---------------------------------------------------------


def set_tx_checksum(ifname: str, enabled: bool, netns: str | None = None) -> list[str]:
    """Turn every ``tx-checksum-*`` feature of ``ifname`` on or off (``ethtool -K tx``).

    Local sockets hand veth packets with partial checksums; once XDP
    redirects them the completion never happens and receivers count
    UdpInCsumErrors. Uses pyroute2's ethtool ioctl wrapper, on a socket made
    inside ``netns`` so that the ioctl names that namespace's device.
    Returns the feature names changed.
    """
    from pyroute2.ethtool.ioctl import IoctlEthtool

    def apply() -> list[str]:
        tool = IoctlEthtool()
        try:
            tool.change_ifname(ifname)
            features = tool.get_features()
            changed = [
                name for name in features.keys()  # noqa: SIM118 - not a dict
                if name.startswith("tx-checksum-") and features.is_available(name)
                and features.is_active(name) != enabled
            ]
            for name in changed:
                features.set_value(name, enabled)
            if changed:
                tool.set_features(features)
            after = tool.get_features()
            wrong = [n for n in changed if after.is_active(n) != enabled]
            if wrong:
                raise NetlinkSetupError(f"{ifname}: could not set {', '.join(wrong)} to {enabled}")
            return changed
        finally:
            tool.close()

    return run_in_netns(netns, apply)


def tx_checksum_enabled(ifname: str, netns: str | None = None) -> bool:
    """True if any ``tx-checksum-*`` feature of ``ifname`` is active."""
    from pyroute2.ethtool.ioctl import IoctlEthtool

    def query() -> bool:
        tool = IoctlEthtool()
        try:
            tool.change_ifname(ifname)
            features = tool.get_features()
            return any(
                features.is_active(n) for n in features.keys()  # noqa: SIM118 - not a dict
                if n.startswith("tx-checksum-")
            )
        finally:
            tool.close()

    return run_in_netns(netns, query)


def set_threaded_napi(ifname: str, netns: str | None = None, enabled: bool = True) -> bool:
    """Run ``ifname``'s NAPI polling in kernel threads (``/sys/class/net/X/threaded``).

    On veth this spreads XDP work off the sender's softirq. Returns False
    when the device does not support it (EOPNOTSUPP), True when set.
    """
    try:
        _with_netns_sysfs(netns, f"/sys/class/net/{ifname}/threaded", "1" if enabled else "0")
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise
    return True


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


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
        index = _link_index(ipr, ifname)
        if index is None:
            raise NetlinkSetupError(f"no interface {ifname!r} in netns {netns or '(current)'}")
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
        index = _link_index(ipr, ifname)
        if index is None:
            raise NetlinkSetupError(f"no interface {ifname!r} in netns {netns or '(current)'}")
        attrs: list[tuple[str, int]] = [("IFLA_XDP_FD", prog_fd), ("IFLA_XDP_FLAGS", flags)]
        if expected_fd is not None:
            attrs.append(("IFLA_XDP_EXPECTED_FD", expected_fd))
        ipr.link("set", index=index, xdp={"attrs": attrs})
