# SPDX-License-Identifier: Apache-2.0
"""Typed reads and writes over the relay's BPF maps through bcc tables (bpf/maps.h).

``RelayMaps`` wraps the tables of a ``bcc.BPF`` built by
``orchestrator.bpfprog.compile_relay`` (with a pin directory, that object
reopens the pinned maps of a running relay). The orchestrator writes
``config``, ``keys`` and ``transceivers``; the XDP program writes the flow
state, which this module only reads (or deletes on request) and returns as
frozen dataclasses.

The ctypes key and value types come from bcc, which builds them from
bpf/structs.h; nothing here repeats a struct. ``RelayMaps`` checks each map's
type, key size and value size as the kernel reports them against those
ctypes types (``bpfprog.check_map_layouts``), and raises
``orchestrator.errors.MapLayoutError`` when they differ (e.g. a pin left by
an older build).

This is what the sync and the upkeep write through. Reading a loaded relay
without compiling is ``orchestrator.pinview``'s job.

Byte order: addresses and ports in the maps are in network order, as the
packet has them; this module converts them to ``IPv4Address`` and ``int``.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from orchestrator import abi
from orchestrator.bpfprog import XDP_WRITTEN_MAPS, check_map_layouts
from orchestrator.media import ConsentRtt, MediaStats
from orchestrator.verdicts import STAT_MAX, RelayStat, verdict_names
from voxrelay.config import RelayConfig, parse_source_prefixes
from voxrelay.token import KEY_BYTES, MAX_KEY_ID

AF_INET = socket.AF_INET.value
AF_INET6 = socket.AF_INET6.value

IPAddress = IPv4Address | IPv6Address
"""An address in a map: ``struct relay_addr`` holds either family (dual stack)."""
IPNetwork = IPv4Network | IPv6Network

class TransceiverStatus(enum.IntEnum):
    """``transceiver.status`` (bpf/consts.h TRANSCEIVER_*, mirrored by ``orchestrator.abi``)."""

    ACTIVE = abi.TRANSCEIVER_ACTIVE
    """Takes new flows."""
    DRAINING = abi.TRANSCEIVER_DRAINING
    """Keeps its flows but gets no new ones."""


class BlockedBy(enum.IntFlag):
    """Why a prefix is in ``blocked_sources`` (its value; the program only tests presence)."""

    PRIVATE_SUBNET = 1
    """A subnet of the relay's private interface."""
    RELAY_ADDRESS = 2
    """The relay's own public or private address."""
    OPERATOR = 4
    """``RelayConfig.blocked_source_prefixes``."""


def desired_blocked_sources(relay: RelayConfig, *, public_addr: IPAddress | str,
                            private_addr: IPAddress | str,
                            private_networks: Iterable[IPNetwork | str],
                            relay_addresses: Iterable[IPAddress | str] = ()
                            ) -> dict[IPNetwork, BlockedBy]:
    """What ``blocked_sources`` should hold for ``relay``: prefix -> why.

    Always the private interface's subnets (``private_networks``, from its
    addresses, either family) and the relay's own addresses (the two given,
    and ``relay_addresses``: its IPv6 ones), then the operator's list; a
    prefix named twice carries both reasons. Raises ConfigError for a bad
    operator prefix.
    """
    out: dict[IPNetwork, BlockedBy] = {}

    def add(network: IPNetwork, why: BlockedBy) -> None:
        out[network] = out.get(network, BlockedBy(0)) | why

    for net in private_networks:
        add(ipaddress.ip_network(net, strict=False), BlockedBy.PRIVATE_SUBNET)
    for addr in (public_addr, private_addr, *relay_addresses):
        ip = ipaddress.ip_address(addr)
        add(ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}"), BlockedBy.RELAY_ADDRESS)
    for net in parse_source_prefixes(relay.blocked_source_prefixes):
        add(net, BlockedBy.OPERATOR)
    return out


# --- byte order helpers ------------------------------------------------------

def be32_of(addr: IPv4Address | str) -> int:
    """The u32 whose memory holds ``addr`` in network order (a ``__be32``)."""
    return int.from_bytes(IPv4Address(addr).packed, sys.byteorder)


def addr_of(be32: int) -> IPv4Address:
    return IPv4Address(int(be32).to_bytes(4, sys.byteorder))


def relay_addr_of(raw: Any, family: int) -> IPAddress:
    """A ``struct relay_addr`` (its ctypes value) as the address of ``family``."""
    if family == AF_INET6:
        return IPv6Address(bytes(raw))
    return addr_of(raw.addr[0])


