# SPDX-License-Identifier: Apache-2.0
"""Network namespace tooling for the lab, the tests and the bench, through pyroute2.

Namespaces, veth pairs, bridges, addresses, routes, permanent neighbours,
offloads and NAPI threads: what builds a topology, which the product never
does (it finds its interfaces; ``orchestrator.netlink`` keeps what it needs).
Everything here is idempotent in the way pyroute2's ``ensure()`` is: it adds
what is missing, leaves what is already right alone, replaces what differs,
and returns once the change is visible. Addresses, bridges, link state and
neighbours go through ``IPRoute.ensure()`` itself (dump with the spec, add,
fall back to set on EEXIST, then ``poll()`` until the dump shows it); veths
and routes keep their own code, for the reasons given where they are made.
Every function takes ``netns``: the name of a network namespace under
``/run/netns`` (``None`` is the caller's own). Nothing shells out to ``ip``.

sysfs (``/sys/class/net``) shows the namespace of whoever mounted it, so
writes there go through a forked child with a private mount namespace that
remounts ``/sys`` (``_with_netns_sysfs``); netlink and ``/proc/sys/net`` are
entered as ``orchestrator.netlink`` explains.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import os
import socket
from typing import Any

from pyroute2 import IPRoute, NetlinkError
from pyroute2 import netns as _netns
from pyroute2.ethtool.ioctl import IoctlEthtool
from pyroute2.netlink.rtnl import ndmsg

from orchestrator import netlink

CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_SLAVE = 1 << 19
_MNT_DETACH = 2

# Netlink changes to links, addresses and neighbours are visible to the next
# dump at once; the wait is for a loaded machine, not for the kernel.
_ENSURE_TIMEOUT = 5.0

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def list_netns() -> list[str]:
    return sorted(_netns.listnetns())


def create_netns(name: str) -> None:
    """Create the namespace ``name`` unless it exists, and bring its loopback up."""
    if not netlink.netns_exists(name):
        _netns.create(name)
    with netlink.iproute(name) as ipr:
        lo = netlink.link_index(ipr, "lo")
        if lo is not None:
            _ensure(ipr, ipr.link, "loopback", name, index=lo, state="up")


def delete_netns(name: str) -> None:
    """Remove the namespace ``name`` (its veths go with it). Absent is fine."""
    if not netlink.netns_exists(name):
        return
    try:
        _netns.remove(name)
    except FileNotFoundError:
        pass


def netns_socket(
    netns: str | None, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM
) -> socket.socket:
    """A socket that lives in ``netns`` (usable from any thread afterwards)."""
    return netlink.run_in_netns(netns, socket.socket, family, type)


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
            netlink.enter_netns(netns)
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


def _index(ipr: IPRoute, ifname: str, netns: str | None, what: str = "interface") -> int:
    """``ifname``'s index in the namespace ``ipr`` speaks to; raises if it is absent."""
    index = netlink.link_index(ipr, ifname)
    if index is None:
        raise netlink.NetlinkSetupError(f"no {what} {ifname!r} in netns {netns or '(current)'}")
    return index


def _ensure(ipr: IPRoute, method: Any, what: str, netns: str | None, **spec: Any) -> None:
    """``ipr.ensure(method, present=True, **spec)`` with a message instead of a bare timeout.

    ``ensure()`` returns on its first dump when the object is already there,
    so a repeated call costs one dump and writes nothing. It only times out
    when the kernel accepted the change but the dump never matches the spec
    (say, a link of that name that is not a bridge), which is a setup error.
    """
    try:
        ipr.ensure(method, present=True, timeout=_ENSURE_TIMEOUT, **spec)
    except TimeoutError:
        raise netlink.NetlinkSetupError(
            f"{what} in netns {netns or '(current)'} is still not as asked ({spec}) "
            f"after {_ENSURE_TIMEOUT:g}s; is something else of that name in the way?"
        ) from None


def link_exists(ifname: str, netns: str | None = None) -> bool:
    if netns is not None and not netlink.netns_exists(netns):
        return False
    with netlink.iproute(netns) as ipr:
        return netlink.link_index(ipr, ifname) is not None


