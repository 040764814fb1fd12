# SPDX-License-Identifier: Apache-2.0
"""Configuration as documented dataclasses, one docstring per field.

A single TOML file (default ``/etc/voxrelay/voxrelay.toml``) has one table per
room: ``[relay]``, ``[orchestrator]``, ``[transceiver]``, ``[model]``. Every
field has a default, so an empty file is a valid one-host configuration.
``load_config`` rejects unknown keys and bad values with a message that names
the table and key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("/etc/voxrelay/voxrelay.toml")


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


@dataclass
class OrchestratorConfig:
    directory: str = "embedded"
    """"embedded" (one host) or a redis:// URL (many hosts)."""
    listen: str = "127.0.0.1:7480"
    """Embedded directory's HTTP API (announce/heartbeat), on the private side."""
    metrics_listen: str = "127.0.0.1:9478"
    """Prometheus /metrics."""
    heartbeat_grace_seconds: float = 10.0
    """A transceiver with no heartbeat for this long is removed from the maps."""


@dataclass
class TransceiverConfig:
    id: int = 1
    """Transceiver id, carried in every routing token it mints."""
    listen: str = "0.0.0.0:8080"
    """HTTP signaling (POST /v1/calls)."""
    private_address: str = "127.0.0.1"
    """Address the relay forwards calls to; never advertised to clients."""
    relays: list[str] = field(default_factory=lambda: ["127.0.0.1:3478"])
    """Relay public addr:port candidates in the SDP answer, nearest first.
    Each entry may add ``region=NAME`` and ``rtt_ms=FLOAT``, e.g.
    "203.0.113.7:3478 region=eu-west rtt_ms=4": same-region relays come first,
    then lower RTT, then this list's order (see transceiver/ice.py)."""
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
    model_streams: int = 16
    """Streams the voice model serves at once (its --max-streams): a call takes
    one when ICE connects; a POST while all are taken answers 503 with Retry-After."""
    max_pending_per_client: int = 4
    """Calls one client credential may have that have not connected yet; more
    answer 429 with Retry-After (no per-client limit when auth is off)."""
    api_token: str = ""
    """Bearer token clients must present; empty disables the check (lab only)."""


@dataclass
class ModelConfig:
    listen: str = "127.0.0.1:50051"
    """gRPC listen address."""
    reply: str = "echo"
    """"echo" repeats what it heard; an http(s) URL sends the transcript to an
    OpenAI-compatible chat endpoint."""


@dataclass
class Config:
    relay: RelayConfig = field(default_factory=RelayConfig)
    orchestrator: OrchestratorConfig = field(default_factory=OrchestratorConfig)
    transceiver: TransceiverConfig = field(default_factory=TransceiverConfig)
    model: ModelConfig = field(default_factory=ModelConfig)


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
    if not 1 <= r.public_port <= 65535:
        raise ConfigError(f"[relay] public_port {r.public_port} is outside 1..65535")
    if not 1024 <= r.port_min <= r.port_max <= 65535:
        raise ConfigError(
            f"[relay] port range {r.port_min}..{r.port_max} "
            "must satisfy 1024 <= min <= max <= 65535"
        )
    if r.port_min <= r.public_port <= r.port_max:
        raise ConfigError(f"[relay] public_port {r.public_port} lies inside the flow port range")
    if r.xdp_mode not in ("native", "generic"):
        raise ConfigError(f"[relay] xdp_mode {r.xdp_mode!r} must be 'native' or 'generic'")
    t = config.transceiver
    if not 1024 <= t.port_min <= t.port_max <= 65535:
        raise ConfigError(
            f"[transceiver] port range {t.port_min}..{t.port_max} must satisfy "
            "1024 <= min <= max <= 65535"
        )
    for key in ("max_calls", "model_streams", "max_pending_per_client"):
        if getattr(t, key) < 1:
            raise ConfigError(f"[transceiver] {key} must be >= 1, got {getattr(t, key)}")
    if not 1 <= config.transceiver.id <= 0xFFFFFFFF:
        raise ConfigError(f"[transceiver] id {config.transceiver.id} is outside 1..4294967295")
    return config


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
              "transceiver": TransceiverConfig, "model": ModelConfig}
    for key in data:
        if key not in tables:
            raise ConfigError(f"unknown table [{key}]; known: {', '.join(tables)}")
    parts = {name: _build(cls, name, data.get(name, {})) for name, cls in tables.items()}
    return validate(Config(**parts))
