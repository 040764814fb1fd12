# SPDX-License-Identifier: Apache-2.0
"""Loader lifecycle in a lab: load, refuse a double load, replace atomically, unload cleanly.

Also the host plumbing the loader owns: the hook cannot be taken over by
netlink, pinned maps of the wrong shape are refused, neighbours are primed,
and neighbour changes invalidate cached next hops.
"""

from __future__ import annotations

import asyncio
import errno
import threading

import pytest
from pyroute2 import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from lab.netns import ensure_neighbour, neighbour
from lab.topology import Lab
from orchestrator import abi, bpfprog, bpfsys, hostnet, loader, neighbours, netlink, pins
from tests.support import until


def _xdp_prog_ids(lab: Lab) -> dict[str, int | None]:
    return {ifname: netlink.xdp_attached(ifname, lab.relay.netns)[1] for ifname in ("pub", "priv")}


def test_load_replace_unload(lab: Lab) -> None:
    relay = lab.relay
    reserved_before = hostnet.get_sysctl("net/ipv4/ip_local_reserved_ports", relay.netns)

    status = lab.load_relay(mode="generic")
    assert status.loaded
    assert status.prog_name == bpfprog.RELAY_FUNCTION
    assert status.mode == "generic"
    assert {i.ifname for i in status.interfaces} == {"pub", "priv"}
    assert all(i.attached and i.prog_id == status.prog_id for i in status.interfaces)
    assert {m.name for m in status.maps} == set(abi.MAP_NAMES)
    assert _xdp_prog_ids(lab) == {"pub": status.prog_id, "priv": status.prog_id}
    assert hostnet.forward_drop_installed(relay.name, relay.netns)
    assert hostnet.get_sysctl("net/ipv4/conf/pub/forwarding", relay.netns) == "1"
    assert hostnet.get_sysctl("net/ipv4/ip_local_reserved_ports", relay.netns) == "20000-59999"

    # A second load of the same relay is refused, and changes nothing.
    with pytest.raises(loader.AlreadyLoadedError, match="is already loaded on priv, pub"):
        lab.load_relay(mode="generic")
    # Another relay name on the same interfaces is refused too.
    with pytest.raises(loader.AlreadyLoadedError, match="pub already runs XDP program id"):
        loader.load(relay.relay_config(name=relay.name + "-other"), netns=relay.netns)
    # A stale process detaching (or replacing) by netlink, as bcc's attach_xdp
    # does, cannot touch a link-attached relay.
    with pytest.raises(NetlinkError) as excinfo:
        netlink.set_xdp_fd("pub", -1, bpfsys.XDP_FLAGS_SKB_MODE, relay.netns)
    assert excinfo.value.code == errno.EBUSY
    assert _xdp_prog_ids(lab) == {"pub": status.prog_id, "priv": status.prog_id}

    # Mark the maps, then replace: new program, same links, same maps.
    maps = loader.open_maps(relay.name)
    maps.set_key(3, b"k" * 16)
    maps.set_transceiver(42, "10.77.0.2")
    del maps
    replaced = loader.replace(relay.relay_config(), netns=relay.netns)
    assert replaced.loaded
    assert replaced.prog_id != status.prog_id
    assert {i.link_id for i in replaced.interfaces} == {i.link_id for i in status.interfaces}
    assert {(m.name, m.id) for m in replaced.maps} == {(m.name, m.id) for m in status.maps}
    assert _xdp_prog_ids(lab) == {"pub": replaced.prog_id, "priv": replaced.prog_id}
    maps = loader.open_maps(relay.name)
    assert 3 in maps.active_keys()
    assert 42 in maps.transceivers()
    del maps

    assert loader.unload(relay.name) is True
    after = loader.status(relay.name)
    assert not after.loaded and after.interfaces == () and after.maps == ()
    assert not pins.pin_dir_for(relay.name).exists()
    assert _xdp_prog_ids(lab) == {"pub": None, "priv": None}
    assert not hostnet.forward_drop_installed(relay.name, relay.netns)
    assert hostnet.get_sysctl("net/ipv4/ip_local_reserved_ports", relay.netns) == reserved_before
    assert loader.unload(relay.name) is False  # nothing left: idempotent


def test_replace_needs_a_loaded_relay(lab: Lab) -> None:
    with pytest.raises(loader.NotLoadedError, match="is not loaded; load it first"):
        loader.replace(lab.relay.relay_config(), netns=lab.relay.netns)
    with pytest.raises(loader.NotLoadedError, match="load it first"):
        loader.open_maps(lab.relay.name)


def test_concurrent_loader_is_refused(lab: Lab) -> None:
    with pins.relay_lock(lab.relay.name), pytest.raises(
        loader.LoaderBusyError, match="lock .* is held"
    ):
        lab.load_relay()
    assert _xdp_prog_ids(lab) == {"pub": None, "priv": None}


