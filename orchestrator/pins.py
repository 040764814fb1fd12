# SPDX-License-Identifier: Apache-2.0
"""Where a relay's pins, lock and load state live, and what the kernel says they hold.

A relay ``<name>`` owns:

* ``/sys/fs/bpf/voxrelay/<name>/<map>``: its maps, one pin per name in
  ``abi.MAP_NAMES`` (pinned by ``bpfprog.compile_relay``);
* ``/sys/fs/bpf/voxrelay/<name>/links/<ifname>``: the BPF links that hold
  the program on its interfaces (made by ``loader.load``);
* ``/run/voxrelay/<name>.lock``: the exclusive lock every load, replace and
  unload holds;
* ``/run/voxrelay/<name>.json``: the load state (netns, interfaces, mode,
  addresses, the sysctl values to restore at unload).

Nothing here compiles or needs bcc: ``check_layout`` compares what the
kernel reports about a pinned map with ``abi.MAP_LAYOUTS``, so that a reader
(``pinview``) can refuse a pin of another build as the loader does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchestrator import bpfsys
from orchestrator.abi import MAP_LAYOUTS, MAP_NAMES
from orchestrator.errors import LoaderBusyError, LoaderError, MapLayoutError

BPF_FS_ROOT = Path("/sys/fs/bpf/voxrelay")
"""Maps of relay <name> are pinned under BPF_FS_ROOT/<name>/."""

RUN_DIR = Path("/run/voxrelay")
"""Locks and the per-relay state file (previous sysctl values, netns, interfaces)."""

LINKS_SUBDIR = "links"

RELOAD_ADVICE = ("Unload the relay (which removes the pins and the flows in them) "
                 "and load again.")
"""What to do about a pin of another shape (said by the loader and by pinview)."""

_PIN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

BPF_FS = Path("/sys/fs/bpf")

BPFFS_ADVICE = ("run it with `nsenter --net=/run/netns/NAME voxrelay ...` instead of "
                "`ip netns exec` (which remounts /sys without the bpf filesystem), or "
                "`mount -t bpf bpf /sys/fs/bpf` first")


def _bpffs_mounted(mountinfo: Path, mount_point: Path = BPF_FS) -> bool:
    """True when ``mountinfo`` (a /proc/<pid>/mountinfo) has a bpf filesystem at ``mount_point``."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) > 4 and parts[4] == str(mount_point) and rest.split()[:1] == ["bpf"]:
            return True
    return False


def _mount_ns(pid: int | str) -> str | None:
    try:
        return str(Path(f"/proc/{pid}/ns/mnt").readlink())
    except OSError:
        return None


