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

Host plumbing done at load, all idempotent (``orchestrator.netlink``):
IPv4 forwarding on both interfaces (``bpf_fib_lookup`` returns FWD_DISABLED
without it), the relay port range reserved from local sockets
(``ip_local_reserved_ports``), and an nftables table ``voxrelay_<name>``
whose forward chain drops whatever arrives on the relay's interfaces: with
forwarding on, anything the program passes up would otherwise be routed by
the kernel, around the relay's checks. The earlier sysctl values are kept in
``/run/voxrelay/<name>.json`` and restored by ``unload``.

veth: an ``XDP_REDIRECT`` into a veth is delivered only if the veth's *peer*
runs an XDP program (or has GRO on). ``attach_xdp_pass`` puts a
two-instruction XDP_PASS program there; ``lab.topology`` does it for the
lab. Physical NICs need nothing of the sort.

Neighbours: ``bpf_fib_lookup`` never starts ARP; a packet whose next hop is
unresolved is passed up and counted (STAT_PASS_NO_NEIGH), and the forward
drop above stops it there. So the control plane resolves next hops:
``prime_neighbour`` when a transceiver is added, and ``NeighbourWatcher``
bumps ``config.nh_generation`` when a neighbour changes, which invalidates
the next hops cached in flows.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import json
import os
import select
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import bccmaps, bpfprog, bpfsys, netlink
from orchestrator.errors import (
    AlreadyLoadedError,
    LoaderBusyError,
    LoaderError,
    MapLayoutError,
    NotLoadedError,
)
from voxrelay.config import RelayConfig

RUN_DIR = Path("/run/voxrelay")
"""Locks and the per-relay state file (previous sysctl values, netns, interfaces)."""

LINKS_SUBDIR = "links"


@dataclass(frozen=True)
class PinnedMap:
    """A map pinned under the relay's pin directory, as the kernel reports it."""

    name: str
    path: str
    id: int
    type: str
    key_size: int
    value_size: int
    max_entries: int


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


@dataclass
class _State:
    """Written to RUN_DIR/<name>.json at load; read by status, replace and unload."""

    netns: str | None
    interfaces: list[str]
    mode: str
    public_address: str
    private_address: str
    sysctl_restore: dict[str, str] = field(default_factory=dict)


# --- paths, lock, state -------------------------------------------------------------


def pin_dir_for(name: str) -> Path:
    return bpfprog.pin_dir_for(name)


def _state_path(name: str) -> Path:
    return RUN_DIR / f"{name}.json"


def _read_state(name: str) -> _State | None:
    try:
        data = json.loads(_state_path(name).read_text())
    except FileNotFoundError:
        return None
    return _State(**data)


def _write_state(name: str, state: _State) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    tmp = _state_path(name).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=1))
    tmp.replace(_state_path(name))


@contextlib.contextmanager
def relay_lock(name: str) -> Iterator[None]:
    """Hold the relay's exclusive lock, or raise LoaderBusyError at once."""
    pin_dir_for(name)  # validates the name before it becomes a path
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = RUN_DIR / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LoaderBusyError(
                f"relay {name!r} is being loaded, replaced or unloaded by another process "
                f"(lock {path} is held); wait for it to finish"
            ) from None
        try:
            yield
        finally:
            # Nothing of the relay left (never loaded, failed, or unloaded): drop
            # the lock file too, still holding the lock. A loader that opened
            # it meanwhile holds a lock on the unlinked file and then finds the
            # relay absent, which is also what it would find after waiting.
            if not _state_path(name).exists() and not pin_dir_for(name).exists():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
    finally:
        os.close(fd)  # releases the flock


def _link_pins(name: str) -> list[Path]:
    directory = pin_dir_for(name) / LINKS_SUBDIR
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir())


# --- map layout checks ------------------------------------------------------------------


_RELOAD_ADVICE = ("Unload the relay (which removes the pins and the flows in them) "
                  "and load again.")


