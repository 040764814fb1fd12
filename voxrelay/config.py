# SPDX-License-Identifier: Apache-2.0
"""Configuration as documented dataclasses, one docstring per field.

A single TOML file (default ``/etc/voxrelay/voxrelay.toml``) has one table per
room: ``[relay]``, ``[orchestrator]``, ``[transceiver]``, ``[model]``, ``[tcpfront]``. Every
field has a default, so an empty file is a valid one-host configuration.
``load_config`` rejects unknown keys and bad values with a message that names
the table and key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("/etc/voxrelay/voxrelay.toml")

DEFAULT_BLOCKED_SOURCE_PREFIXES: tuple[str, ...] = (
    "0.0.0.0/8",       # "this network" (RFC 1122): never a packet's source past its host
    "127.0.0.0/8",     # loopback: never on a wire
    "169.254.0.0/16",  # link-local (RFC 3927): never routed to a relay
    "224.0.0.0/4",     # multicast: never a source
    "240.0.0.0/4",     # reserved (RFC 1112) and 255.255.255.255 broadcast
    "::/128",          # IPv6 unspecified: never a source on a wire
    "::1/128",         # IPv6 loopback
    "::ffff:0:0/96",   # IPv4-mapped: an IPv4 host's address inside IPv6 APIs, never on a wire
    "fe80::/10",       # IPv6 link-local: never routed to a relay
    "ff00::/8",        # IPv6 multicast: never a source
)
"""``RelayConfig.blocked_source_prefixes``' default: sources no client can have."""


MAX_EXTRA_PRIVATE_ADDRESSES = 31
"""bpf/consts.h MAX_PRIVATE_ADDRS (32), less the relay's private_address."""

MODEL_AUDIO_FRAMES_MAX = 10
"""``[transceiver] model_audio_frames`` at most: 200 ms per message to the model."""


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names it."""


@dataclass
class RelayConfig:
    name: str = "default"
    """Relay name; maps are pinned under /sys/fs/bpf/voxrelay/<name>/."""
    public_interface: str = "eth0"
    """Interface that faces clients; the XDP program is attached here."""
    private_interface: str = "eth1"
    """Interface that faces transceivers; the XDP program is attached here too."""
    public_address: str = "0.0.0.0"
    """The relay's public IPv4 (the VIP clients send to).
    0.0.0.0: first address of public_interface."""
    private_address: str = "0.0.0.0"
    """The relay's private IPv4. 0.0.0.0: first address of private_interface."""
    extra_private_addresses: list[str] = field(default_factory=list)
    """More private IPv4s of the relay (each assigned to private_interface, so
    that transceivers reach it), up to MAX_EXTRA_PRIVATE_ADDRESSES. New flows
    are spread over private_address and these: one address holds at most one
    port range of live flows (port_max - port_min + 1), so a relay for a
    million live flows needs 25 with the default range (16 with the widest)."""
    public_address6: str = ""
    """The relay's public IPv6 VIP (dual stack), beside public_address: IPv6
    clients send to [public_address6]:public_port and are routed by the same
    token to IPv4 or IPv6 transceivers (the relay translates the IP header
    where the families differ). "" (the default): no IPv6 VIP, IPv6 passes
    untouched. "::": the first global IPv6 address of public_interface.
    List it in the transceivers' ``relays`` too ("[ADDR]:PORT")."""
    private_address6: str = ""
    """The relay's private IPv6 address, needed for IPv6 transceivers
    (a transceiver registered with an IPv6 address). "" (the default): none;
    a token for an IPv6 transceiver is dropped (``drop_ipv6``). "::": the
    first global IPv6 address of private_interface."""
    public_port: int = 3478
    """The only public UDP port."""
    port_min: int = 20000
    """Lowest relay-side port allocated for flows (reserved from the kernel)."""
    port_max: int = 59999
    """Highest relay-side port allocated for flows."""
    xdp_mode: str = "native"
    """"native" (driver) or "generic" (skb) XDP."""
    new_flows_per_sec: int = 50
    """Per client address: new flows per second before STUN floods are dropped. 0 = unlimited."""
    max_flows_per_token: int = 8
    """Flows one token may create (NAT rebinding needs a few; a copied token
    must not drain ports)."""
    flow_idle_seconds: int = 120
    """A flow with no packet for this long is treated as gone."""
    public_tcp_ports: list[int] = field(default_factory=list)
    """TCP ports this host serves on public_interface (e.g. 443 for a TCP
    front). ``relay load`` drops every other packet addressed to the host
    itself that arrives there (nftables input chain), so that no control-plane
    port (the directory, metrics, ssh) can be reached from the public side."""
    blocked_source_prefixes: list[str] = field(
        default_factory=lambda: list(DEFAULT_BLOCKED_SOURCE_PREFIXES))
    """IPv4 or IPv6 prefixes (``"a.b.c.d/n"``, ``"2001:db8::/32"``) no client
    source may lie in: a Binding
    Request from one opens no flow and is counted ``drop_blocked_source``.
    The relay always adds the private interface's subnet(s) and its own
    public address, whatever this says, so that a forged source cannot make
    the relay send a transceiver's answer into the private network. The
    default lists sources that cannot belong to a client on any network:
    0.0.0.0/8, loopback 127.0.0.0/8, link-local 169.254.0.0/16, multicast
    224.0.0.0/4 and the reserved 240.0.0.0/4; for IPv6 ::/128, ::1/128,
    IPv4-mapped ::ffff:0:0/96, link-local fe80::/10 and multicast ff00::/8.
    RFC 1918 (10/8, 172.16/12, 192.168/16) and CGNAT (100.64/10) ranges are
    not in it, since clients may reach a relay from them (a relay inside a
    private network, a carrier's NAT); add them where no client can. Written at ``relay load`` and
    ``--replace``; checked when a flow is created, so a prefix added by a
    replace leaves flows already open to idle out."""


