# SPDX-License-Identifier: Apache-2.0
"""The lab: client, relay(s), transceiver and model server as network namespaces.

Used by tests/netns, ``voxrelay demo`` and bench/. Every namespace, pin and
process belongs to one ``Lab``, named with a random suffix so that labs can
run side by side, and ``Lab`` is a context manager whose teardown is
registered before anything is built: it runs on normal exit, on an
exception, on Ctrl-C, on SIGTERM and (as a last resort) at interpreter exit.

Addressing (only inside the lab's namespaces; RFC 5737 documentation ranges
for the "internet" side, RFC 1918 for the private side)::

    client (vxc-S)                        relay (vxr-S)                 transceiver (vxt-S)
    r1  192.0.2.2/24   <--veth-->  pub  192.0.2.1/24   VIP :3478
                                   priv 10.77.0.1/24   <--veth-->  r1 --+
                                                                        |  bridge "lan"
    r2  198.51.100.2/24 <--veth--> pub  198.51.100.1/24                 |  10.77.0.2/24
        (only with relay2)         priv 10.77.0.3/24   <--veth-->  r2 --+  (transceiver's
                                   relay2 (vxs-S)                       |   private address)
                                                         model (vxm-S)  |
                                                         eth 10.77.0.4/24 <--veth--> m --+

* With ``Lab(ipv6=True)`` (dual stack) the client side has IPv6 beside
  IPv4: relay ``pub`` 2001:db8:1::1/64 (relay2: 2001:db8:2::1) is the IPv6
  VIP, the client's interface 2001:db8:1::2/64 (2001:db8:2::2), static
  neighbours both ways, no duplicate address detection. The private side
  stays IPv4: the relay translates (bpf/relay.c).
* The relay's public address is its VIP: clients send to 192.0.2.1:3478
  (relay2: 198.51.100.1:3478). The client has no route to 10.77.0.0/24, so
  the transceiver and model cannot be reached from it; the relays drop any
  forwarding from their interfaces (nftables), so nothing is routed around
  XDP either.
* The private side is one LAN (a bridge in the transceiver's namespace), so
  that the transceiver has one private address for both relays and reaches
  the model at 10.77.0.4.
* Neighbours along the relayed path are permanent entries (no ARP noise):
  client <-> relay public, relay private -> transceiver, transceiver -> relay
  private. The model's neighbours resolve by ARP.
* Every relay interface has IPv4 forwarding on (``bpf_fib_lookup`` needs it);
  the relay port range is reserved from local sockets at load.
* TX checksum offload is off on every interface that local sockets send
  from (client veths, the bridge and its ports, model), since a redirected
  packet with a partial checksum is never completed.
* The veth peers that receive the relay's XDP_REDIRECT (client r1/r2 and
  transceiver r1/r2) run an XDP_PASS program, without which the redirect is
  dropped.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from lab.netns import (
    create_netns,
    delete_netns,
    ensure_address,
    ensure_bridge,
    ensure_neighbour,
    ensure_veth,
    netns_socket,
    set_link_up,
    set_threaded_napi,
    set_tx_checksum,
)
from orchestrator import hostnet, loader, netlink, pins
from orchestrator.loader import RelayStatus
from voxrelay.config import RelayConfig

T = TypeVar("T")

NETNS_PREFIX = "vx"
PUBLIC_PORT = 3478
FRONT_PORT = 8080
"""TCP port of the lab's signaling front (``lab.stack``) on a relay's public
address: the one TCP port the relays' input filter lets in (``public_tcp_ports``)."""
LAN_PREFIX = 24
LAN_BRIDGE = "lan"
LAN_BRIDGE_MAC = "02:76:78:00:00:02"
TRANSCEIVER_ADDRESS = "10.77.0.2"
MODEL_ADDRESS = "10.77.0.4"


@dataclass(frozen=True)
class Endpoint:
    """One addressed interface of the lab."""

    netns: str
    ifname: str
    address: str
    prefixlen: int
    mac: str

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"


