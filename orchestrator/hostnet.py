# SPDX-License-Identifier: Apache-2.0
"""Host plumbing the relay needs around its XDP program, all idempotent.

Done at load (``loader.load``) and undone at unload:

* IPv4 forwarding on both interfaces (``bpf_fib_lookup`` returns
  FWD_DISABLED without it);
* the relay port range reserved from local sockets (``ip_local_reserved_ports``);
* an nftables table ``voxrelay_<name>`` whose forward chain drops whatever
  arrives on the relay's interfaces: with forwarding on, anything the
  program passes up would otherwise be routed by the kernel, around the
  relay's checks;
* in the same table, an input chain that drops every packet arriving on the
  *public* interface for the host itself, except replies to the host's own
  connections, the ICMP that keeps paths working, DHCP, the relay's UDP
  port and ``[relay] public_tcp_ports``. Linux accepts a packet for any of
  its addresses on any interface (the weak host model), so without this a
  client could reach the directory on the *private* address by routing it
  through the public interface. The filter belongs to loading the relay, not
  to a deployment tool, so that no way of running it leaves the control
  plane open.

The earlier sysctl values are returned by ``prepare_host`` (the loader keeps
them in the load state, ``pins.LoadState``) and restored by ``undo_host``.

veth: an ``XDP_REDIRECT`` into a veth is delivered only if the veth's *peer*
runs an XDP program (or has GRO on). ``attach_xdp_pass`` puts a
two-instruction XDP_PASS program there; ``lab.topology`` does it for the
lab. Physical NICs need nothing of the sort.
"""

from __future__ import annotations

import contextlib
import errno
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
    A sysctl that already has the value is not written: in a container
    /proc/sys is read-only, and the host (the Ansible relay role's sysctl.d,
    or whoever runs the container) sets these before the relay loads.
    """
    path = _sysctl_file(key)

    def write() -> None:
        if path.read_text().strip() == str(value).strip():
            return
        try:
            # The newline makes an empty value a real write (clearing a list sysctl).
            path.write_text(f"{value}\n")
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
            # sysctl(8) takes the slash form too (interface names with dots).
            raise LoaderError(
                f"cannot set {key} = {value}: /proc/sys is read-only here (a container?); "
                f"set it on the host first: sysctl -w '{key}={value}'") from None

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


def _iif(ifname: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": ifname}}


def _accept(chain: dict[str, Any], comment: str, *matches: dict[str, Any]) -> dict[str, Any]:
    return {"add": {"rule": {**chain, "comment": comment,
                             "expr": [*matches, {"accept": None}]}}}


def _payload(protocol: str, fld: str, right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"payload": {"protocol": protocol, "field": fld}},
                      "right": right}}


def _set(values: Sequence[Any]) -> Any:
    return values[0] if len(values) == 1 else {"set": list(values)}


def _input_rules(base: dict[str, Any], public_if: str, udp_port: int,
                 tcp_ports: Sequence[int]) -> list[dict[str, Any]]:
    """The public interface's input chain: what the host itself may receive there."""
    chain = {**base, "chain": "input"}
    on_public = _iif(public_if)
    rules = [
        {"add": {"chain": {**base, "name": "input", "type": "filter", "hook": "input",
                           "prio": 0, "policy": "accept"}}},
        _accept(chain, "replies to the host's own connections", on_public,
                {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                           "right": ["established", "related"]}}),
        _accept(chain, "ICMP that keeps paths working (PMTU, unreachable, ping)", on_public,
                _payload("icmp", "type", _set(["echo-request", "destination-unreachable",
                                               "time-exceeded", "parameter-problem"]))),
        _accept(chain, "ICMPv6 neighbour discovery and errors", on_public,
                _payload("icmpv6", "type", _set([
                    "nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-advert",
                    "packet-too-big", "destination-unreachable", "time-exceeded",
                    "parameter-problem", "echo-request"]))),
        _accept(chain, "DHCP client", on_public, _payload("udp", "dport", _set([68, 546]))),
        _accept(chain, "the relay's port (XDP answers it first)", on_public,
                _payload("udp", "dport", udp_port)),
    ]
    if tcp_ports:
        rules.append(_accept(chain, "[relay] public_tcp_ports", on_public,
                             _payload("tcp", "dport", _set(sorted(set(tcp_ports))))))
    rules.append({"add": {"rule": {**chain,
                                   "comment": "not a public service: the control plane is private",
                                   "expr": [on_public, {"counter": None}, {"drop": None}]}}})
    return rules