@dataclass
class OrchestratorConfig:
    directory: str = "embedded"
    """"embedded" (one host) or a redis:// URL (many hosts)."""
    listen: str = "127.0.0.1:7480"
    """Embedded directory's HTTP API (announce/heartbeat). Loopback by
    default: the embedded directory is for one host, where the transceiver
    runs beside the relay. For transceivers on other hosts set the relay's
    private address, e.g. "10.0.0.1:7480" (every request needs the directory
    secret, and ``relay load`` drops the port on the public interface); never
    0.0.0.0 on a host whose public interface has no such filter."""
    directory_secret_file: str = "/var/lib/voxrelay/directory.secret"  # noqa: S105 - a path
    """The secret every directory request must carry (Bearer). With the
    embedded directory the orchestrator creates it (mode 0600) if it is
    missing; copy it to every transceiver host. With Redis it is the Redis
    password unless the URL has one. Env VOXRELAY_DIRECTORY_SECRET overrides."""
    state_dir: str = "/var/lib/voxrelay"
    """Where the embedded directory keeps what must outlive a restart: the
    operator's drain and remove decisions (intents.json)."""
    metrics_listen: str = "127.0.0.1:9478"
    """Prometheus /metrics."""
    heartbeat_grace_seconds: float = 10.0
    """A transceiver with no heartbeat for this long is removed from the maps."""