def set_relay_addr(raw: Any, addr: IPAddress | str) -> int:
    """Fill a ``struct relay_addr`` with ``addr`` (IPv4 in addr[0], the rest
    zero); returns its family (AF_INET or AF_INET6)."""
    ip = ipaddress.ip_address(addr)
    packed = ip.packed.ljust(16, b"\0")
    for i in range(4):
        raw.addr[i] = int.from_bytes(packed[4 * i:4 * i + 4], sys.byteorder)
    return AF_INET6 if ip.version == 6 else AF_INET


def family_of(addr: IPAddress) -> int:
    return AF_INET6 if addr.version == 6 else AF_INET


def endpoint(addr: IPAddress | str, port: int) -> str:
    """``addr:port``, with an IPv6 address in brackets (RFC 3986)."""
    text = str(addr)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def be16_of(port: int) -> int:
    """The u16 whose memory holds ``port`` in network order (a ``__be16``)."""
    return socket.htons(port)


def port_of(be16: int) -> int:
    return socket.ntohs(int(be16))


def _mac(raw: Any) -> str:
    return ":".join(f"{b:02x}" for b in bytes(raw))


# --- entries -----------------------------------------------------------------

@dataclass(frozen=True)
class ConfigEntry:
    """The ``config`` map's one entry, in host types."""

    public_addr: IPv4Address
    private_addr: IPv4Address
    public_port: int
    port_min: int
    port_max: int
    public_ifindex: int
    private_ifindex: int
    new_flows_per_sec: int
    max_flows_per_token: int
    clock_offset_ns: int
    flow_idle_ns: int
    nh_generation: int
    public_addr6: IPv6Address | None = None
    """The IPv6 VIP (dual stack), or None: IPv6 clients are not relayed."""
    private_addr6: IPv6Address | None = None
    """The relay's private IPv6 address, or None: no IPv6 transceivers."""


@dataclass(frozen=True)
class TransceiverEntry:
    transceiver_id: int
    addr: IPAddress
    status: TransceiverStatus


@dataclass(frozen=True)
class NextHop:
    """A cached next hop; valid while ``generation`` is the config's nh_generation."""

    ifindex: int
    smac: str
    dmac: str
    generation: int


@dataclass(frozen=True)
class FlowRecord:
    """A client flow (``flows``), public side -> transceiver, as the map holds it.

    ``relay.FlowEntry`` is the display row made from it."""

    client_addr: IPAddress
    client_port: int
    transceiver_addr: IPAddress
    transceiver_port: int
    relay_port: int
    transceiver_id: int
    token_mac: int
    created_ns: int
    last_seen_ns: int
    next_hop: NextHop | None
    relay_addr: IPAddress
    """The relay-side private address the flow sends from (one of ``private_addrs``,
    or the relay's private IPv6 address for an IPv6 transceiver)."""
    rtp: MediaStats | None = None
    """The client's RTP as the relay saw it (None: none yet)."""
    client_rtt: ConsentRtt | None = None
    """The transceiver's consent checks, answered by the client."""


@dataclass(frozen=True)
class ReverseEntry:
    """A relay-side address:port (``reverse``), transceiver -> client."""

    relay_addr: IPAddress
    relay_port: int
    client_addr: IPAddress
    client_port: int
    transceiver_addr: IPAddress
    transceiver_port: int
    transceiver_id: int
    last_seen_ns: int
    next_hop: NextHop | None
    rtp: MediaStats | None = None
    """The transceiver's RTP as the relay saw it (None: none yet)."""
    transceiver_rtt: ConsentRtt | None = None
    """The client's consent checks, answered by the transceiver."""


def _next_hop(nh: Any) -> NextHop | None:
    if not nh.ifindex:
        return None
    return NextHop(nh.ifindex, _mac(nh.smac), _mac(nh.dmac), nh.generation)


def _addr6_or_none(raw: Any) -> IPv6Address | None:
    addr = IPv6Address(bytes(raw))
    return None if addr.is_unspecified else addr


