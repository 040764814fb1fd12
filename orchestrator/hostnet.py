# SPDX-License-Identifier: Apache-2.0
"""Host plumbing the relay needs around its XDP program, all idempotent.

Done at load (``loader.load``) and undone at unload:

* IPv4 forwarding on both interfaces (``bpf_fib_lookup`` returns
  FWD_DISABLED without it);
* the relay port range reserved from local sockets (``ip_local_reserved_ports``);
* an nftables table ``voxrelay_<name>`` whose forward chain drops whatever
  arrives on the relay's interfaces: with forwarding on, anything the
  program passes up would otherwise be routed by the kernel, around the
  relay's checks.

The earlier sysctl values are returned by ``prepare_host`` (the loader keeps
them in the load state, ``pins.LoadState``) and restored by ``undo_host``.

veth: an ``XDP_REDIRECT`` into a veth is delivered only if the veth's *peer*
runs an XDP program (or has GRO on). ``attach_xdp_pass`` puts a
two-instruction XDP_PASS program there; ``lab.topology`` does it for the
lab. Physical NICs need nothing of the sort.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator import bpfsys, netlink
from orchestrator.errors import AlreadyLoadedError, LoaderError
from voxrelay.config import RelayConfig

# --- sysctls ------------------------------------------------------------------


def _sysctl_file(key: str) -> Path:
    key = key.replace(".", "/") if "/" not in key else key
    if ".." in key or key.startswith("/"):
        raise ValueError(f"bad sysctl key {key!r}")
    return Path("/proc/sys") / key

def set_sysctl(key: str, value: str | int, netns: str | None = None) -> None:
    """Write a sysctl (``net.ipv4.ip_forward`` or ``net/ipv4/...`` form) in ``netns``.

    Use the slash form for keys with dots in them (interface names).
    """
    path = _sysctl_file(key)

    def write() -> None:
        # The newline makes an empty value a real write (clearing a list sysctl).
        path.write_text(f"{value}\n")

    netlink.run_in_netns(netns, write)

def get_sysctl(key: str, netns: str | None = None) -> str:
    path = _sysctl_file(key)

    def read() -> str:
        return path.read_text().strip()

    return netlink.run_in_netns(netns, read)

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


# --- nftables forward drop ------------------------------------------------------


def nft_table_name(name: str) -> str:
    return "voxrelay_" + name.replace("-", "_").replace(".", "_")


def _nft(doc: dict[str, Any] | None, netns: str | None, args: Sequence[str] = ()) -> str:
    argv = ["nft", "-j", *args] if doc is None else ["nft", "-j", "-f", "-"]
    proc = netlink.popen_in_netns(
        netns, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    # text=True: both are str (Popen[Any] only because of the **kwargs pass-through).
    out: str
    err: str
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
        {"add": {"rule": {**base, "chain": "forward",
                          "comment": "XDP passed it up: not ours to route",
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


def resolve_address(configured: str, ifname: str, netns: str | None) -> str:
    if configured != "0.0.0.0":
        return configured
    found = netlink.addresses(ifname, netns)
    if not found:
        raise LoaderError(f"{ifname} has no IPv4 address; set one or configure the address")
    return found[0].split("/")[0]


def prepare_host(relay: RelayConfig, netns: str | None) -> dict[str, str]:
    """Sysctls and the forward drop; returns the sysctl values to restore at unload."""
    restore: dict[str, str] = {}
    keys = [f"net/ipv4/conf/{relay.public_interface}/forwarding",
            f"net/ipv4/conf/{relay.private_interface}/forwarding",
            "net/ipv4/ip_local_reserved_ports"]
    for key in keys:
        restore[key] = get_sysctl(key, netns)
    for ifname in (relay.public_interface, relay.private_interface):
        set_forwarding(ifname, netns)
    reserve_local_ports(relay.port_min, relay.port_max, netns)
    install_forward_drop(relay.name, [relay.public_interface, relay.private_interface], netns)
    return restore


def undo_host(name: str, restore: Mapping[str, str], netns: str | None) -> None:
    remove_forward_drop(name, netns)
    for key, value in restore.items():
        with contextlib.suppress(FileNotFoundError):
            set_sysctl(key, value, netns)