@dataclass
class TransceiverConfig:
    id: int = 1
    """Transceiver id, carried in every routing token it mints (with ``workers``,
    the first worker's: worker i is id + i)."""
    listen: str = "0.0.0.0:8080"
    """HTTP signaling (POST /v1/calls)."""
    private_address: str = "127.0.0.1"
    """Address the relay forwards calls to; never advertised to clients."""
    relays: list[str] = field(default_factory=lambda: ["127.0.0.1:3478"])
    """Relay public addr:port candidates in the SDP answer, nearest first.
    Each entry may add ``region=NAME`` and ``rtt_ms=FLOAT``, e.g.
    "203.0.113.7:3478 region=eu-west rtt_ms=4": same-region relays come first,
    then lower RTT, then this list's order (see transceiver/ice.py); and
    ``tcp=443`` when that relay runs the ICE-TCP front ([tcpfront]): the answer
    then adds a passive TCP candidate for it, below every UDP one."""
    region: str = ""
    """This transceiver's region, matched against the relays' ``region=``."""
    port_min: int = 40000
    """Lowest UDP port for calls on private_address (one port per call, in its token)."""
    port_max: int = 40999
    """Highest UDP port for calls."""
    drain_grace_seconds: float = 30.0
    """On shutdown: how long existing calls may continue before they are closed."""
    probe_port: int = 3479
    """UDP port on private_address answering ``voxrelay probe`` STUN checks (0: none)."""
    directory: str = "http://127.0.0.1:7480"
    """Embedded directory URL or redis:// URL."""
    model: str = "127.0.0.1:50051"
    """gRPC address of the voice model."""
    max_calls: int = 50
    """Above this, POST /v1/calls answers 503 with Retry-After."""
    auth: bool = True
    """Require a credential on signaling: an API key or an ephemeral client
    secret minted with one. false is for a closed lab only."""
    api_key_file: str = "/var/lib/voxrelay/api-key"
    """The signaling API keys, one per line, the first in use (created with a
    fresh key at first start if missing). An application backend presents
    one to POST /v1/realtime/client_secrets; browsers never see it.
    Env VOXRELAY_API_KEY overrides."""
    model_streams: int = 16
    """Streams the voice model serves at once (its --max-streams): a call takes
    one when ICE connects; a POST while all are taken answers 503 with Retry-After."""
    model_audio_frames: int = 2
    """The caller's 20 ms audio frames per gRPC message to the model (1 to 10).
    Each message costs the transceiver about as much CPU as decoding a frame,
    so 2 halves that cost per call, for at most 20 ms more before the model
    hears the frame that ends a turn; 1 sends every frame as it arrives."""
    max_pending_per_client: int = 4
    """Calls one ephemeral client secret (one browser session) may have that
    have not connected yet; more answer 429 with Retry-After. API keys (your
    backend) and auth off have no per-client limit, only max_calls."""
    api_token: str = ""
    """An API key given inline instead of api_key_file (prefer the file)."""
    client_secret_ttl_seconds: float = 600.0
    """Default lifetime of an ephemeral client secret."""
    client_secret_max_ttl_seconds: float = 7200.0
    """Longest lifetime a backend may ask for."""
    cors_origins: list[str] = field(default_factory=list)
    """Web origins (e.g. "https://app.example.com") whose pages may call
    signaling; "*" allows any. Same-origin pages need no entry."""
    directory_secret_file: str = "/var/lib/voxrelay/directory.secret"  # noqa: S105 - a path
    """The directory secret (see [orchestrator]); env VOXRELAY_DIRECTORY_SECRET overrides."""
    workers: int = 0
    """Worker processes (each a transceiver of its own) behind one signaling
    front on ``listen``; 0: one per core this host gives us, 1: no front, the
    one process serves. Worker i has id ``id + i`` (leave that many ids per
    host), the i-th slice of port_min..port_max, probe port ``probe_port + i``,
    and its share of max_calls and model_streams (transceiver/workers.py)."""
    worker_restart_seconds: float = 1.0
    """A worker that died starts again after this long (doubled per crash within
    a minute of its start, up to 30 s); its record leaves the directory at once."""


@dataclass
class ModelConfig:
    listen: str = "127.0.0.1:50051"
    """gRPC listen address."""
    reply: str = "echo"
    """"echo" repeats what it heard; an http(s) URL sends the transcript to an
    OpenAI-compatible chat endpoint."""


