# SPDX-License-Identifier: Apache-2.0
"""Load, replace, unload and inspect the XDP relay on a host (or a namespace).

How the relay owns its hook
---------------------------
The relay program is attached to its public and private interfaces through
**BPF links**, one per interface, pinned as
``/sys/fs/bpf/voxrelay/<name>/links/<ifname>`` beside the relay's maps
(``/sys/fs/bpf/voxrelay/<name>/<map>``, pinned by ``bpfprog.compile_relay``).
That gives the guarantees netlink attachment (bcc's ``attach_xdp``) lacks:

* a link is refused (EBUSY) on an interface that already runs any XDP
  program, so a second load never silently replaces a live relay;
* a pinned link survives the process that made it, and only its holder can
  detach it: a netlink detach from a stale process fails with EBUSY;
* ``replace`` swaps the program inside the existing links with
  ``BPF_LINK_UPDATE`` + ``BPF_F_REPLACE``: atomic per interface, and refused
  if the program attached is not the one ``replace`` saw (another replace won);
* the replacement reuses the pinned maps, so flows, keys and counters stay.

Every operation runs under an exclusive lock (``/run/voxrelay/<name>.lock``);
a second loader gets a clear ``LoaderBusyError`` instead of racing.

Around the program (``orchestrator.hostnet``, all idempotent): IPv4
forwarding on both interfaces, the relay port range reserved from local
sockets, and an nftables forward drop on the relay's interfaces; the
earlier sysctl values are kept in the load state (``pins.LoadState``,
``/run/voxrelay/<name>.json``) and restored by ``unload``. Next hops
(``orchestrator.neighbours``) are the upkeep's job, not the loader's.

Where things live (pin paths, lock, state file) is ``orchestrator.pins``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator import bccmaps, bpfprog, bpfsys, hostnet, netlink, pins
from orchestrator.abi import MAP_NAMES
from orchestrator.errors import (
    AlreadyLoadedError,
    LoaderBusyError,
    LoaderError,
    MapLayoutError,
    NotLoadedError,
)
from orchestrator.pins import PinnedMap
from voxrelay.config import RelayConfig, parse_extra_private_addresses

__all__ = [
    "AlreadyLoadedError", "AttachedInterface", "LoaderBusyError", "LoaderError",
    "MapLayoutError", "NotLoadedError", "RelayStatus", "check_pinned_maps", "load",
    "open_maps", "placement", "replace", "status", "unload",
]


@dataclass(frozen=True)
class AttachedInterface:
    """One interface the relay is attached to, through a pinned BPF link."""

    ifname: str
    ifindex: int
    link_id: int
    prog_id: int
    mode: str | None
    """"native" or "generic" as netlink reports it; None if the link is defunct."""
    link_pin: str
    attached: bool
    """False once the link is defunct (its interface was deleted or moved)."""


@dataclass(frozen=True)
class RelayStatus:
    """What is loaded for one relay name (``status()``)."""

    name: str
    pin_dir: str
    netns: str | None
    loaded: bool
    prog_id: int | None
    prog_name: str | None
    prog_tag: str | None
    mode: str | None
    interfaces: tuple[AttachedInterface, ...] = ()
    maps: tuple[PinnedMap, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- map layout checks ------------------------------------------------------------------



def _compile_pinned(limits: Mapping[str, int] | None, pin_dir: Path) -> Any:
    """``bpfprog.compile_relay`` with its layout errors turned into the loader's, with advice.

    compile_relay already refuses a reused pin of another shape (MapLayoutError);
    the loader's message adds what to do about it.
    """
    try:
        return bpfprog.compile_relay(limits, pin_dir)
    except MapLayoutError as exc:
        raise MapLayoutError(f"{exc}. {pins.RELOAD_ADVICE}") from None


def check_pinned_maps(bpf: Any, pin_dir: Path, names: Sequence[str]) -> bccmaps.RelayMaps:
    """Check the compiled ``bpf``'s maps against its pins; returns ``bccmaps.RelayMaps(bpf)``.

    bcc's BPF_TABLE_PINNED opens an existing pin without looking at it, so a
    pin left by another build (or other ``-D`` limits) could be of another
    shape. Type, key and value sizes are checked by ``bccmaps.RelayMaps`` (the
    one place that knows the ctypes views); this adds the entry count and
    that each table really is the pinned map.
    """
    try:
        relay_maps = bccmaps.RelayMaps(bpf)
    except MapLayoutError as exc:
        raise MapLayoutError(f"{exc}. {pins.RELOAD_ADVICE}") from None
    for name in names:
        table = bpf.get_table(name)
        info = bpfsys.map_info(table.map_fd)
        if info.max_entries != table.max_entries:
            raise MapLayoutError(
                f"pinned map {name!r} holds {info.max_entries} entries, the program declares "
                f"{table.max_entries} (other limits at compile time?). Unload the relay "
                "(which removes the pins and the flows in them) and load again."
            )
        pin = pin_dir / name
        pinned = bpfsys.with_pinned_fd(pin, bpfsys.map_info)
        if pinned.id != info.id:
            raise MapLayoutError(
                f"the program's map {name!r} (id {info.id}) is not the one pinned at {pin} "
                f"(id {pinned.id}); refusing to attach a program that would not share state"
            )
    return relay_maps


# --- load / replace / unload / status ---------------------------------------------------------


def _compile(relay: RelayConfig,
             limits: Mapping[str, int] | None) -> tuple[Any, bccmaps.RelayMaps, int]:
    """Compile (reusing pins), check the pinned maps, then verify and load the program.

    Returns (bcc.BPF, bccmaps.RelayMaps, program fd).
    """
    pin_dir = pins.pin_dir_for(relay.name)
    bpf = _compile_pinned(limits, pin_dir)
    try:
        relay_maps = check_pinned_maps(bpf, pin_dir, MAP_NAMES)
        prog_fd = bpfprog.load_relay_fn(bpf).fd
    except BaseException:
        bpf.cleanup()
        raise
    return bpf, relay_maps, prog_fd


def _write_config(relay_maps: bccmaps.RelayMaps, relay: RelayConfig, netns: str | None,
                  public: str, private: str) -> None:
    """The ``config`` map, from the relay's settings and the interfaces' indexes, and the
    ``blocked_sources`` trie: the private interface's subnets (read from it now), the
    relay's own addresses and ``relay.blocked_source_prefixes`` (written first, so that a
    replace never runs a moment without them)."""
    public6 = hostnet.resolve_address6(relay.public_address6, relay.public_interface, netns)
    private6 = hostnet.resolve_address6(relay.private_address6, relay.private_interface, netns)
    relay_maps.write_blocked_sources(bccmaps.desired_blocked_sources(
        relay, public_addr=public, private_addr=private,
        private_networks=[*netlink.addresses(relay.private_interface, netns),
                          *netlink.addresses6(relay.private_interface, netns)],
        relay_addresses=[a for a in (public6, private6) if a is not None]))
    relay_maps.write_config(
        relay,
        public_addr=public,
        private_addr=private,
        public_ifindex=netlink.link_info(relay.public_interface, netns).ifindex,
        private_ifindex=netlink.link_info(relay.private_interface, netns).ifindex,
        public_addr6=public6,
        private_addr6=private6,
    )
    relay_maps.write_private_addrs([private, *private_addresses_on(relay, netns)])


def private_addresses_on(relay: RelayConfig, netns: str | None) -> list[str]:
    """``relay.extra_private_addresses``, each checked to be on the private
    interface: a transceiver's reply to an address the relay does not hold
    would never reach it (nothing answers ARP for it)."""
    extras = [str(a) for a in parse_extra_private_addresses(relay)]
    held = {a.split("/")[0] for a in netlink.addresses(relay.private_interface, netns)}
    missing = [a for a in extras if a not in held]
    if missing:
        raise LoaderError(
            f"[relay] extra_private_addresses {', '.join(missing)} not on "
            f"{relay.private_interface} (it has {', '.join(sorted(held)) or 'none'}): "
            "add them to the interface first")
    return extras


def load(
    relay: RelayConfig,
    *,
    netns: str | None = None,
    limits: Mapping[str, int] | None = None,
    mode: str | None = None,
) -> RelayStatus:
    """Compile the relay, pin its maps, write its config and attach it to both interfaces.

    ``netns`` is where the interfaces live (None: this process's namespace).
    ``mode`` overrides ``relay.xdp_mode`` ("native" or "generic"). Raises
    AlreadyLoadedError if this relay is loaded or an interface already has
    an XDP program, LoaderBusyError if another loader is at work.
    """
    mode = mode or relay.xdp_mode
    if mode not in bpfsys.XDP_MODE_FLAGS:
        raise LoaderError(f"xdp mode {mode!r} must be 'native' or 'generic'")
    ifnames = [relay.public_interface, relay.private_interface]
    if relay.public_interface == relay.private_interface:
        raise LoaderError("public_interface and private_interface must differ")
    with pins.relay_lock(relay.name):
        existing = pins.link_pins(relay.name)
        if existing:
            current = status(relay.name, netns=netns)
            raise AlreadyLoadedError(
                f"relay {relay.name!r} is already loaded on "
                f"{', '.join(p.name for p in existing)} (program id {current.prog_id}); "
                "use replace to swap the program or unload first"
            )
        links = {}
        for ifname in ifnames:
            links[ifname] = netlink.link_info(ifname, netns).ifindex  # clear error if absent
            other_mode, other_id = netlink.xdp_attached(ifname, netns)
            if other_id:
                raise AlreadyLoadedError(
                    f"{ifname} already runs XDP program id {other_id} ({other_mode}), not "
                    f"attached by relay {relay.name!r}; detach it first"
                )
        public = hostnet.resolve_address(relay.public_address, relay.public_interface, netns)
        private = hostnet.resolve_address(relay.private_address, relay.private_interface, netns)
        for addr in (public, private):
            ipaddress.IPv4Address(addr)
        private_addresses_on(relay, netns)  # before the compile: a clear error, at once

        pin_dir = pins.pin_dir_for(relay.name)
        pins_before = {p.name for p in pin_dir.iterdir()} if pin_dir.is_dir() else set()
        made: list[tuple[int, Path]] = []
        bpf: Any = None
        restore: dict[str, str] | None = None
        try:
            bpf, relay_maps, prog_fd = _compile(relay, limits)
            _write_config(relay_maps, relay, netns, public, private)
            restore = hostnet.prepare_host(relay, netns)
            (pin_dir / pins.LINKS_SUBDIR).mkdir(parents=True, exist_ok=True)
            for ifname, ifindex in links.items():
                try:
                    link_fd = netlink.run_in_netns(
                        netns, bpfsys.link_create_xdp, prog_fd, ifindex,
                        bpfsys.XDP_MODE_FLAGS[mode],
                    )
                except bpfsys.BpfError as exc:
                    hint = {
                        errno.EBUSY: "another XDP program is attached",
                        errno.EOPNOTSUPP: f"the driver has no {mode} XDP; try mode generic",
                    }.get(exc.errno or 0, "")
                    raise LoaderError(f"cannot attach to {ifname}: {exc.strerror}"
                                      + (f" ({hint})" if hint else "")) from None
                pin = pin_dir / pins.LINKS_SUBDIR / ifname
                made.append((link_fd, pin))
                bpfsys.obj_pin(link_fd, str(pin))
            pins.write_state(relay.name,
                             pins.LoadState(netns, ifnames, mode, public, private, restore))
        except BaseException:
            for link_fd, pin in made:
                bpfsys.link_detach(link_fd)
                with contextlib.suppress(FileNotFoundError):
                    pin.unlink()
            with contextlib.suppress(OSError):
                (pin_dir / pins.LINKS_SUBDIR).rmdir()
            pins.unpin_new(relay.name, pins_before)
            if restore is not None:
                hostnet.undo_host(relay.name, restore, netns)
            raise
        finally:
            for link_fd, _ in made:
                bpfsys.close(link_fd)
            if bpf is not None:
                bpf.cleanup()
    return status(relay.name, netns=netns)


def _attached_prog_id(pin: Path, link_fd: int) -> int:
    """The id of the program the link pinned at ``pin`` runs; refuses a defunct link."""
    info = bpfsys.link_info(link_fd)
    if not info.ifindex:
        raise LoaderError(f"the link on {pin.name} is defunct (interface gone); "
                          "unload and load again")
    return info.prog_id


def replace(
    relay: RelayConfig, *, netns: str | None = None, limits: Mapping[str, int] | None = None
) -> RelayStatus:
    """Swap the running program for a freshly compiled one, keeping the pinned maps.

    Per interface the swap is atomic (``BPF_LINK_UPDATE`` with the old
    program as the expected one); if the second interface fails, the first is
    swapped back. The config map is rewritten from ``relay``.
    """
    with pins.relay_lock(relay.name):
        link_pins = pins.link_pins(relay.name)
        if not link_pins:
            raise NotLoadedError(f"relay {relay.name!r} is not loaded; load it first")
        state = pins.read_state(relay.name)
        netns = netns if netns is not None else (state.netns if state else None)
        wanted = {relay.public_interface, relay.private_interface}
        if {p.name for p in link_pins} != wanted:
            raise LoaderError(
                f"relay {relay.name!r} is attached to {', '.join(p.name for p in link_pins)}, the "
                f"config names {', '.join(sorted(wanted))}; unload and load to move it"
            )
        bpf, relay_maps, new_fd = _compile(relay, limits)
        done: list[tuple[int, int]] = []  # (link fd, old prog fd) already swapped
        opened: list[int] = []
        try:
            public = hostnet.resolve_address(relay.public_address, relay.public_interface, netns)
            private = hostnet.resolve_address(relay.private_address, relay.private_interface, netns)
            _write_config(relay_maps, relay, netns, public, private)
            for pin in link_pins:
                link_fd = bpfsys.obj_get(str(pin))
                opened.append(link_fd)
                old_fd = bpfsys.prog_fd_by_id(_attached_prog_id(pin, link_fd))
                opened.append(old_fd)
                bpfsys.link_update(link_fd, new_fd, old_fd)
                done.append((link_fd, old_fd))
        except BaseException:
            for link_fd, old_fd in done:
                with contextlib.suppress(bpfsys.BpfError):
                    bpfsys.link_update(link_fd, old_fd, new_fd)
            raise
        finally:
            for fd in opened:
                bpfsys.close(fd)
            bpf.cleanup()
        if state is not None:
            pins.write_state(relay.name, state)
    return status(relay.name, netns=netns)


def unload(name: str, *, netns: str | None = None) -> bool:
    """Detach the relay from its interfaces and remove its pins, nft table and state.

    Returns False if there was nothing to unload. The sysctls changed at load
    are restored (when their interfaces still exist).
    """
    with pins.relay_lock(name):
        state = pins.read_state(name)
        netns = netns if netns is not None else (state.netns if state else None)
        link_pins = pins.link_pins(name)
        pin_dir = pins.pin_dir_for(name)
        found = bool(link_pins) or pin_dir.exists() or state is not None
        for pin in link_pins:
            bpfsys.with_pinned_fd(pin, bpfsys.link_detach)
        pins.unpin_all(name)
        if netns is None or netlink.netns_exists(netns):
            hostnet.undo_host(name, state.sysctl_restore if state else {}, netns)
        with contextlib.suppress(FileNotFoundError):
            pins.state_path(name).unlink()
        return found


def status(name: str, *, netns: str | None = None) -> RelayStatus:
    """What is attached and pinned for relay ``name`` (no lock: read-only)."""
    state = pins.read_state(name)
    netns = netns if netns is not None else (state.netns if state else None)
    pin_dir = pins.pin_dir_for(name)
    interfaces = []
    prog_ids = set()
    for pin in pins.link_pins(name):
        info = bpfsys.with_pinned_fd(pin, bpfsys.link_info)
        attached = info.ifindex != 0
        mode = None
        if attached and (netns is None or netlink.netns_exists(netns)):
            with contextlib.suppress(netlink.NetlinkSetupError):
                mode, _ = netlink.xdp_attached(pin.name, netns)
        interfaces.append(AttachedInterface(pin.name, info.ifindex, info.id, info.prog_id, mode,
                                            str(pin), attached))
        prog_ids.add(info.prog_id)
    prog_id = prog_name = prog_tag = None
    if prog_ids:
        prog_id = min(prog_ids)
        fd = bpfsys.prog_fd_by_id(prog_id)
        try:
            prog = bpfsys.prog_info(fd)
        finally:
            bpfsys.close(fd)
        prog_name, prog_tag = prog.name, prog.tag
    modes = {i.mode for i in interfaces if i.mode}
    return RelayStatus(
        name=name,
        pin_dir=str(pin_dir),
        netns=netns,
        loaded=any(i.attached for i in interfaces),
        prog_id=prog_id,
        prog_name=prog_name,
        prog_tag=prog_tag,
        mode=modes.pop() if len(modes) == 1 else (state.mode if state else None),
        interfaces=tuple(interfaces),
        maps=pins.pinned_maps(name),
    )


def placement(name: str) -> tuple[str | None, tuple[str, ...]] | None:
    """(netns, interfaces) relay ``name`` was loaded into, from its state file.

    None when this host has no state for it (not loaded by ``load``, or
    /run was cleared by a reboot).
    """
    state = pins.read_state(name)
    if state is None:
        return None
    return state.netns, tuple(state.interfaces)


def open_maps(name: str, *, limits: Mapping[str, int] | None = None) -> bccmaps.RelayMaps:
    """The typed maps (``bccmaps.RelayMaps``) of the loaded relay ``name``, from its pins.

    Compiles the program to get bcc's views of the maps (nothing is attached)
    and checks every pin as ``load`` does. Raises NotLoadedError when the
    relay has no pins, rather than creating fresh, unattached maps.
    """
    pin_dir = pins.pin_dir_for(name)
    missing = [n for n in MAP_NAMES if not (pin_dir / n).exists()]
    if missing:
        raise NotLoadedError(f"relay {name!r} has no pinned {', '.join(missing)} under "
                             f"{pin_dir}; load it first")
    bpf = _compile_pinned(limits, pin_dir)
    try:
        return check_pinned_maps(bpf, pin_dir, MAP_NAMES)
    except BaseException:
        bpf.cleanup()
        raise