def _compile_pinned(limits: Mapping[str, int] | None, pin_dir: Path) -> Any:
    """``bpfprog.compile_relay`` with its layout errors turned into the loader's, with advice.

    compile_relay already refuses a reused pin of another shape (MapLayoutError);
    the loader's message adds what to do about it.
    """
    try:
        return bpfprog.compile_relay(limits, pin_dir)
    except MapLayoutError as exc:
        raise MapLayoutError(f"{exc}. {_RELOAD_ADVICE}") from None


def check_pinned_maps(bpf: Any, pin_dir: Path, names: Sequence[str]) -> Any:
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
        raise MapLayoutError(f"{exc}. {_RELOAD_ADVICE}") from None
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
        fd = bpfsys.obj_get(str(pin))
        try:
            pinned = bpfsys.map_info(fd)
        finally:
            bpfsys.close(fd)
        if pinned.id != info.id:
            raise MapLayoutError(
                f"the program's map {name!r} (id {info.id}) is not the one pinned at {pin} "
                f"(id {pinned.id}); refusing to attach a program that would not share state"
            )
    return relay_maps


def pinned_maps(name: str) -> tuple[PinnedMap, ...]:
    """The maps pinned in the relay's pin directory (links excluded)."""
    directory = pin_dir_for(name)
    if not directory.is_dir():
        return ()
    found = []
    for path in sorted(directory.iterdir()):
        if path.name == LINKS_SUBDIR or path.is_dir():
            continue
        fd = bpfsys.obj_get(str(path))
        try:
            info = bpfsys.map_info(fd)
        except bpfsys.BpfError:
            continue  # not a map (a program or link someone pinned here)
        finally:
            bpfsys.close(fd)
        found.append(PinnedMap(path.name, str(path), info.id, info.type_name, info.key_size,
                               info.value_size, info.max_entries))
    return tuple(found)


# --- host plumbing ----------------------------------------------------------------------


def nft_table_name(name: str) -> str:
    return "voxrelay_" + name.replace("-", "_").replace(".", "_")