@dataclass
class TcpFrontConfig:
    """``voxrelay tcpfront run``: ICE-TCP (RFC 6544) on the relay host, carried to
    the transceivers as UDP (orchestrator/tcpfront.py)."""

    port: int = 443
    """TCP port on [relay] public_address; list it in [relay] public_tcp_ports."""
    udp_port_min: int = 61000
    """Lowest relay-side UDP port (on [relay] private_address) for TCP connections.
    Must lie outside [relay] port_min..port_max: the XDP program owns those and
    passes everything else up to the front's sockets."""
    udp_port_max: int = 61999
    """Highest such port; the range bounds the connections open at once."""
    max_connections: int = 1000
    """TCP connections open at once (all sources, per worker)."""
    max_connections_per_source: int = 16
    """TCP connections open at once from one client address (per worker)."""
    max_connections_per_token: int = 4
    """Connections open at once with one routing token (a copied token must not drain ports)."""
    first_frame_seconds: float = 5.0
    """A connection with no complete first frame after this long is closed (slowloris)."""
    idle_seconds: float = 30.0
    """A connection with no frame either way for this long is closed
    (ICE consent checks come every 5 s)."""
    max_frame_bytes: int = 4096
    """Largest frame accepted (RFC 4571 allows 65535; WebRTC packets fit an MTU)."""
    workers: int = 0
    """Processes serving the port together (SO_REUSEPORT, one event loop each);
    0 = one per CPU the front may run on. A client address always lands on the
    same worker (a reuseport BPF program hashes the source address), so the
    per-source limit holds across workers; max_connections and
    max_connections_per_token are per worker, and the UDP range is split
    between them."""
    metrics_listen: str = ""
    """The front's own Prometheus /metrics, host:port ("" for none). The
    orchestrator's /metrics on the same host already carries these
    ``voxrelay_tcpfront_*`` families (it reads stats_file): scrape one, not both."""
    stats_file: str = ""
    """Counters file read by ``voxrelay tcpfront stats``;
    "" = /run/voxrelay/tcpfront-<relay name>.stats."""

    def worker_count(self) -> int:
        """``workers``, with 0 resolved to the CPUs this process may run on (at most 64)."""
        if self.workers:
            return self.workers
        return max(1, min(64, len(os.sched_getaffinity(0))))


@dataclass
class Config:
    relay: RelayConfig = field(default_factory=RelayConfig)
    orchestrator: OrchestratorConfig = field(default_factory=OrchestratorConfig)
    transceiver: TransceiverConfig = field(default_factory=TransceiverConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tcpfront: TcpFrontConfig = field(default_factory=TcpFrontConfig)


def _build(cls: type, table: str, values: dict[str, Any]) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"[{table}] unknown key {key!r}; known: {', '.join(sorted(known))}")
    obj = cls(**values)
    for name in known:
        default = getattr(cls(), name)
        value = getattr(obj, name)
        if type(default) is not type(value) and not (
            isinstance(default, float) and isinstance(value, int)
        ):
            raise ConfigError(
                f"[{table}] {name} must be {type(default).__name__}, got {value!r}"
            )
    return obj