@dataclass(frozen=True)
class RelayHost:
    """A relay namespace: its public (client-facing) and private interfaces."""

    name: str
    """Relay name: pins live under /sys/fs/bpf/voxrelay/<name>/."""
    netns: str
    public: Endpoint
    private: Endpoint
    client_side: Endpoint
    """The client's interface that faces this relay."""
    lan_port: str
    """The bridge port in the transceiver's namespace that faces this relay."""
    public6: Endpoint | None = None
    """The IPv6 VIP on the public interface (``Lab(ipv6=True)``), else None."""
    client_side6: Endpoint | None = None
    """The client's IPv6 address towards this relay (``Lab(ipv6=True)``), else None."""

    @property
    def vip(self) -> tuple[str, int]:
        return self.public.address, PUBLIC_PORT

    def relay_config(self, **overrides: Any) -> RelayConfig:
        """A RelayConfig for this relay (public/private interfaces and addresses filled in)."""
        base = RelayConfig(
            name=self.name,
            public_interface=self.public.ifname,
            private_interface=self.private.ifname,
            public_address=self.public.address,
            private_address=self.private.address,
            public_port=PUBLIC_PORT,
            public_tcp_ports=[FRONT_PORT],
            public_address6=self.public6.address if self.public6 else "",
        )
        return replace(base, **overrides)