def _ancestors(limit: int = 8) -> list[int]:
    """PID 1, then our parent, its parent... (bounded): who may see the host's bpffs."""
    found, pid = [1], os.getppid()
    while pid > 1 and len(found) <= limit:
        found.append(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def ensure_bpffs() -> str | None:
    """Find the host's bpf filesystem when /sys/fs/bpf is not one in this mount namespace.

    ``ip netns exec`` runs its command in a mount namespace of its own with
    /sys remounted, without the bpf filesystem: the pins look gone
    (``relay status`` said "not loaded" right after a load). A fresh ``mount
    -t bpf`` would not help there, since every bpffs mount is a new, empty
    instance, and the kernel refuses to bind a mount of another namespace
    here. But a process still in the host's mount namespace (PID 1, or the
    shell that ran ``ip netns exec``) shows its tree at /proc/<pid>/root, and
    a path through it reaches the same instance, the same pins: the pin root
    (``BPF_FS_ROOT``) moves there for this process. When this *is* PID 1's
    mount namespace and it has no bpffs, one is mounted, as systemd does at boot.

    Returns a note of what it did (None: nothing to do). Raises LoaderError
    (one line, with what to do) when it cannot.
    """
    global BPF_FS_ROOT  # noqa: PLW0603 - one switch, for this process, before any pin is used
    if _bpffs_mounted(Path("/proc/self/mountinfo")) or BPF_FS_ROOT != BPF_FS / "voxrelay":
        return None
    ours = _mount_ns("self")
    for pid in _ancestors():
        if _mount_ns(pid) in (None, ours) or not _bpffs_mounted(Path(f"/proc/{pid}/mountinfo")):
            continue
        root = Path(f"/proc/{pid}/root{BPF_FS}")
        try:
            next(root.iterdir(), None)  # can we look inside (ptrace rules)?
        except OSError:
            continue
        BPF_FS_ROOT = root / "voxrelay"
        return (f"{BPF_FS} is hidden in this mount namespace (ip netns exec remounts /sys): "
                f"using the host's bpf filesystem through {root}")
    if ours is not None and ours == _mount_ns(1):
        argv = ["mount", "-t", "bpf", "bpf", str(BPF_FS)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LoaderError(f"{' '.join(argv)} failed ({exc}): {BPFFS_ADVICE}") from None
        if done.returncode != 0:
            raise LoaderError(f"{' '.join(argv)} failed ({done.stderr.strip()}): {BPFFS_ADVICE}")
        return f"{BPF_FS} was not mounted: mounted the bpf filesystem there"
    raise LoaderError(f"{BPF_FS} is not a bpf filesystem in this mount namespace: {BPFFS_ADVICE}")


def pin_dir_for(relay_name: str) -> Path:
    """``/sys/fs/bpf/voxrelay/<relay_name>``, refusing names that are not one path part."""
    if not _PIN_NAME.match(relay_name) or relay_name in (".", ".."):
        raise ValueError(
            f"relay name {relay_name!r} must be letters, digits, '_', '-' or '.'"
        )
    return BPF_FS_ROOT / relay_name


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


@dataclass
class LoadState:
    """Written to RUN_DIR/<name>.json at load; read by status, replace and unload."""

    netns: str | None
    interfaces: list[str]
    mode: str
    public_address: str
    private_address: str
    sysctl_restore: dict[str, str] = field(default_factory=dict)


# --- lock and state ---------------------------------------------------------------


def state_path(name: str) -> Path:
    return RUN_DIR / f"{name}.json"


def read_state(name: str) -> LoadState | None:
    try:
        data = json.loads(state_path(name).read_text())
    except FileNotFoundError:
        return None
    return LoadState(**data)


def write_state(name: str, state: LoadState) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    tmp = state_path(name).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=1))
    tmp.replace(state_path(name))


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
            if not state_path(name).exists() and not pin_dir_for(name).exists():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
    finally:
        os.close(fd)  # releases the flock


def link_pins(name: str) -> list[Path]:
    directory = pin_dir_for(name) / LINKS_SUBDIR
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir())


# --- map pins ---------------------------------------------------------------------------


def check_layout(name: str, info: bpfsys.MapInfo) -> None:
    """Raise MapLayoutError unless ``info`` (a pinned map) has map ``name``'s type and sizes.

    The sizes are ``abi.MAP_LAYOUTS``' (a per-CPU map's value is one CPU's),
    max_entries is not checked: it follows the -D limits of the load.
    """
    want = MAP_LAYOUTS[name]
    if (info.type, info.key_size, info.value_size) != tuple(want):
        raise MapLayoutError(
            f"map {name}: kernel has type {info.type}, key {info.key_size} B, value "
            f"{info.value_size} B; this build expects type {want.map_type}, key "
            f"{want.key_size} B, value {want.value_size} B (a pin from another build?)"
        )


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

def unpin_all(name: str) -> None:
    """Remove every pin of the relay (links first, then maps) and its directory."""
    pin_dir = pin_dir_for(name)
    for pin in link_pins(name):
        with contextlib.suppress(FileNotFoundError):
            pin.unlink()
    with contextlib.suppress(FileNotFoundError, OSError):
        (pin_dir / LINKS_SUBDIR).rmdir()
    unpin_maps(pin_dir)
    with contextlib.suppress(OSError):  # only when no other relay is pinned there
        pin_dir.parent.rmdir()
    if pin_dir.is_dir():
        leftovers = sorted(p.name for p in pin_dir.iterdir())
        if leftovers:
            raise LoaderError(f"{pin_dir} still holds {', '.join(leftovers)} (not the relay's "
                              "pins); remove them by hand")


def unpin_new(name: str, before: set[str]) -> None:
    """After a failed load: remove the map pins that load created, keep older ones."""
    pin_dir = pin_dir_for(name)
    for map_name in MAP_NAMES:
        if map_name not in before:
            with contextlib.suppress(FileNotFoundError):
                (pin_dir / map_name).unlink()
    if not before:
        with contextlib.suppress(OSError):
            pin_dir.rmdir()
        with contextlib.suppress(OSError):
            pin_dir.parent.rmdir()
