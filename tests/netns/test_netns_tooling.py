# SPDX-License-Identifier: Apache-2.0
"""lab/netns.py on pyroute2's ensure(): a second run changes nothing and returns at
once, missing interfaces are named, and the cases ensure() gets wrong stay right.

Each test builds its own namespace (``vxt-<hex>``, inside the leak check's lab
scope) and removes it in ``finally``; nothing touches the caller's namespace.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest

from lab.netns import (
    create_netns,
    delete_netns,
    ensure_address,
    ensure_bridge,
    ensure_neighbour,
    ensure_route,
    ensure_veth,
    neighbour,
    set_link_up,
)
from orchestrator import hostnet, netlink
from tests.support import until

pytestmark = [pytest.mark.netns, pytest.mark.root]

GATEWAY = "10.31.0.254"
BRIDGE_MAC = "02:00:5e:31:00:01"
PEER_MAC = "02:00:5e:31:00:02"
# Below one ensure() timeout (5 s): a second run that fell through to a poll
# would take at least that long, while a dump of a namespace this small takes
# milliseconds. Not a performance figure: the margin is for a loaded CI host.
AT_ONCE = 4.0


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"vxt-{secrets.token_hex(3)}"
    create_netns(name)
    try:
        yield name
    finally:
        delete_netns(name)


def _build(ns: str) -> None:
    ensure_veth("ta", "tb", netns=ns, peer_netns=ns, mtu=1400, mac=PEER_MAC)
    ensure_veth("tc", "td", netns=ns, peer_netns=ns)
    ensure_bridge("tbr", ns, mac=BRIDGE_MAC)
    set_link_up("td", ns, master="tbr")
    ensure_address("ta", "10.31.0.1/24", ns)
    # No duplicate address detection: a tentative IPv6 address gets its local
    # route only when DAD ends, so a snapshot taken meanwhile differs from the
    # next one although nothing was changed.
    hostnet.set_sysctl("net/ipv6/conf/ta/accept_dad", 0, ns)
    ensure_address("ta", "fd31::1/64", ns)
    ensure_route("10.77.0.0/24", gateway=GATEWAY, netns=ns)
    ensure_route("default", gateway=GATEWAY, netns=ns)
    ensure_route("10.66.0.0/16", blackhole=True, netns=ns)
    ensure_neighbour("ta", GATEWAY, "02:00:5E:31:00:FE", netns=ns)
    ensure_neighbour("ta", "fd31:0::fe", "02:00:5e:31:00:fe", netns=ns)


def _kernel_made(addr: str) -> bool:
    """IPv6 link-local addresses and routes (fe80::/64 and local fe80::x): the
    kernel adds them on its own, shortly after a link comes up, so they can
    appear between two snapshots whatever the tooling does."""
    return addr.startswith(("fe80:", "ff00:"))


def _state(ns: str) -> tuple[object, ...]:
    with netlink.iproute(ns) as ipr:
        links = sorted(
            (m.get("ifname"), m["index"], m.get("address"), m.get("mtu"), m.get("master"),
             m["flags"] & 1)
            for m in ipr.get_links()
        )
        addrs = sorted((a["index"], a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr()
                       if not _kernel_made(a.get("IFA_ADDRESS") or ""))
        routes = sorted(
            (r["table"], r["type"], r.get("dst") or "", r["dst_len"], r.get("gateway") or "")
            for r in ipr.get_routes() if not _kernel_made(r.get("dst") or "")
        )
        neighs = sorted(
            (n["ifindex"], n.get("NDA_DST"), n.get("NDA_LLADDR") or "", n["state"])
            for n in ipr.get_neighbours() if n["state"] == 0x80  # permanent: ours only
        )
    return tuple(links), tuple(addrs), tuple(routes), tuple(neighs)


def _settled_state(ns: str) -> tuple[object, ...]:
    """The namespace's state once the kernel's own follow-ups (IPv6 duplicate
    address detection, then the local route of each address) are done: two
    snapshots 0.2 s apart that agree."""
    last = [_state(ns)]

    def stable() -> bool:
        now = _state(ns)
        same, last[0] = now == last[0], now
        return same

    until(stable, timeout=10, interval=0.2, what="the namespace's routes to settle")
    return last[0]


def test_a_second_run_changes_nothing_and_returns_at_once(ns: str) -> None:
    _build(ns)
    before = _settled_state(ns)
    started = time.monotonic()
    _build(ns)
    took = time.monotonic() - started
    assert _state(ns) == before
    assert took < AT_ONCE, f"second run took {took:.2f}s"


def test_the_first_run_builds_what_it_was_asked(ns: str) -> None:
    _build(ns)
    ta = netlink.link_info("ta", ns)
    assert (ta.mac, ta.up) == (PEER_MAC, True)
    bridge = netlink.link_info("tbr", ns)
    assert (bridge.mac, bridge.up) == (BRIDGE_MAC, True)
    assert netlink.addresses("ta", ns) == ["10.31.0.1/24"]
    assert neighbour("ta", GATEWAY, ns) == ("02:00:5e:31:00:fe", "permanent")
    assert neighbour("ta", "fd31::fe", ns) == ("02:00:5e:31:00:fe", "permanent")
    with netlink.iproute(ns) as ipr:
        ta6 = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=ta.ifindex)}
        assert ("fd31::1", 64) in ta6
        td = netlink.link_index(ipr, "td")
        (msg,) = ipr.link("get", index=td)
        assert msg.get("master") == bridge.ifindex
        assert msg.get("mtu") == 1500
        (tb,) = ipr.link("get", index=netlink.link_index(ipr, "tb"))
        assert tb.get("mtu") == 1400
        main = {(r.get("dst"), r["dst_len"], r.get("gateway"), r["type"])
                for r in ipr.get_routes(table=254)}
    # The default route is there although a route via the same gateway came
    # first: the case a dump filtered on dst="0.0.0.0/0" would take as present.
    assert {(None, 0, GATEWAY, 1), ("10.77.0.0", 24, GATEWAY, 1), ("10.66.0.0", 16, None, 6)} <= main


def test_a_wider_prefix_on_the_same_address_is_its_own_address(ns: str) -> None:
    ensure_veth("ta", "tb", netns=ns, peer_netns=ns)
    ensure_address("ta", "10.31.0.1/24", ns)
    ensure_address("ta", "10.31.0.1/16", ns)
    assert sorted(netlink.addresses("ta", ns)) == ["10.31.0.1/16", "10.31.0.1/24"]


def test_a_wider_route_beside_a_narrower_one_is_added(ns: str) -> None:
    ensure_veth("ta", "tb", netns=ns, peer_netns=ns)
    ensure_address("ta", "10.31.0.1/24", ns)
    ensure_route("10.77.0.0/24", gateway=GATEWAY, netns=ns)
    ensure_route("10.77.0.0/16", gateway=GATEWAY, netns=ns)
    with netlink.iproute(ns) as ipr:
        prefixes = {(r.get("dst"), r["dst_len"]) for r in ipr.get_routes(table=254)
                    if r.get("gateway") == GATEWAY}
    assert prefixes == {("10.77.0.0", 24), ("10.77.0.0", 16)}


def test_a_route_or_neighbour_that_differs_is_replaced(ns: str) -> None:
    ensure_veth("ta", "tb", netns=ns, peer_netns=ns)
    ensure_address("ta", "10.31.0.1/24", ns)
    ensure_route("default", gateway=GATEWAY, netns=ns)
    ensure_route("default", gateway="10.31.0.253", netns=ns)
    ensure_neighbour("ta", GATEWAY, "02:00:5e:31:00:fe", netns=ns, permanent=False)
    ensure_neighbour("ta", GATEWAY, "02:00:5e:31:00:fd", netns=ns)
    with netlink.iproute(ns) as ipr:
        defaults = [r.get("gateway") for r in ipr.get_routes(table=254) if r["dst_len"] == 0]
    assert defaults == ["10.31.0.253"]
    assert neighbour("ta", GATEWAY, ns) == ("02:00:5e:31:00:fd", "permanent")


def test_a_bridge_keeps_the_address_it_is_pinned_to(ns: str) -> None:
    ensure_bridge("tbr", ns, mac=BRIDGE_MAC)
    assert ensure_bridge("tbr", ns, mac=PEER_MAC).mac == PEER_MAC
    # Without a mac an existing bridge is left as it is.
    assert ensure_bridge("tbr", ns).mac == PEER_MAC


def test_a_missing_interface_is_named_with_its_namespace(ns: str) -> None:
    ensure_veth("ta", "tb", netns=ns, peer_netns=ns)
    missing = f"no interface 'nope0' in netns {ns}"
    with pytest.raises(netlink.NetlinkSetupError) as exc:
        ensure_address("nope0", "10.31.0.1/24", ns)
    assert str(exc.value) == missing
    with pytest.raises(netlink.NetlinkSetupError) as exc:
        ensure_neighbour("nope0", GATEWAY, PEER_MAC, netns=ns)
    assert str(exc.value) == missing
    with pytest.raises(netlink.NetlinkSetupError) as exc:
        ensure_route("default", gateway=GATEWAY, ifname="nope0", netns=ns)
    assert str(exc.value) == missing
    with pytest.raises(netlink.NetlinkSetupError) as exc:
        set_link_up("nope0", ns)
    assert str(exc.value) == missing
    with pytest.raises(netlink.NetlinkSetupError) as exc:
        set_link_up("ta", ns, master="nobr0")
    assert str(exc.value) == f"no bridge 'nobr0' in netns {ns}"


def test_a_veth_end_paired_elsewhere_is_refused(ns: str) -> None:
    ensure_veth("ta", "tb", netns=ns, peer_netns=ns)
    with pytest.raises(netlink.NetlinkSetupError) as exc:
        ensure_veth("ta", "tz", netns=ns, peer_netns=ns)
    assert str(exc.value) == (
        f"'ta' or 'tz' exists, but not as a pair between {ns} and {ns}; delete it first"
    )