def _nft(doc: dict[str, Any] | None, netns: str | None, args: Sequence[str] = ()) -> str:
    argv = ["nft", "-j", *args] if doc is None else ["nft", "-j", "-f", "-"]
    proc = netlink.popen_in_netns(
        netns, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(None if doc is None else json.dumps(doc), timeout=30)
    if proc.returncode != 0:
        raise LoaderError(f"nft {' '.join(argv[2:])} failed: {err.strip() or out.strip()}")
    return out


def install_forward_drop(name: str, ifnames: Sequence[str], netns: str | None = None) -> None:
    """Table ``inet voxrelay_<name>``: drop (and count) forwarding from the relay's interfaces.

    Flushed and rewritten each time, so it is idempotent. Only packets that
    arrive on ``ifnames`` are matched; other forwarding on the host is untouched.
    """
    table = nft_table_name(name)
    base = {"family": "inet", "table": table}
    doc = {"nftables": [
        {"add": {"table": {"family": "inet", "name": table}}},
        {"flush": {"table": {"family": "inet", "name": table}}},
        {"add": {"chain": {**base, "name": "forward", "type": "filter", "hook": "forward",
                           "prio": 0, "policy": "accept"}}},
        {"add": {"rule": {**base, "chain": "forward", "comment": "XDP passed it up: not ours to route",
                          "expr": [
                              {"match": {"op": "==", "left": {"meta": {"key": "iifname"}},
                                         "right": {"set": list(ifnames)}}},
                              {"counter": None},
                              {"drop": None},
                          ]}}},
    ]}
    _nft(doc, netns)


def forward_drop_installed(name: str, netns: str | None = None) -> bool:
    out = _nft(None, netns, ["list", "tables"])
    tables = [item["table"]["name"] for item in json.loads(out)["nftables"] if "table" in item]
    return nft_table_name(name) in tables


def forward_drop_count(name: str, netns: str | None = None) -> int:
    """Packets the forward-drop rule has dropped (0 when the table is absent)."""
    if not forward_drop_installed(name, netns):
        return 0
    out = _nft(None, netns, ["list", "table", "inet", nft_table_name(name)])
    total = 0
    for item in json.loads(out)["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if isinstance(expr, dict) and isinstance(expr.get("counter"), dict):
                total += int(expr["counter"]["packets"])
    return total


def remove_forward_drop(name: str, netns: str | None = None) -> None:
    if forward_drop_installed(name, netns):
        _nft({"nftables": [{"delete": {"table": {"family": "inet",
                                                  "name": nft_table_name(name)}}}]}, netns)


def attach_xdp_pass(ifname: str, netns: str | None = None, mode: str = "native") -> int:
    """Give a veth the XDP program its peer's ``XDP_REDIRECT`` needs; returns the prog id.

    Attached by netlink with UPDATE_IF_NOEXIST (it lives as long as the
    interface, which suits lab veths). An XDP_PASS program already there is
    kept; any other program is an error.
    """
    _mode, prog_id = netlink.xdp_attached(ifname, netns)
    if prog_id:
        fd = bpfsys.prog_fd_by_id(prog_id)
        try:
            name = bpfsys.prog_info(fd).name
        finally:
            bpfsys.close(fd)
        if name == "xdp_pass":
            return prog_id
        raise AlreadyLoadedError(
            f"{ifname} already runs XDP program {name!r} (id {prog_id}); not adding xdp_pass"
        )
    fd = bpfsys.load_xdp_pass()
    try:
        netlink.set_xdp_fd(ifname, fd, bpfsys.XDP_FLAGS_UPDATE_IF_NOEXIST
                           | bpfsys.XDP_MODE_FLAGS[mode], netns)
        return bpfsys.prog_info(fd).id
    finally:
        bpfsys.close(fd)


def detach_xdp_pass(ifname: str, netns: str | None = None) -> bool:
    """Remove the XDP_PASS program from ``ifname`` if (and only if) it is ours."""
    current_mode, prog_id = netlink.xdp_attached(ifname, netns)
    if not prog_id:
        return False
    fd = bpfsys.prog_fd_by_id(prog_id)
    try:
        if bpfsys.prog_info(fd).name != "xdp_pass":
            return False
        flags = bpfsys.XDP_FLAGS_REPLACE | bpfsys.XDP_MODE_FLAGS.get(current_mode or "", 0)
        netlink.set_xdp_fd(ifname, -1, flags, netns, expected_fd=fd)
        return True
    finally:
        bpfsys.close(fd)


def _resolve_address(configured: str, ifname: str, netns: str | None) -> str:
    if configured != "0.0.0.0":
        return configured
    found = netlink.addresses(ifname, netns)
    if not found:
        raise LoaderError(f"{ifname} has no IPv4 address; set one or configure the address")
    return found[0].split("/")[0]


def _prepare_host(relay: RelayConfig, netns: str | None) -> dict[str, str]:
    """Sysctls and the forward drop; returns the sysctl values to restore at unload."""
    restore: dict[str, str] = {}
    keys = [f"net/ipv4/conf/{relay.public_interface}/forwarding",
            f"net/ipv4/conf/{relay.private_interface}/forwarding",
            "net/ipv4/ip_local_reserved_ports"]
    for key in keys:
        restore[key] = netlink.get_sysctl(key, netns)
    for ifname in (relay.public_interface, relay.private_interface):
        netlink.set_forwarding(ifname, netns)
    netlink.reserve_local_ports(relay.port_min, relay.port_max, netns)
    install_forward_drop(relay.name, [relay.public_interface, relay.private_interface], netns)
    return restore


def _undo_host(name: str, restore: Mapping[str, str], netns: str | None) -> None:
    remove_forward_drop(name, netns)
    for key, value in restore.items():
        with contextlib.suppress(FileNotFoundError):
            netlink.set_sysctl(key, value, netns)


# --- load / replace / unload / status ---------------------------------------------------------


def _compile(relay: RelayConfig, limits: Mapping[str, int] | None) -> tuple[Any, Any, int]:
    """Compile (reusing pins), check the pinned maps, then verify and load the program.

    Returns (bcc.BPF, bccmaps.RelayMaps, program fd).
    """
    pin_dir = pin_dir_for(relay.name)
    bpf = _compile_pinned(limits, pin_dir)
    try:
        relay_maps = check_pinned_maps(bpf, pin_dir, bpfprog.MAP_NAMES)
        fn = bpfprog.load_relay_fn(bpf)
    except BaseException:
        bpf.cleanup()
        raise
    return bpf, relay_maps, int(fn.fd)  # type: ignore[attr-defined]


def _write_config(relay_maps: Any, relay: RelayConfig, netns: str | None,
                  public: str, private: str) -> None:
    """The ``config`` map, from the relay's settings and the interfaces' indexes."""
    relay_maps.write_config(
        relay,
        public_addr=public,
        private_addr=private,
        public_ifindex=netlink.link_info(relay.public_interface, netns).ifindex,
        private_ifindex=netlink.link_info(relay.private_interface, netns).ifindex,
    )


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
    with relay_lock(relay.name):
        existing = _link_pins(relay.name)
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
        public = _resolve_address(relay.public_address, relay.public_interface, netns)
        private = _resolve_address(relay.private_address, relay.private_interface, netns)
        for addr in (public, private):
            ipaddress.IPv4Address(addr)

        pin_dir = pin_dir_for(relay.name)
        pins_before = set(os.listdir(pin_dir)) if pin_dir.is_dir() else set()
        made: list[tuple[int, Path]] = []
        bpf: Any = None
        restore: dict[str, str] | None = None
        try:
            bpf, relay_maps, prog_fd = _compile(relay, limits)
            _write_config(relay_maps, relay, netns, public, private)
            restore = _prepare_host(relay, netns)
            (pin_dir / LINKS_SUBDIR).mkdir(parents=True, exist_ok=True)
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
                pin = pin_dir / LINKS_SUBDIR / ifname
                made.append((link_fd, pin))
                bpfsys.obj_pin(link_fd, str(pin))
            _write_state(relay.name, _State(netns, ifnames, mode, public, private, restore))
        except BaseException:
            for link_fd, pin in made:
                bpfsys.link_detach(link_fd)
                with contextlib.suppress(FileNotFoundError):
                    pin.unlink()
            with contextlib.suppress(OSError):
                (pin_dir / LINKS_SUBDIR).rmdir()
            _unpin_new(relay.name, pins_before)
            if restore is not None:
                _undo_host(relay.name, restore, netns)
            raise
        finally:
            for link_fd, _ in made:
                bpfsys.close(link_fd)
            if bpf is not None:
                bpf.cleanup()
    return status(relay.name, netns=netns)


def replace(
    relay: RelayConfig, *, netns: str | None = None, limits: Mapping[str, int] | None = None
) -> RelayStatus:
    """Swap the running program for a freshly compiled one, keeping the pinned maps.

    Per interface the swap is atomic (``BPF_LINK_UPDATE`` with the old
    program as the expected one); if the second interface fails, the first is
    swapped back. The config map is rewritten from ``relay``.
    """
    with relay_lock(relay.name):
        pins = _link_pins(relay.name)
        if not pins:
            raise NotLoadedError(f"relay {relay.name!r} is not loaded; load it first")
        state = _read_state(relay.name)
        netns = netns if netns is not None else (state.netns if state else None)
        wanted = {relay.public_interface, relay.private_interface}
        if {p.name for p in pins} != wanted:
            raise LoaderError(
                f"relay {relay.name!r} is attached to {', '.join(p.name for p in pins)}, the "
                f"config names {', '.join(sorted(wanted))}; unload and load to move it"
            )
        bpf, relay_maps, new_fd = _compile(relay, limits)
        done: list[tuple[int, int]] = []  # (link fd, old prog fd) already swapped
        opened: list[int] = []
        try:
            public = _resolve_address(relay.public_address, relay.public_interface, netns)
            private = _resolve_address(relay.private_address, relay.private_interface, netns)
            _write_config(relay_maps, relay, netns, public, private)
            for pin in pins:
                link_fd = bpfsys.obj_get(str(pin))
                opened.append(link_fd)
                info = bpfsys.link_info(link_fd)
                if not info.ifindex:
                    raise LoaderError(f"the link on {pin.name} is defunct (interface gone); "
                                      "unload and load again")
                old_fd = bpfsys.prog_fd_by_id(info.prog_id)
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
            _write_state(relay.name, state)
    return status(relay.name, netns=netns)


def _unpin_all(name: str) -> None:
    """Remove every pin of the relay (links first, then maps) and its directory."""
    pin_dir = pin_dir_for(name)
    for pin in _link_pins(name):
        with contextlib.suppress(FileNotFoundError):
            pin.unlink()
    with contextlib.suppress(FileNotFoundError, OSError):
        (pin_dir / LINKS_SUBDIR).rmdir()
    bpfprog.unpin_maps(pin_dir)
    with contextlib.suppress(OSError):  # only when no other relay is pinned there
        pin_dir.parent.rmdir()
    if pin_dir.is_dir():
        leftovers = sorted(p.name for p in pin_dir.iterdir())
        if leftovers:
            raise LoaderError(f"{pin_dir} still holds {', '.join(leftovers)} (not the relay's "
                              "pins); remove them by hand")


def _unpin_new(name: str, before: set[str]) -> None:
    """After a failed load: remove the map pins that load created, keep older ones."""
    pin_dir = pin_dir_for(name)
    for map_name in bpfprog.MAP_NAMES:
        if map_name not in before:
            with contextlib.suppress(FileNotFoundError):
                (pin_dir / map_name).unlink()
    if not before:
        with contextlib.suppress(OSError):
            pin_dir.rmdir()
        with contextlib.suppress(OSError):
            pin_dir.parent.rmdir()


def unload(name: str, *, netns: str | None = None) -> bool:
    """Detach the relay from its interfaces and remove its pins, nft table and state.

    Returns False if there was nothing to unload. The sysctls changed at load
    are restored (when their interfaces still exist).
    """
    with relay_lock(name):
        state = _read_state(name)
        netns = netns if netns is not None else (state.netns if state else None)
        pins = _link_pins(name)
        pin_dir = pin_dir_for(name)
        found = bool(pins) or pin_dir.exists() or state is not None
        for pin in pins:
            fd = bpfsys.obj_get(str(pin))
            try:
                bpfsys.link_detach(fd)
            finally:
                bpfsys.close(fd)
        _unpin_all(name)
        if netns is None or netlink.netns_exists(netns):
            _undo_host(name, state.sysctl_restore if state else {}, netns)
        with contextlib.suppress(FileNotFoundError):
            _state_path(name).unlink()
        return found


def status(name: str, *, netns: str | None = None) -> RelayStatus:
    """What is attached and pinned for relay ``name`` (no lock: read-only)."""
    state = _read_state(name)
    netns = netns if netns is not None else (state.netns if state else None)
    pin_dir = pin_dir_for(name)
    interfaces = []
    prog_ids = set()
    for pin in _link_pins(name):
        fd = bpfsys.obj_get(str(pin))
        try:
            info = bpfsys.link_info(fd)
        finally:
            bpfsys.close(fd)
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
        maps=pinned_maps(name),
    )


def placement(name: str) -> tuple[str | None, tuple[str, ...]] | None:
    """(netns, interfaces) relay ``name`` was loaded into, from its state file.

    None when this host has no state for it (not loaded by ``load``, or
    /run was cleared by a reboot).
    """
    state = _read_state(name)
    if state is None:
        return None
    return state.netns, tuple(state.interfaces)


# --- neighbours -------------------------------------------------------------------------------


def prime_neighbour(address: str, *, netns: str | None = None) -> tuple[int, str]:
    """Start resolving the next hop to a transceiver's ``address`` (call on transceiver add).

    Returns (ifindex, neighbour address). See ``netlink.prime_neighbour``.
    """
    return netlink.prime_neighbour(address, netns)


_RTMGRP_NEIGH = 0x4
_RTM_NEWNEIGH = 28
_RTM_DELNEIGH = 29


class NeighbourWatcher:
    """Calls ``on_change()`` when a neighbour on the relay's interfaces changes its MAC or goes.

    Listens to rtnetlink neighbour events inside ``netns``. Only what
    invalidates a cached next hop counts: a new MAC for a known neighbour, a
    deletion, or a FAILED entry. ``on_change`` is typically
    ``bump_nh_generation`` bound to the relay's maps. Use ``poll(timeout)``
    from your own loop, or ``start()``/``stop()`` for a background thread.
    """

    def __init__(self, on_change: Callable[[], None], *, netns: str | None = None,
                 ifnames: Sequence[str] | None = None) -> None:
        self.on_change = on_change
        self.netns = netns
        self.ifindexes = (
            {netlink.link_info(n, netns).ifindex for n in ifnames} if ifnames else None
        )
        self.changes = 0
        self._known: dict[tuple[int, str], str | None] = {}
        self._sock = netlink.run_in_netns(
            netns, socket.socket, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE
        )
        self._sock.bind((0, _RTMGRP_NEIGH))
        self._sock.setblocking(False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seed()

    def _seed(self) -> None:
        with netlink.iproute(self.netns) as ipr:
            for entry in ipr.get_neighbours(family=socket.AF_INET):
                self._known[(entry["ifindex"], entry.get_attr("NDA_DST"))] = entry.get_attr(
                    "NDA_LLADDR")

    def _relevant(self, msg_type: int, entry: Any) -> bool:
        ifindex = entry["ifindex"]
        if self.ifindexes is not None and ifindex not in self.ifindexes:
            return False
        key = (ifindex, entry.get_attr("NDA_DST"))
        mac = entry.get_attr("NDA_LLADDR")
        before = self._known.get(key)
        if msg_type == _RTM_DELNEIGH or entry["state"] & 0x20:  # NUD_FAILED
            self._known.pop(key, None)
            return before is not None
        self._known[key] = mac
        return before is not None and mac is not None and mac != before

    def poll(self, timeout: float = 0.0) -> int:
        """Handle pending events (waiting up to ``timeout`` s); returns changes signalled."""
        from pyroute2.netlink.rtnl.ndmsg import ndmsg

        ready, _, _ = select.select([self._sock], [], [], timeout)
        if not ready:
            return 0
        changed = 0
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                break
            offset = 0
            while offset + 16 <= len(data):
                length = int.from_bytes(data[offset:offset + 4], "little")
                msg_type = int.from_bytes(data[offset + 4:offset + 6], "little")
                if length < 16:
                    break
                if msg_type in (_RTM_NEWNEIGH, _RTM_DELNEIGH):
                    entry = ndmsg(data[offset:offset + length])
                    entry.decode()
                    if entry["family"] == socket.AF_INET and self._relevant(msg_type, entry):
                        changed += 1
                offset += (length + 3) & ~3
        if changed:
            self.changes += changed
            self.on_change()
        return changed

    def start(self) -> None:
        def run() -> None:
            while not self._stop.is_set():
                self.poll(0.5)

        self._thread = threading.Thread(target=run, name="neighbour-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> NeighbourWatcher:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def open_maps(name: str, *, limits: Mapping[str, int] | None = None) -> Any:
    """The typed maps (``bccmaps.RelayMaps``) of the loaded relay ``name``, from its pins.

    Compiles the program to get bcc's views of the maps (nothing is attached)
    and checks every pin as ``load`` does. Raises NotLoadedError when the
    relay has no pins, rather than creating fresh, unattached maps.
    """
    pin_dir = pin_dir_for(name)
    missing = [n for n in bpfprog.MAP_NAMES if not (pin_dir / n).exists()]
    if missing:
        raise NotLoadedError(f"relay {name!r} has no pinned {', '.join(missing)} under "
                             f"{pin_dir}; load it first")
    bpf = _compile_pinned(limits, pin_dir)
    try:
        return check_pinned_maps(bpf, pin_dir, bpfprog.MAP_NAMES)
    except BaseException:
        bpf.cleanup()
        raise


def bump_nh_generation(name: str, relay_maps: Any = None) -> Callable[[], None]:
    """An ``on_change`` for NeighbourWatcher that invalidates relay ``name``'s cached next hops.

    ``relay_maps``: the relay's already open ``bccmaps.RelayMaps`` (the
    orchestrator passes its own, so nothing is compiled twice and a relay
    loaded with other limits works); default: open them from the pins.
    """
    if relay_maps is None:
        relay_maps = open_maps(name)

    def bump() -> None:
        relay_maps.bump_nh_generation()

    return bump