def monotonic_to_realtime_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC now: bpf_ktime_get_ns() + this = unix ns."""
    return time.time_ns() - time.monotonic_ns()


class RelayMaps:
    """Read and write the relay's maps through bcc tables.

    ``tables`` is a ``bcc.BPF`` (or any mapping from map name to bcc table).
    Every write is idempotent: writing the same value twice leaves the same
    state.
    """

    def __init__(self, tables: Any) -> None:
        self._t: dict[str, Any] = check_map_layouts(tables)

    def table(self, name: str) -> Any:
        """The raw bcc table ``name`` (for tests and tools that need it)."""
        return self._t[name]

    # --- config --------------------------------------------------------------

    def write_config(
        self,
        relay: RelayConfig,
        *,
        public_addr: IPv4Address | str,
        private_addr: IPv4Address | str,
        public_ifindex: int,
        private_ifindex: int,
        nh_generation: int | None = None,
        clock_offset_ns: int | None = None,
        public_addr6: IPv6Address | str | None = None,
        private_addr6: IPv6Address | str | None = None,
    ) -> ConfigEntry:
        """Write ``config[0]`` from ``relay`` and the resolved addresses/ifindexes.

        ``public_addr``/``private_addr`` are the resolved addresses (the
        config's may be 0.0.0.0, meaning "the interface's first address").
        ``nh_generation`` defaults to the current one plus one, so that every
        write drops the cached next hops. ``clock_offset_ns`` defaults to
        ``monotonic_to_realtime_offset_ns()``. ``public_addr6`` is the IPv6
        VIP (dual stack; None: IPv6 clients are not relayed) and
        ``private_addr6`` the relay's address towards IPv6 transceivers
        (None: none are reachable).
        """
        pub = IPv4Address(public_addr)
        priv = IPv4Address(private_addr)
        pub6 = None if public_addr6 is None else IPv6Address(public_addr6)
        priv6 = None if private_addr6 is None else IPv6Address(private_addr6)
        for label, addr in (("public", pub), ("private", priv), ("public IPv6", pub6),
                            ("private IPv6", priv6)):
            if addr is not None and addr.is_unspecified:
                raise ValueError(f"{label} address must be resolved, got {addr}")
            if addr is not None and addr.is_multicast:
                raise ValueError(f"{label} address must be unicast, got {addr}")
        if not 1 <= relay.public_port <= 65535:
            raise ValueError(f"public_port {relay.public_port} is outside 1..65535")
        if not 1 <= relay.port_min <= relay.port_max <= 65535:
            raise ValueError(f"port range {relay.port_min}..{relay.port_max} is not valid")
        if relay.port_min <= relay.public_port <= relay.port_max:
            raise ValueError(f"public_port {relay.public_port} lies inside the flow port range")
        for label, value in (("new_flows_per_sec", relay.new_flows_per_sec),
                             ("max_flows_per_token", relay.max_flows_per_token),
                             ("flow_idle_seconds", relay.flow_idle_seconds)):
            if not 0 <= value <= 0xFFFFFFFF:
                raise ValueError(f"{label} {value} is outside 0..4294967295")
        if nh_generation is None:
            current = self.read_config()
            nh_generation = (current.nh_generation + 1) & 0xFFFFFFFF if current else 1
        table = self._t["config"]
        leaf = table.Leaf()
        leaf.public_addr.addr[0] = be32_of(pub)
        leaf.private_addr.addr[0] = be32_of(priv)
        if pub6 is not None:
            set_relay_addr(leaf.public_addr6, pub6)
        if priv6 is not None:
            set_relay_addr(leaf.private_addr6, priv6)
        leaf.public_port = be16_of(relay.public_port)
        leaf.family = AF_INET
        leaf.port_min = relay.port_min
        leaf.port_max = relay.port_max
        leaf.public_ifindex = public_ifindex
        leaf.private_ifindex = private_ifindex
        leaf.new_flows_per_sec = relay.new_flows_per_sec
        leaf.max_flows_per_token = relay.max_flows_per_token
        leaf.clock_offset_ns = (
            monotonic_to_realtime_offset_ns() if clock_offset_ns is None else clock_offset_ns
        )
        leaf.flow_idle_ns = relay.flow_idle_seconds * 1_000_000_000
        leaf.nh_generation = nh_generation
        table[table.Key(0)] = leaf
        entry = self.read_config()
        if entry is None:  # public_port 0 is how read_config tells "never written"
            raise ValueError(f"config[0] reads back as unwritten: public_port "
                             f"{relay.public_port} must be 1..65535")
        return entry

    def read_config(self) -> ConfigEntry | None:
        """``config[0]``, or None when nothing has been written (the relay is inert)."""
        c = self._t["config"][self._t["config"].Key(0)]
        if not c.public_port:
            return None
        return ConfigEntry(
            public_addr=addr_of(c.public_addr.addr[0]),
            private_addr=addr_of(c.private_addr.addr[0]),
            public_port=port_of(c.public_port),
            port_min=c.port_min,
            port_max=c.port_max,
            public_ifindex=c.public_ifindex,
            private_ifindex=c.private_ifindex,
            new_flows_per_sec=c.new_flows_per_sec,
            max_flows_per_token=c.max_flows_per_token,
            clock_offset_ns=c.clock_offset_ns,
            flow_idle_ns=c.flow_idle_ns,
            nh_generation=c.nh_generation,
            public_addr6=_addr6_or_none(c.public_addr6),
            private_addr6=_addr6_or_none(c.private_addr6),
        )

    def clear_config(self) -> None:
        """Zero ``config[0]``: the program passes everything (STAT_PASS_UNCONFIGURED)."""
        table = self._t["config"]
        table[table.Key(0)] = table.Leaf()

    def bump_nh_generation(self) -> int:
        """Invalidate every cached next hop (call on neighbour or route change)."""
        table = self._t["config"]
        leaf = table[table.Key(0)]
        leaf.nh_generation = (leaf.nh_generation + 1) & 0xFFFFFFFF
        table[table.Key(0)] = leaf
        return int(leaf.nh_generation)

    def set_clock_offset(self, offset_ns: int | None = None) -> int | None:
        """Rewrite ``config[0].clock_offset_ns`` only (default: the offset now).

        Token expiry is unix seconds, and the program gets them as
        ``bpf_ktime_get_ns() + clock_offset_ns``; NTP slews CLOCK_REALTIME but
        not CLOCK_MONOTONIC, so the offset is refreshed while the relay runs.
        Returns the offset written, or None when the relay is not configured
        (nothing is written then: a zero config must stay zero).
        """
        table = self._t["config"]
        leaf = table[table.Key(0)]
        if not leaf.public_port:
            return None
        leaf.clock_offset_ns = (
            monotonic_to_realtime_offset_ns() if offset_ns is None else offset_ns
        )
        table[table.Key(0)] = leaf
        return int(leaf.clock_offset_ns)

    # --- private addresses ----------------------------------------------------

    def write_private_addrs(self, addresses: Iterable[IPv4Address | str]) -> list[IPv4Address]:
        """Write ``private_addrs[0]``: the config's private address first, then the
        extra ones new flows are spread over. Returns what the map now holds."""
        addrs = [IPv4Address(a) for a in addresses]
        if not 1 <= len(addrs) <= abi.MAX_PRIVATE_ADDRS:
            raise ValueError(f"{len(addrs)} private addresses: 1..{abi.MAX_PRIVATE_ADDRS} needed")
        if len(set(addrs)) != len(addrs):
            raise ValueError(f"private addresses listed twice: {[str(a) for a in addrs]}")
        table = self._t["private_addrs"]
        leaf = table.Leaf()
        leaf.count = len(addrs)
        for i, addr in enumerate(addrs):
            leaf.addr[i].addr[0] = be32_of(addr)
        table[table.Key(0)] = leaf
        return self.private_addrs()

    def private_addrs(self) -> list[IPv4Address]:
        v = self._t["private_addrs"][self._t["private_addrs"].Key(0)]
        return [addr_of(v.addr[i].addr[0]) for i in range(min(v.count, abi.MAX_PRIVATE_ADDRS))]

    # --- blocked sources ------------------------------------------------------

    def _prefix_key(self, network: IPNetwork) -> Any:
        key = self._t["blocked_sources"].Key()
        key.prefixlen = abi.SOURCE_PREFIX_HDR_BITS + network.prefixlen
        key.family = set_relay_addr(key.addr, network.network_address)
        return key

    def blocked_sources(self) -> dict[IPNetwork, BlockedBy]:
        """``blocked_sources`` as it is: prefix -> why."""
        out: dict[IPNetwork, BlockedBy] = {}
        for k, v in self._t["blocked_sources"].items():
            if k.family not in (AF_INET, AF_INET6):
                continue
            bits = int(k.prefixlen) - abi.SOURCE_PREFIX_HDR_BITS
            addr = relay_addr_of(k.addr, k.family)
            out[ipaddress.ip_network(f"{addr}/{bits}")] = BlockedBy(int(v.value))
        return out

    def write_blocked_sources(self, desired: Mapping[IPNetwork, BlockedBy]
                              ) -> tuple[int, int]:
        """Make ``blocked_sources`` hold exactly ``desired``; returns (written, deleted).

        Writes only the delta: new prefixes and changed reasons first, then
        removals, so that no prefix that stays is unblocked for a moment.
        Raises ValueError when ``desired`` does not fit the map.
        """
        table = self._t["blocked_sources"]
        if len(desired) > table.max_entries:
            raise ValueError(f"{len(desired)} blocked source prefixes do not fit the map "
                             f"({table.max_entries}; MAX_BLOCKED_PREFIXES in bpf/consts.h)")
        current = self.blocked_sources()
        written = deleted = 0
        for network, why in desired.items():
            if current.get(network) != why:
                table[self._prefix_key(network)] = table.Leaf(int(why))
                written += 1
        for network in current.keys() - desired.keys():
            del table[self._prefix_key(network)]
            deleted += 1
        return written, deleted

    # --- transceivers --------------------------------------------------------

    def set_transceiver(
        self,
        transceiver_id: int,
        addr: IPAddress | str,
        status: TransceiverStatus = TransceiverStatus.ACTIVE,
    ) -> None:
        """Add or update a transceiver (ACTIVE takes new flows, DRAINING keeps its own).

        Either family: the relay sends a flow to its transceiver in the
        transceiver's family (an IPv6 one needs ``private_addr6``)."""
        if not 0 <= transceiver_id <= 0xFFFFFFFF:
            raise ValueError(f"transceiver id {transceiver_id} is outside 0..4294967295")
        ip = ipaddress.ip_address(addr)
        if ip.is_unspecified or ip.is_multicast:
            raise ValueError(f"transceiver address {ip} is not a unicast address")
        table = self._t["transceivers"]
        leaf = table.Leaf()
        leaf.family = set_relay_addr(leaf.addr, ip)
        leaf.status = TransceiverStatus(status)
        table[table.Key(transceiver_id)] = leaf

    def delete_transceiver(self, transceiver_id: int) -> bool:
        """Remove a transceiver; its existing flows keep running. False if absent."""
        try:
            del self._t["transceivers"][self._t["transceivers"].Key(transceiver_id)]
        except KeyError:
            return False
        return True

    def transceivers(self) -> dict[int, TransceiverEntry]:
        return {
            int(k.value): TransceiverEntry(int(k.value), relay_addr_of(v.addr, v.family),
                                           TransceiverStatus(v.status))
            for k, v in self._t["transceivers"].items()
        }

    # --- keys ----------------------------------------------------------------

    def set_key(self, key_id: int, key: bytes) -> None:
        """Activate ``key`` (16 bytes, as voxrelay.token uses it) under ``key_id``."""
        if not 0 <= key_id <= MAX_KEY_ID:
            raise ValueError(f"key id {key_id} is outside 0..{MAX_KEY_ID}")
        if len(key) != KEY_BYTES:
            raise ValueError(f"token key must be {KEY_BYTES} bytes, got {len(key)}")
        table = self._t["keys"]
        leaf = table.Leaf()
        leaf.k0 = int.from_bytes(key[:8], "little")
        leaf.k1 = int.from_bytes(key[8:], "little")
        leaf.active = 1
        table[table.Key(key_id)] = leaf

    def retire_key(self, key_id: int) -> None:
        """Deactivate and wipe ``key_id``: tokens under it stop creating flows."""
        if not 0 <= key_id <= MAX_KEY_ID:
            raise ValueError(f"key id {key_id} is outside 0..{MAX_KEY_ID}")
        table = self._t["keys"]
        table[table.Key(key_id)] = table.Leaf()

    def active_keys(self) -> list[int]:
        """Key ids that verify tokens now (never the key material)."""
        return sorted(int(k.value) for k, v in self._t["keys"].items() if v.active)

    # --- stats ---------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Every counter, summed over CPUs, by C name (``STAT_...``), in enum order."""
        table = self._t["stats"]
        return {name: int(table.sum(table.Key(RelayStat[name])).value) for name in verdict_names()}

    def stat(self, stat: RelayStat | str) -> int:
        """One counter, summed over CPUs."""
        table = self._t["stats"]
        index = RelayStat[stat] if isinstance(stat, str) else RelayStat(stat)
        return int(table.sum(table.Key(index)).value)

    def reset_stats(self) -> None:
        table = self._t["stats"]
        zero = table.Leaf()
        for index in range(STAT_MAX):
            table[table.Key(index)] = zero

    # --- flow state (written by XDP) -------------------------------------------

    def flows(self) -> list[FlowRecord]:
        out = []
        for k, v in self._t["flows"].items():
            out.append(FlowRecord(
                client_addr=relay_addr_of(k.addr, k.family),
                client_port=port_of(k.port),
                transceiver_addr=relay_addr_of(v.txr_addr, v.txr_family),
                transceiver_port=port_of(v.txr_port),
                relay_port=port_of(v.relay_port),
                transceiver_id=v.transceiver_id,
                token_mac=v.token_mac,
                created_ns=v.created_ns,
                last_seen_ns=v.last_seen_ns,
                next_hop=_next_hop(v.nh),
                relay_addr=relay_addr_of(v.relay_addr, v.txr_family),
                rtp=MediaStats.from_map(v.rtp),
                client_rtt=ConsentRtt.from_map(v.client_rtt),
            ))
        return sorted(out, key=lambda f: (f.client_addr.version, f.client_addr, f.client_port))

    def flow(self, client_addr: IPAddress | str, client_port: int) -> FlowRecord | None:
        """The flow of one client address:port (either family), or None."""
        for f in self._lookup_flows([(ipaddress.ip_address(client_addr), client_port)]):
            return f
        return None

    def _flow_key(self, addr: IPAddress, port: int) -> Any:
        key = self._t["flows"].Key()
        key.family = set_relay_addr(key.addr, addr)
        key.port = be16_of(port)
        return key

    def _lookup_flows(self, clients: Iterable[tuple[IPAddress, int]]) -> list[FlowRecord]:
        table = self._t["flows"]
        out = []
        for addr, port in clients:
            try:
                v = table[self._flow_key(addr, port)]
            except KeyError:
                continue
            out.append(FlowRecord(addr, port, relay_addr_of(v.txr_addr, v.txr_family),
                                  port_of(v.txr_port),
                                 port_of(v.relay_port), v.transceiver_id, v.token_mac,
                                 v.created_ns, v.last_seen_ns, _next_hop(v.nh),
                                 relay_addr_of(v.relay_addr, v.txr_family),
                                 MediaStats.from_map(v.rtp), ConsentRtt.from_map(v.client_rtt)))
        return out

    def reverse_entries(self) -> list[ReverseEntry]:
        out = []
        for k, v in self._t["reverse"].items():
            out.append(ReverseEntry(
                relay_addr=relay_addr_of(k.addr, v.txr_family),
                relay_port=port_of(k.relay_port),
                client_addr=relay_addr_of(v.client.addr, v.client.family),
                client_port=port_of(v.client.port),
                transceiver_addr=relay_addr_of(v.txr_addr, v.txr_family),
                transceiver_port=port_of(v.txr_port),
                transceiver_id=v.transceiver_id,
                last_seen_ns=v.last_seen_ns,
                next_hop=_next_hop(v.nh),
                rtp=MediaStats.from_map(v.rtp),
                transceiver_rtt=ConsentRtt.from_map(v.transceiver_rtt),
            ))
        return sorted(out, key=lambda r: (r.relay_port, r.relay_addr.version, r.relay_addr))

    def delete_flow(self, client_addr: IPAddress | str, client_port: int) -> bool:
        """End a client's flow and free its relay address:port. False if there was none."""
        flows = self._t["flows"]
        key = self._flow_key(ipaddress.ip_address(client_addr), client_port)
        try:
            v = flows[key]
        except KeyError:
            return False
        reverse = self._t["reverse"]
        rkey = reverse.Key(relay_port=v.relay_port)
        for i in range(4):
            rkey.addr.addr[i] = v.relay_addr.addr[i]
        try:
            r = reverse[rkey]
            if bytes(r.client) == bytes(key):
                del reverse[rkey]
        except KeyError:
            pass
        try:
            del flows[key]
        except KeyError:
            return False
        return True

    def clear_flow_state(self) -> None:
        """Forget every flow, reverse entry, rate window and token count."""
        for name in XDP_WRITTEN_MAPS:
            self._t[name].clear()

    def flow_counts(self) -> Mapping[str, int]:
        """Entries in each XDP-written map (walks them: for status, not per packet)."""
        return {name: sum(1 for _ in self._t[name])
                for name in XDP_WRITTEN_MAPS}