def validate(config: Config) -> Config:
    r = config.relay
    for key in ("public_address", "private_address"):
        try:
            ipaddress.IPv4Address(getattr(r, key))
        except ValueError:
            raise ConfigError(f"[relay] {key} {getattr(r, key)!r} is not an IPv4 address") from None
    parse_extra_private_addresses(r)
    for key in ("public_address6", "private_address6"):
        value = getattr(r, key)
        if value == "":
            continue
        try:
            addr6 = ipaddress.IPv6Address(value)
        except ValueError:
            raise ConfigError(f"[relay] {key} {value!r} is not an IPv6 address "
                              "(\"\" for none, \"::\" for the interface's first)") from None
        if addr6.is_multicast or addr6.is_loopback or addr6.ipv4_mapped is not None:
            raise ConfigError(f"[relay] {key} {value!r} is not a unicast IPv6 address "
                              "a client or transceiver can reach")
    if not 1 <= r.public_port <= 65535:
        raise ConfigError(f"[relay] public_port {r.public_port} is outside 1..65535")
    if not 1024 <= r.port_min <= r.port_max <= 65535:
        raise ConfigError(
            f"[relay] port range {r.port_min}..{r.port_max} "
            "must satisfy 1024 <= min <= max <= 65535"
        )
    if r.port_min <= r.public_port <= r.port_max:
        raise ConfigError(f"[relay] public_port {r.public_port} lies inside the flow port range")
    for port in r.public_tcp_ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"[relay] public_tcp_ports: {port!r} is not a port in 1..65535")
    if r.xdp_mode not in ("native", "generic"):
        raise ConfigError(f"[relay] xdp_mode {r.xdp_mode!r} must be 'native' or 'generic'")
    parse_source_prefixes(r.blocked_source_prefixes)
    _validate_tcpfront(config.tcpfront, r)
    t = config.transceiver
    if not 1024 <= t.port_min <= t.port_max <= 65535:
        raise ConfigError(
            f"[transceiver] port range {t.port_min}..{t.port_max} must satisfy "
            "1024 <= min <= max <= 65535"
        )
    for origin in t.cors_origins:
        if not isinstance(origin, str) or not (
            origin == "*" or origin.startswith(("http://", "https://"))
        ) or origin.endswith("/"):
            raise ConfigError(
                f"[transceiver] cors_origins: {origin!r} must be '*' or scheme://host[:port] "
                "with no path")
    if not 0 < t.client_secret_ttl_seconds <= t.client_secret_max_ttl_seconds:
        raise ConfigError(
            "[transceiver] client_secret_ttl_seconds must be > 0 and "
            "<= client_secret_max_ttl_seconds")
    if not 1 <= t.model_audio_frames <= MODEL_AUDIO_FRAMES_MAX:
        raise ConfigError(f"[transceiver] model_audio_frames must be 1 to "
                          f"{MODEL_AUDIO_FRAMES_MAX} (20 ms frames per message to the model), "
                          f"got {t.model_audio_frames}")
    for key in ("max_calls", "model_streams", "max_pending_per_client"):
        if getattr(t, key) < 1:
            raise ConfigError(f"[transceiver] {key} must be >= 1, got {getattr(t, key)}")
    if not 1 <= config.transceiver.id <= 0xFFFFFFFF:
        raise ConfigError(f"[transceiver] id {config.transceiver.id} is outside 1..4294967295")
    if t.workers < 0:
        raise ConfigError(f"[transceiver] workers must be >= 0 (0: one per core), got {t.workers}")
    if t.worker_restart_seconds <= 0:
        raise ConfigError("[transceiver] worker_restart_seconds must be > 0, "
                          f"got {t.worker_restart_seconds}")
    return config


def parse_extra_private_addresses(relay: RelayConfig) -> list[ipaddress.IPv4Address]:
    """``[relay] extra_private_addresses`` as addresses; ConfigError names a bad entry."""
    if len(relay.extra_private_addresses) > MAX_EXTRA_PRIVATE_ADDRESSES:
        raise ConfigError(
            f"[relay] extra_private_addresses: {len(relay.extra_private_addresses)} given, "
            f"at most {MAX_EXTRA_PRIVATE_ADDRESSES}")
    out: list[ipaddress.IPv4Address] = []
    for entry in relay.extra_private_addresses:
        try:
            addr = ipaddress.IPv4Address(entry)
        except (ValueError, TypeError):
            raise ConfigError(
                f"[relay] extra_private_addresses: {entry!r} is not an IPv4 address") from None
        if addr.is_unspecified or addr.is_multicast or str(addr) == relay.private_address:
            raise ConfigError(
                f"[relay] extra_private_addresses: {entry!r} cannot be one (unspecified, "
                "multicast, or private_address itself)")
        if addr in out:
            raise ConfigError(f"[relay] extra_private_addresses: {entry!r} is listed twice")
        out.append(addr)
    return out