def ensure_veth(
    ifname: str,
    peer: str,
    *,
    netns: str | None = None,
    peer_netns: str | None = None,
    mtu: int | None = None,
    mac: str | None = None,
) -> tuple[netlink.LinkInfo, netlink.LinkInfo]:
    """A veth pair ``ifname`` (in ``netns``) <-> ``peer`` (in ``peer_netns``), both up.

    The pair is created directly inside ``netns`` with its peer inside
    ``peer_netns`` (IFLA_NET_NS_FD), so the names never exist in the caller's
    namespace and cannot collide there. If both ends already exist where
    asked, nothing is created. Names are at most 15 characters (IFNAMSIZ).
    ``mac`` pins ``ifname``'s address (the kernel picks a random one).
    """
    for name in (ifname, peer):
        if not 0 < len(name) <= 15:
            raise ValueError(f"interface name {name!r} must be 1..15 characters")
    # Not ipr.ensure(): its dump matches ``ifname`` (and kind) but ignores
    # ``peer``, so an ``ifname`` paired with some other veth passes as
    # present; the peer may sit in another namespace that dump cannot see;
    # and its EEXIST fallback "set" cannot turn a lone link into a pair
    # (it fails with ENODEV instead of the message below). So both ends are
    # looked up by name where they should be, and one "add" makes the pair;
    # set_link_up() then brings both ends up through ensure().
    if not (link_exists(ifname, netns) and link_exists(peer, peer_netns)):
        peer_spec: dict[str, Any] = {"ifname": peer}
        if peer_netns != netns:
            if peer_netns is None:
                raise ValueError("a veth from a namespace to the caller's own needs netns=None "
                                 "for the caller's end; swap ifname and peer")
            peer_spec["net_ns_fd"] = netlink.netns_path(peer_netns)
        with netlink.iproute(netns) as ipr:
            try:
                ipr.link("add", ifname=ifname, kind="veth", peer=peer_spec)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
                raise netlink.NetlinkSetupError(
                    f"{ifname!r} or {peer!r} exists, but not as a pair between "
                    f"{netns or '(current)'} and {peer_netns or '(current)'}; delete it first"
                ) from None
    set_link_up(ifname, netns, mtu=mtu, mac=mac)
    set_link_up(peer, peer_netns, mtu=mtu)
    return netlink.link_info(ifname, netns), netlink.link_info(peer, peer_netns)


def set_link_up(ifname: str, netns: str | None = None, *, mtu: int | None = None,
                master: str | None = None, mac: str | None = None) -> None:
    """Bring ``ifname`` up (optionally set its MTU and MAC, and enslave it to ``master``)."""
    with netlink.iproute(netns) as ipr:
        index = _index(ipr, ifname, netns)
        spec: dict[str, Any] = {"index": index, "state": "up"}
        if mtu is not None:
            spec["mtu"] = mtu
        if mac is not None:
            spec["address"] = mac.lower()  # the dump shows lower case; the match is exact
        if master is not None:
            spec["master"] = _index(ipr, master, netns, what="bridge")
        # ensure() first tries "add"; the kernel answers EEXIST for an
        # existing index (RTM_NEWLINK with NLM_F_EXCL), and ensure() then
        # "set"s: so a link already up as asked is not written to at all.
        _ensure(ipr, ipr.link, f"interface {ifname!r}", netns, **spec)


def ensure_bridge(ifname: str, netns: str | None = None, *, mac: str | None = None) -> netlink.LinkInfo:
    """A Linux bridge ``ifname``, up; ``mac`` pins its address (else it follows its ports)."""
    spec: dict[str, Any] = {"ifname": ifname, "kind": "bridge", "state": "up"}
    if mac is not None:
        spec["address"] = mac.lower()  # the dump shows lower case; the match is exact
    with netlink.iproute(netns) as ipr:
        _ensure(ipr, ipr.link, f"bridge {ifname!r}", netns, **spec)
    return netlink.link_info(ifname, netns)