@dataclass
class Lab:
    """A lab topology (see the module docstring); use as ``with Lab() as lab:``.

    ``relays`` is 1 or 2. ``xdp_mode`` is the mode of the XDP_PASS programs
    on the redirect peers (and the default for ``load_relay``).
    ``threaded_napi`` turns NAPI threads on for the veths that run XDP.
    """

    relays: int = 1
    xdp_mode: str = "native"
    threaded_napi: bool = False
    public_nets: tuple[str, str] = ("192.0.2", "198.51.100")
    """The /24 (first three octets) of relay 1's and relay 2's public side.
    ``voxrelay lab up`` moves it off a range the host itself uses, since it
    routes the VIP from the host's namespace."""
    ipv6: bool = False
    """Dual stack on the client side: IPv6 addresses and the relays' IPv6 VIPs."""
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))

    client: str = field(init=False)
    transceiver: str = field(init=False)
    model: str = field(init=False)
    relay_hosts: list[RelayHost] = field(init=False, default_factory=list)
    transceiver_lan: Endpoint = field(init=False, repr=False)
    model_lan: Endpoint = field(init=False, repr=False)
    _processes: list[subprocess.Popen[Any]] = field(init=False, default_factory=list)
    _closed: bool = field(init=False, default=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _old_sigterm: Any = field(init=False, default=None, repr=False)
    _owner_pid: int = field(init=False, default=0, repr=False)

    def __post_init__(self) -> None:
        if self.relays not in (1, 2):
            raise ValueError(f"relays must be 1 or 2, got {self.relays}")
        s = self.suffix
        self.client = f"{NETNS_PREFIX}c-{s}"
        self.transceiver = f"{NETNS_PREFIX}t-{s}"
        self.model = f"{NETNS_PREFIX}m-{s}"

    # --- names --------------------------------------------------------------

    @property
    def relay(self) -> RelayHost:
        return self.relay_hosts[0]

    @property
    def relay2(self) -> RelayHost | None:
        return self.relay_hosts[1] if len(self.relay_hosts) > 1 else None

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this lab may create (whether or not built yet)."""
        names = [self.client, self.transceiver, self.model]
        names += [f"{NETNS_PREFIX}r-{self.suffix}", f"{NETNS_PREFIX}s-{self.suffix}"][: self.relays]
        return names

    def relay_names(self) -> list[str]:
        return [f"lab-{self.suffix}-{i + 1}" for i in range(self.relays)]

    # --- lifecycle ----------------------------------------------------------

    def __enter__(self) -> Lab:  # noqa: PYI034
        # Teardown first, so that a failure half-way through building (or a
        # Ctrl-C) still removes whatever was made.
        atexit.register(self.close)
        if threading.current_thread() is threading.main_thread():
            self._owner_pid = os.getpid()
            self._old_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner_pid:
            # A forked helper (pyroute2 forks to open netns sockets) inherits
            # this handler; it must die as SIGTERM says, not tear the lab down.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt(f"signal {signum}")

    def build(self) -> None:
        """Create namespaces, links, addresses, neighbours, sysctls and XDP_PASS programs."""
        s = self.suffix
        for ns in (self.client, self.transceiver, self.model):
            create_netns(ns)
        if self.ipv6:
            # Addresses usable at once (interfaces made after this): no DAD wait.
            hostnet.set_sysctl("net/ipv6/conf/default/accept_dad", 0, self.client)
        bridge = ensure_bridge(LAN_BRIDGE, self.transceiver, mac=LAN_BRIDGE_MAC)
        ensure_address(LAN_BRIDGE, f"{TRANSCEIVER_ADDRESS}/{LAN_PREFIX}", self.transceiver)
        self.transceiver_lan = Endpoint(self.transceiver, LAN_BRIDGE, TRANSCEIVER_ADDRESS,
                                        LAN_PREFIX, bridge.mac)

        plans = [("r", "r1", self.public_nets[0], "10.77.0.1"),
                 ("s", "r2", self.public_nets[1], "10.77.0.3")]
        for index, (tag, port, public_net, private_ip) in enumerate(plans[: self.relays]):
            ns = f"{NETNS_PREFIX}{tag}-{s}"
            create_netns(ns)
            if self.ipv6:
                hostnet.set_sysctl("net/ipv6/conf/default/accept_dad", 0, ns)
            pub, client_if = ensure_veth("pub", port, netns=ns, peer_netns=self.client)
            priv, _ = ensure_veth("priv", port, netns=ns,
                                  peer_netns=self.transceiver)
            set_link_up(port, self.transceiver, master=LAN_BRIDGE)
            ensure_address("pub", f"{public_net}.1/24", ns)
            ensure_address(port, f"{public_net}.2/24", self.client)
            ensure_address("priv", f"{private_ip}/{LAN_PREFIX}", ns)
            host = RelayHost(
                name=self.relay_names()[index],
                netns=ns,
                public=Endpoint(ns, "pub", f"{public_net}.1", 24, pub.mac),
                private=Endpoint(ns, "priv", private_ip, LAN_PREFIX, priv.mac),
                client_side=Endpoint(self.client, port, f"{public_net}.2", 24, client_if.mac),
                lan_port=port,
            )
            if self.ipv6:
                net6 = f"2001:db8:{index + 1}::"
                ensure_address("pub", f"{net6}1/64", ns)
                ensure_address(port, f"{net6}2/64", self.client)
                host = replace(host, public6=Endpoint(ns, "pub", f"{net6}1", 64, pub.mac),
                               client_side6=Endpoint(self.client, port, f"{net6}2", 64,
                                                     client_if.mac))
                ensure_neighbour("pub", f"{net6}2", client_if.mac, netns=ns)
                ensure_neighbour(port, f"{net6}1", pub.mac, netns=self.client)
            self.relay_hosts.append(host)
            # Static neighbours along the relayed path.
            ensure_neighbour("pub", host.client_side.address, client_if.mac, netns=ns)
            ensure_neighbour(port, host.public.address, pub.mac, netns=self.client)
            ensure_neighbour("priv", TRANSCEIVER_ADDRESS, bridge.mac, netns=ns)
            ensure_neighbour(LAN_BRIDGE, private_ip, priv.mac, netns=self.transceiver)
            for ifname in ("pub", "priv"):
                hostnet.set_forwarding(ifname, ns)
            # The peers that receive XDP_REDIRECT from the relay.
            for peer_ns, peer_if in ((self.client, port), (self.transceiver, port)):
                hostnet.attach_xdp_pass(peer_if, peer_ns, self.xdp_mode)
                if self.threaded_napi:
                    set_threaded_napi(peer_if, peer_ns)
            set_tx_checksum(port, False, self.client)
            set_tx_checksum(port, False, self.transceiver)

        eth, _ = ensure_veth("eth", "m", netns=self.model,
                             peer_netns=self.transceiver)
        set_link_up("m", self.transceiver, master=LAN_BRIDGE)
        ensure_address("eth", f"{MODEL_ADDRESS}/{LAN_PREFIX}", self.model)
        self.model_lan = Endpoint(self.model, "eth", MODEL_ADDRESS, LAN_PREFIX, eth.mac)
        set_tx_checksum("eth", False, self.model)
        set_tx_checksum("m", False, self.transceiver)
        set_tx_checksum(LAN_BRIDGE, False, self.transceiver)

    def close(self) -> None:
        """Remove everything: processes, relays (links, pins, nft), namespaces. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        errors: list[str] = []
        for proc in reversed(self._processes):
            with contextlib.suppress(ProcessLookupError):
                if proc.poll() is None:
                    proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for relay_name, ns in zip(self.relay_names(), self.namespaces[3:]):
            try:
                loader.unload(relay_name, netns=ns if netlink.netns_exists(ns) else None)
            except Exception as exc:  # noqa: BLE001 - keep tearing down; report at the end
                errors.append(f"unload {relay_name}: {exc}")
            pin_dir = pins.pin_dir_for(relay_name)
            if pin_dir.exists():
                shutil.rmtree(pin_dir, ignore_errors=True)
        for ns in self.namespaces:
            try:
                delete_netns(ns)
            except Exception as exc:  # noqa: BLE001 - keep tearing down; report at the end
                errors.append(f"delete netns {ns}: {exc}")
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_sigterm)
        if errors:
            raise RuntimeError("lab teardown left things behind: " + "; ".join(errors))

    # --- the relay ----------------------------------------------------------

    def load_relay(self, which: int = 0, *, limits: dict[str, int] | None = None,
                   mode: str | None = None, **overrides: Any) -> RelayStatus:
        """Load the XDP relay in relay namespace ``which`` (0 or 1); unloaded at close."""
        host = self.relay_hosts[which]
        status = loader.load(host.relay_config(**overrides), netns=host.netns, limits=limits,
                             mode=mode or self.xdp_mode)
        return status

    def unload_relay(self, which: int = 0) -> bool:
        host = self.relay_hosts[which]
        return loader.unload(host.name, netns=host.netns)

    # --- IPv6 ----------------------------------------------------------------

    V4_UDP_DROP_TABLE = "vxlab_no_udp4"

    def drop_ipv4_udp(self, netns: str) -> None:
        """Drop (and count) every IPv4 UDP packet ``netns`` sends: its calls can
        then only use IPv6 (the client's IPv4 candidates die there), while its
        TCP (signaling) still goes over IPv4. Goes with the namespace."""
        script = (f"table inet {self.V4_UDP_DROP_TABLE} {{\n"
                  "  chain output {\n"
                  "    type filter hook output priority 0; policy accept;\n"
                  "    meta nfproto ipv4 meta l4proto udp counter drop\n"
                  "  }\n}\n")
        proc = netlink.popen_in_netns(netns, ["nft", "-f", "-"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate(script, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"nft in {netns}: {err.strip()}")

    def ipv4_udp_dropped(self, netns: str) -> int:
        """Packets ``drop_ipv4_udp`` has dropped in ``netns``."""
        proc = netlink.popen_in_netns(
            netns, ["nft", "-j", "list", "table", "inet", self.V4_UDP_DROP_TABLE],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"nft in {netns}: {err.strip()}")
        import json

        return sum(int(expr["counter"]["packets"])
                   for item in json.loads(out)["nftables"] if "rule" in item
                   for expr in item["rule"]["expr"]
                   if isinstance(expr, dict) and isinstance(expr.get("counter"), dict))

    # --- running things inside ----------------------------------------------

    def run(self, netns: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn`` on a thread inside ``netns`` (see ``netlink.run_in_netns``)."""
        return netlink.run_in_netns(netns, fn, *args, **kwargs)

    def socket(self, netns: str, family: int = socket.AF_INET,
               type: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket made inside ``netns``; the caller closes it."""
        return netns_socket(netns, family, type)

    def popen(self, netns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process inside ``netns``; it is terminated (then killed) at close."""
        if self._closed:
            raise RuntimeError("the lab is closed")
        proc = netlink.popen_in_netns(netns, argv, **kwargs)
        self._processes.append(proc)
        return proc

    def read_proc_net(self, netns: str, name: str) -> str:
        """``/proc/net/<name>`` as seen inside ``netns`` (e.g. "snmp")."""

        def read() -> str:
            return Path(f"/proc/thread-self/net/{name}").read_text()

        return self.run(netns, read)

    def snmp(self, netns: str) -> dict[str, dict[str, int]]:
        """``/proc/net/snmp`` of ``netns`` as {"Udp": {"InDatagrams": n, ...}, "Ip": ...}."""
        lines = self.read_proc_net(netns, "snmp").splitlines()
        table: dict[str, dict[str, int]] = {}
        for header, values in zip(lines[::2], lines[1::2]):
            proto, names = header.split(":", 1)
            _, numbers = values.split(":", 1)
            table[proto] = {n: int(v) for n, v in zip(names.split(), numbers.split())}
        return table


def is_lab_address(address: str) -> bool:
    """True for the ranges the lab uses (documentation and private ranges only)."""
    ip = ipaddress.IPv4Address(address)
    return any(ip in ipaddress.IPv4Network(net) for net in
               ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "10.77.0.0/24"))