def install_host_filter(name: str, public_if: str, private_if: str, *, public_port: int,
                        public_tcp_ports: Sequence[int] = (),
                        netns: str | None = None) -> None:
    """Table ``inet voxrelay_<name>``: the forward drop on both interfaces and
    the public interface's input filter (module docstring). Flushed and
    rewritten each time, so it is idempotent; packets on other interfaces
    are untouched."""
    table = nft_table_name(name)
    base = {"family": "inet", "table": table}
    doc = _forward_doc(table, base, [public_if, private_if])
    doc["nftables"] += _input_rules(base, public_if, public_port, public_tcp_ports)
    _nft(doc, netns)


def install_forward_drop(name: str, ifnames: Sequence[str], netns: str | None = None) -> None:
    """Only the forward drop (no input filter): drop (and count) forwarding
    from ``ifnames``. Flushed and rewritten each time, so it is idempotent."""
    table = nft_table_name(name)
    _nft(_forward_doc(table, {"family": "inet", "table": table}, ifnames), netns)


def _forward_doc(table: str, base: dict[str, Any], ifnames: Sequence[str]) -> dict[str, Any]:
    return {"nftables": [
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


def forward_drop_installed(name: str, netns: str | None = None) -> bool:
    out = _nft(None, netns, ["list", "tables"])
    tables = [item["table"]["name"] for item in json.loads(out)["nftables"] if "table" in item]
    return nft_table_name(name) in tables


def forward_drop_count(name: str, netns: str | None = None) -> int:
    """Packets the forward-drop rule has dropped (0 when the table is absent)."""
    return _chain_count(name, "forward", netns)


def input_drop_count(name: str, netns: str | None = None) -> int:
    """Packets for the host the public input filter has dropped (0 when absent)."""
    return _chain_count(name, "input", netns)


def _chain_count(name: str, chain: str, netns: str | None) -> int:
    if not forward_drop_installed(name, netns):
        return 0
    out = _nft(None, netns, ["list", "table", "inet", nft_table_name(name)])
    total = 0
    for item in json.loads(out)["nftables"]:
        if item.get("rule", {}).get("chain") != chain:
            continue
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


def resolve_address6(configured: str, ifname: str, netns: str | None) -> str | None:
    """``[relay] public_address6``/``private_address6`` as an address: None for
    "" (no IPv6), the interface's first global IPv6 address for "::"."""
    if configured == "":
        return None
    if configured != "::":
        return configured
    found = netlink.addresses6(ifname, netns)
    if not found:
        raise LoaderError(f"{ifname} has no global IPv6 address; add one, configure the "
                          "address, or leave it \"\" for no IPv6")
    return found[0].split("/")[0]


def prepare_host(relay: RelayConfig, netns: str | None) -> dict[str, str]:
    """Sysctls, the forward drop and the input filter; returns the sysctl values
    to restore at unload."""
    restore: dict[str, str] = {}
    keys = [f"net/ipv4/conf/{relay.public_interface}/forwarding",
            f"net/ipv4/conf/{relay.private_interface}/forwarding",
            "net/ipv4/ip_local_reserved_ports"]
    dual_stack = bool(relay.public_address6 or relay.private_address6)
    ipv6_keys = []
    if dual_stack:
        # bpf_fib_lookup checks IPv6 forwarding on the ingress interface
        # (FWD_DISABLED otherwise). Forwarding makes the kernel ignore router
        # advertisements unless accept_ra is 2, which would cost a SLAAC
        # host its default route: keep accepting them where they were.
        for ifname in (relay.public_interface, relay.private_interface):
            ipv6_keys += [f"net/ipv6/conf/{ifname}/forwarding",
                          f"net/ipv6/conf/{ifname}/accept_ra"]
    for key in keys + ipv6_keys:
        restore[key] = get_sysctl(key, netns)
    for ifname in (relay.public_interface, relay.private_interface):
        set_forwarding(ifname, netns)
        if dual_stack:
            if restore[f"net/ipv6/conf/{ifname}/accept_ra"] == "1":
                set_sysctl(f"net/ipv6/conf/{ifname}/accept_ra", 2, netns)
            set_sysctl(f"net/ipv6/conf/{ifname}/forwarding", 1, netns)
    reserve_local_ports(relay.port_min, relay.port_max, netns)
    install_host_filter(relay.name, relay.public_interface, relay.private_interface,
                        public_port=relay.public_port, public_tcp_ports=relay.public_tcp_ports,
                        netns=netns)
    return restore


def undo_host(name: str, restore: Mapping[str, str], netns: str | None) -> None:
    remove_forward_drop(name, netns)
    for key, value in restore.items():
        with contextlib.suppress(FileNotFoundError):
            set_sysctl(key, value, netns)