def ensure_address(ifname: str, cidr: str, netns: str | None = None) -> None:
    """Put ``cidr`` (e.g. ``"10.0.0.1/24"``) on ``ifname`` unless it is there."""
    iface = ipaddress.ip_interface(cidr)
    with netlink.iproute(netns) as ipr:
        index = _index(ipr, ifname, netns)
        # The addr dump matches index, address and prefixlen all three, so
        # 10.0.0.1/16 beside an existing 10.0.0.1/24 is added, as before.
        _ensure(ipr, ipr.addr, f"address {cidr} on {ifname!r}", netns,
                index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)


def ensure_route(
    dst: str, *, gateway: str | None = None, ifname: str | None = None, netns: str | None = None,
    blackhole: bool = False,
) -> None:
    """Route ``dst`` (a CIDR, or ``"default"``) via ``gateway`` and/or out of ``ifname``,
    or, with ``blackhole``, nowhere (the kernel discards what it routes there).

    Uses RTM_NEWROUTE with replace semantics, so running it twice is harmless
    and a different existing route to the same prefix is replaced.

    Not ``ipr.ensure()``: pyroute2 0.9.7's route dump filter drops the prefix
    length of ``dst="a.b.c.d/n"`` (an existing 10.77.0.0/24 passes for
    10.77.0.0/16) and matches every IPv4 route for ``0.0.0.0/0`` (a default
    route via G is taken as present once any route via G exists), and it
    searches every table. One "replace" is atomic, creates or overwrites, and
    the kernel applies it before answering, so nothing needs polling.
    """
    spec: dict[str, Any] = {}
    if dst == "default":
        spec["dst"] = "0.0.0.0/0"
    else:
        net = ipaddress.ip_network(dst)
        spec["dst"] = str(net)
    if gateway is not None:
        spec["gateway"] = gateway
    if blackhole:
        spec["type"] = "blackhole"
    with netlink.iproute(netns) as ipr:
        if ifname is not None:
            index = _index(ipr, ifname, netns)
            spec["oif"] = index
        ipr.route("replace", **spec)


def ensure_neighbour(
    ifname: str, ip: str, mac: str, *, netns: str | None = None, permanent: bool = True
) -> None:
    """A neighbour entry ``ip -> mac`` on ``ifname`` (permanent by default).

    ``ensure()`` leaves a matching entry alone and otherwise adds it, or
    replaces an entry for ``ip`` with another MAC or state (its EEXIST
    fallback "set" is NLM_F_REPLACE), so this is safe to repeat. A
    permanent entry is never aged or probed, which keeps ARP out of tests.
    """
    state = ndmsg.states["permanent"] if permanent else ndmsg.states["reachable"]
    with netlink.iproute(netns) as ipr:
        index = _index(ipr, ifname, netns)
        # The dump compares strings: the kernel's forms (lower-case MAC,
        # compressed IPv6) are what it must be asked in.
        _ensure(ipr, ipr.neigh, f"neighbour {ip} on {ifname!r}", netns,
                dst=str(ipaddress.ip_address(ip)), lladdr=mac.lower(), ifindex=index, state=state)


def neighbour(ifname: str, ip: str, netns: str | None = None) -> tuple[str, str] | None:
    """``(mac, state name)`` of the entry for ``ip`` on ``ifname``, or None."""
    with netlink.iproute(netns) as ipr:
        index = _index(ipr, ifname, netns)
        for entry in ipr.get_neighbours(ifindex=index, dst=ip):
            mac = entry.get_attr("NDA_LLADDR")
            if mac is None:
                continue
            names = [n for n, bit in ndmsg.states.items() if bit and entry["state"] & bit]
            return mac, ",".join(names) or "none"
    return None


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


def set_tx_checksum(ifname: str, enabled: bool, netns: str | None = None) -> list[str]:
    """Turn every ``tx-checksum-*`` feature of ``ifname`` on or off (``ethtool -K tx``).

    Local sockets hand veth packets with partial checksums; once XDP
    redirects them the completion never happens and receivers count
    UdpInCsumErrors. Uses pyroute2's ethtool ioctl wrapper, on a socket made
    inside ``netns`` so that the ioctl names that namespace's device.
    Returns the feature names changed.
    """
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
                raise netlink.NetlinkSetupError(f"{ifname}: could not set {', '.join(wrong)} to {enabled}")
            return changed
        finally:
            tool.close()

    return netlink.run_in_netns(netns, apply)