def parse_source_prefixes(prefixes: Iterable[object]
                          ) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``[relay] blocked_source_prefixes`` as networks; ConfigError names a bad entry.

    Host bits must be zero (``10.0.0.1/8`` is refused, naming ``10.0.0.0/8``),
    so that what the operator wrote is what is blocked. Either family (the
    relay is dual stack).
    """
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in prefixes:
        where = f"[relay] blocked_source_prefixes entry {entry!r}"
        if not isinstance(entry, str):
            raise ConfigError(f"{where} must be a string like \"10.0.0.0/8\"")
        try:
            network = ipaddress.ip_network(entry)
        except ValueError:
            try:
                loose = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(f"{where} is not an IP prefix like \"10.0.0.0/8\" "
                                  "or \"2001:db8::/32\"") from None
            raise ConfigError(f"{where} has host bits set; did you mean {loose}?") from None
        out.append(network)
    return out
MAX_TCP_FRAME = 16384
"""The largest ``[tcpfront] max_frame_bytes`` allowed: well under RFC 4571's 65535."""


def _validate_tcpfront(f: TcpFrontConfig, r: RelayConfig) -> None:
    if not 1 <= f.port <= 65535:
        raise ConfigError(f"[tcpfront] port {f.port} is outside 1..65535")
    if not 1024 <= f.udp_port_min <= f.udp_port_max <= 65535:
        raise ConfigError(
            f"[tcpfront] UDP port range {f.udp_port_min}..{f.udp_port_max} "
            "must satisfy 1024 <= min <= max <= 65535")
    if f.udp_port_min <= r.port_max and r.port_min <= f.udp_port_max:
        raise ConfigError(
            f"[tcpfront] UDP port range {f.udp_port_min}..{f.udp_port_max} overlaps "
            f"[relay] port_min..port_max {r.port_min}..{r.port_max} (the XDP flows' ports)")
    if f.udp_port_min <= r.public_port <= f.udp_port_max:
        raise ConfigError(
            f"[tcpfront] UDP port range {f.udp_port_min}..{f.udp_port_max} contains "
            f"[relay] public_port {r.public_port}")
    for key in ("max_connections", "max_connections_per_source", "max_connections_per_token"):
        if getattr(f, key) < 1:
            raise ConfigError(f"[tcpfront] {key} must be at least 1, got {getattr(f, key)}")
    if f.workers < 0:
        raise ConfigError(f"[tcpfront] workers must be 0 (one per CPU) or more, got {f.workers}")
    if f.workers > 64:
        raise ConfigError(f"[tcpfront] workers {f.workers} is over 64")
    if f.udp_port_max - f.udp_port_min + 1 < f.worker_count():
        raise ConfigError(
            f"[tcpfront] UDP port range has fewer ports than workers ({f.worker_count()})")
    if f.max_connections_per_source > f.max_connections:
        raise ConfigError("[tcpfront] max_connections_per_source must not exceed max_connections")
    if not 20 <= f.max_frame_bytes <= MAX_TCP_FRAME:
        raise ConfigError(
            f"[tcpfront] max_frame_bytes {f.max_frame_bytes} is outside 20..{MAX_TCP_FRAME}")
    for key in ("first_frame_seconds", "idle_seconds"):
        if not getattr(f, key) > 0:
            raise ConfigError(f"[tcpfront] {key} must be > 0, got {getattr(f, key)}")


def load_config(path: Path | None = None) -> Config:
    """Read ``path`` (or the default path if it exists) into a validated ``Config``."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return validate(Config())
        path = DEFAULT_CONFIG_PATH
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    tables = {"relay": RelayConfig, "orchestrator": OrchestratorConfig,
              "transceiver": TransceiverConfig, "model": ModelConfig,
              "tcpfront": TcpFrontConfig}
    for key in data:
        if key not in tables:
            raise ConfigError(f"unknown table [{key}]; known: {', '.join(tables)}")
    parts = {name: _build(cls, name, data.get(name, {})) for name, cls in tables.items()}
    return validate(Config(**parts))