def test_pinned_map_of_another_shape_is_refused(lab: Lab) -> None:
    relay = lab.relay
    pin_dir = pins.pin_dir_for(relay.name)
    pin_dir.mkdir(parents=True)
    # A "config" array whose value is 8 bytes: what an older build might have left.
    fd = bpfsys.map_create(2, 4, 8, 1, "config")
    try:
        bpfsys.obj_pin(fd, str(pin_dir / "config"))
    finally:
        bpfsys.close(fd)
    try:
        with pytest.raises(loader.MapLayoutError, match=r"map config: .*value 8 B.*Unload the relay"):
            lab.load_relay()
        assert _xdp_prog_ids(lab) == {"pub": None, "priv": None}
        # The failed load removed the pins it made and kept the one it found.
        assert sorted(p.name for p in pin_dir.iterdir()) == ["config"]
    finally:
        loader.unload(relay.name, netns=relay.netns)
    assert not pin_dir.exists()


def test_xdp_pass_on_redirect_peers(lab: Lab) -> None:
    for ns in (lab.client, lab.transceiver):
        mode, prog_id = netlink.xdp_attached(lab.relay.lan_port, ns)
        assert mode == "native" and prog_id
        # Idempotent: the same program is kept.
        assert hostnet.attach_xdp_pass(lab.relay.lan_port, ns) == prog_id
    assert hostnet.detach_xdp_pass(lab.relay.lan_port, lab.client) is True
    assert netlink.xdp_attached(lab.relay.lan_port, lab.client) == (None, None)
    assert hostnet.detach_xdp_pass(lab.relay.lan_port, lab.client) is False


def test_prime_neighbour_resolves_without_traffic(lab: Lab) -> None:
    relay_ns = lab.relay.netns
    assert neighbour("priv", lab.model_lan.address, relay_ns) is None
    ifindex, hop = neighbours.prime_neighbour(lab.model_lan.address, netns=relay_ns)
    assert hop == lab.model_lan.address
    assert ifindex == netlink.link_info("priv", relay_ns).ifindex
    until(lambda: (neighbour("priv", lab.model_lan.address, relay_ns) or ("", ""))[0]
          == lab.model_lan.mac, timeout=5, interval=0.05,
          what="the primed neighbour to resolve")


async def test_neighbour_change_bumps_next_hop_generation(lab: Lab) -> None:
    relay = lab.relay
    # pyroute2's synchronous IPRoute refuses a thread with a running loop:
    # the lab's netlink calls go to threads, the watcher runs on this loop.
    await asyncio.to_thread(lab.load_relay)
    maps = await asyncio.to_thread(loader.open_maps, relay.name)
    generation = maps.read_config().nh_generation
    bumps: list[int] = []
    async with neighbours.NeighbourWatcher(lambda: bumps.append(maps.bump_nh_generation()),
                                           netns=relay.netns, ifnames=["pub", "priv"]) as watcher:
        # Re-writing the same MAC is not a change.
        seen = watcher.changes
        await asyncio.to_thread(ensure_neighbour, "priv", lab.transceiver_lan.address,
                                lab.transceiver_lan.mac, netns=relay.netns)
        assert await watcher.wait_changes(seen, 0.3) == 0
        # A new MAC for the transceiver is.
        seen = watcher.changes
        await asyncio.to_thread(ensure_neighbour, "priv", lab.transceiver_lan.address,
                                "02:00:00:00:00:99", netns=relay.netns)
        assert await watcher.wait_changes(seen, 2.0) == 1
        # So is the entry going away.
        seen = watcher.changes

        def delete() -> None:
            with netlink.iproute(relay.netns) as ipr:
                ipr.neigh("del", dst=lab.transceiver_lan.address,
                          ifindex=netlink.link_info("priv", relay.netns).ifindex)

        await asyncio.to_thread(delete)
        assert await watcher.wait_changes(seen, 2.0) == 1
    assert bumps == [generation + 1, generation + 2]
    assert maps.read_config().nh_generation == generation + 2


async def test_lost_neighbour_events_count_as_a_change(lab: Lab) -> None:
    relay = lab.relay
    priv = await asyncio.to_thread(netlink.link_info, "priv", relay.netns)
    on_change: list[int] = []
    # The smallest receive buffer the kernel allows (it rounds 1 up).
    async with neighbours.NeighbourWatcher(lambda: on_change.append(1), netns=relay.netns,
                                           ifnames=["priv"], rcvbuf=1) as watcher:
        seen = watcher.changes

        def burst() -> None:
            # New entries only: none of them is a change by itself.
            with netlink.iproute(relay.netns) as ipr:
                for i in range(150):
                    ipr.neigh("replace", dst=f"10.77.0.{100 + i}",
                              lladdr=f"02:00:00:00:70:{i:02x}", ifindex=priv.ifindex,
                              state=ndmsg.states["permanent"])

        # Joined on the loop's own thread, so that nothing reads the socket
        # while the burst overruns it.
        thread = threading.Thread(target=burst)
        thread.start()
        thread.join()
        # So the one change is the overrun's.
        assert await watcher.wait_changes(seen, 5.0) == 1
        assert on_change == [1]
        # The watcher resubscribed: a later change is still seen, once.
        await asyncio.sleep(0.3)
        seen = watcher.changes
        await asyncio.to_thread(ensure_neighbour, "priv", "10.77.0.100", "02:00:00:00:71:01",
                                netns=relay.netns)
        assert await watcher.wait_changes(seen, 2.0) == 1
