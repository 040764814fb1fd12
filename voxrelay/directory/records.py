# SPDX-License-Identifier: Apache-2.0
"""Directory records: what the directory holds, validated before it is stored.

Every record that reaches the directory (and so, later, a BPF map) passes
through the ``parse_*`` / ``validate_*`` functions here. They are pure and
raise ``ValueError`` with exact messages that tests assert, so that a bad
announce is refused at the door with a reason instead of being written into
the kernel's ``transceivers`` or ``keys`` map.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from voxrelay.token import KEY_BYTES, MAX_KEY_ID

STATUSES = ("active", "draining", "removed")
"""A record's status as the directory hands it out; "removed" only ever comes
from an operator's intent (``base.effective``), and such a record never
reaches a map."""
SELF_STATUSES = ("active", "draining")
"""What a transceiver may say of itself (``Directory.set_status``)."""
MAX_TRANSCEIVER_ID = 0xFFFFFFFF
MAX_ACTIVE_KEYS = 2  # the key in use plus the previous one, for rotation
DEFAULT_PROBE_PORT = 3479
"""The transceiver's STUN probe responder port when its config names none."""
_SESSION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,256}")  # safe in a URL path and a Redis key


def validate_transceiver_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"transceiver id must be an integer, got {value!r}")
    if not 1 <= value <= MAX_TRANSCEIVER_ID:
        raise ValueError(f"transceiver id {value} is outside 1..{MAX_TRANSCEIVER_ID}")
    return value


def validate_address(value: Any) -> str:
    """A transceiver's private address: one unicast IPv4 or IPv6 address."""
    if not isinstance(value, str):
        raise ValueError(f"transceiver address must be a string, got {value!r}")
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"transceiver address {value!r} is not an IP address") from None
    if addr.is_unspecified or addr.is_multicast or (
        isinstance(addr, ipaddress.IPv4Address) and addr == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise ValueError(f"transceiver address {value!r} is not a unicast address")
    return str(addr)


def validate_port(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if value == 0:
        raise ValueError(f"{what} must not be 0")
    if not 1 <= value <= 65535:
        raise ValueError(f"{what} {value} is outside 1..65535")
    return value


def validate_status(value: Any) -> str:
    if value not in STATUSES:
        raise ValueError(f"transceiver status {value!r} is not one of: {', '.join(STATUSES)}")
    return str(value)


def validate_self_status(value: Any) -> str:
    if value not in SELF_STATUSES:
        raise ValueError(
            f"a transceiver's own status {value!r} is not one of: {', '.join(SELF_STATUSES)}")
    return str(value)


def validate_load(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"transceiver load must be a non-negative integer, got {value!r}")
    return value


def validate_key(value: Any) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise ValueError(f"token key must be bytes, got {type(value).__name__}")
    if len(value) != KEY_BYTES:
        raise ValueError(f"token key must be {KEY_BYTES} bytes, got {len(value)}")
    return bytes(value)


def validate_key_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_KEY_ID:
        raise ValueError(f"token key id must be an integer in 0..{MAX_KEY_ID}, got {value!r}")
    return value


def validate_session_id(value: Any) -> str:
    if not isinstance(value, str) or not _SESSION_ID.fullmatch(value):
        raise ValueError(
            f"session id {value!r} must be 1..256 characters of A-Z a-z 0-9 _ . : -"
        )
    return value


def validate_session_ttl(value: float) -> float:
    if value <= 0:
        raise ValueError(f"session ttl must be positive, got {value}")
    return value


@dataclass(frozen=True)
class TransceiverRecord:
    """One transceiver as the directory knows it.

    ``address`` is where the relay forwards this transceiver's flows (the port
    comes from each call's token). ``probe_port`` is the transceiver's STUN
    responder, used by ``voxrelay probe`` (see orchestrator/probe.py).
    """

    id: int
    address: str
    probe_port: int
    status: str = "active"
    load: int = 0
    """Calls in progress, as the transceiver last reported."""
    last_heartbeat: float = 0.0
    """Unix seconds of the last announce or heartbeat, stamped by the directory."""
    announced_at: float = 0.0
    """Unix seconds of the announce that (re)created it: the start of the sync-lag clock."""

    def __post_init__(self) -> None:
        validate_transceiver_id(self.id)
        # Normalize the address ("010.0.0.1" is refused; "::FFFF" becomes "::ffff").
        object.__setattr__(self, "address", validate_address(self.address))
        validate_port(self.probe_port, "transceiver probe_port")
        validate_status(self.status)
        validate_load(self.load)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> TransceiverRecord:
        return replace(self, **changes)


def parse_transceiver(data: Any) -> TransceiverRecord:
    """Build a record from untrusted JSON (an announce body, a Redis value)."""
    if not isinstance(data, dict):
        raise ValueError(f"transceiver record must be a JSON object, got {type(data).__name__}")
    known = {"id", "address", "probe_port", "status", "load", "last_heartbeat", "announced_at"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"transceiver record has unknown fields: {', '.join(unknown)}")
    for required in ("id", "address", "probe_port"):
        if required not in data:
            raise ValueError(f"transceiver record is missing {required!r}")
    times = {}
    for name in ("last_heartbeat", "announced_at"):
        value = data.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"transceiver {name} must be a non-negative number, got {value!r}")
        times[name] = float(value)
    return TransceiverRecord(
        id=data["id"],
        address=data["address"],
        probe_port=data["probe_port"],
        status=data.get("status", "active"),
        load=data.get("load", 0),
        **times,
    )


@dataclass(frozen=True)
class SessionRecord:
    """A call on a transceiver, as the directory keeps it (for ``ttl`` seconds,
    refreshed while the call lives): which transceiver and which UDP port (the
    one in the call's token) hold it, for whatever outlives the transceiver's
    memory."""

    call_id: str
    transceiver_id: int
    port: int

    def __post_init__(self) -> None:
        validate_session_id(self.call_id)
        validate_transceiver_id(self.transceiver_id)
        validate_port(self.port, "session port")

    def to_json(self) -> dict[str, Any]:
        """The session's data (the call id is its key)."""
        return {"transceiver_id": self.transceiver_id, "port": self.port}


def parse_session(call_id: str, data: Any) -> SessionRecord:
    """A session record from the data stored under ``call_id``."""
    if not isinstance(data, dict):
        raise ValueError(f"session record must be a JSON object, got {type(data).__name__}")
    for required in ("transceiver_id", "port"):
        if required not in data:
            raise ValueError(f"session record is missing {required!r}")
    return SessionRecord(call_id, data["transceiver_id"], data["port"])


@dataclass(frozen=True)
class Keyring:
    """The routing-token keys: id -> 16-byte key, which ids the relay accepts,
    and which one transceivers mint with.

    At most two ids are active: ``current`` and the one before it, so that
    tokens minted just before a rotation keep working until the next one.
    """

    keys: dict[int, bytes] = field(default_factory=dict)
    active: tuple[int, ...] = ()
    current: int | None = None

    def __post_init__(self) -> None:
        for key_id, key in self.keys.items():
            validate_key_id(key_id)
            validate_key(key)
        if len(self.active) > MAX_ACTIVE_KEYS:
            raise ValueError(
                f"at most {MAX_ACTIVE_KEYS} token keys may be active, got {len(self.active)}"
            )
        for key_id in self.active:
            if key_id not in self.keys:
                raise ValueError(f"active token key id {key_id} has no key")
        if self.current is not None and self.current not in self.active:
            raise ValueError(f"current token key id {self.current} is not active")
        if self.active and self.current is None:
            raise ValueError("a keyring with active keys needs a current key id")

    def active_keys(self) -> dict[int, bytes]:
        return {key_id: self.keys[key_id] for key_id in self.active}

    def rotated(self, new_key: bytes) -> Keyring:
        """The next keyring: a new current key, the old current still active,
        anything older retired (and forgotten)."""
        validate_key(new_key)
        taken = set(self.active)
        start = 0 if self.current is None else (self.current + 1) % (MAX_KEY_ID + 1)
        new_id = next(
            (start + i) % (MAX_KEY_ID + 1)
            for i in range(MAX_KEY_ID + 1)
            if (start + i) % (MAX_KEY_ID + 1) not in taken
        )
        active = (new_id,) if self.current is None else (self.current, new_id)
        keys = {key_id: self.keys[key_id] for key_id in active if key_id != new_id}
        keys[new_id] = new_key
        return Keyring(keys=keys, active=active, current=new_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "keys": {str(k): base64.b64encode(v).decode("ascii") for k, v in self.keys.items()},
            "active": list(self.active),
            "current": self.current,
        }


def parse_keyring(data: Any) -> Keyring:
    if not isinstance(data, dict):
        raise ValueError(f"keyring must be a JSON object, got {type(data).__name__}")
    raw_keys = data.get("keys", {})
    if not isinstance(raw_keys, dict):
        raise ValueError("keyring 'keys' must be an object of key id -> base64 key")
    keys: dict[int, bytes] = {}
    for key_id, encoded in raw_keys.items():
        try:
            kid = int(key_id)
        except ValueError:
            raise ValueError(f"token key id {key_id!r} is not an integer") from None
        try:
            keys[validate_key_id(kid)] = base64.b64decode(str(encoded), validate=True)
        except binascii.Error:
            raise ValueError(f"token key {kid} is not base64") from None
    active = data.get("active", [])
    if not isinstance(active, list):
        raise ValueError("keyring 'active' must be a list of key ids")
    current = data.get("current")
    return Keyring(
        keys=keys,
        active=tuple(validate_key_id(a) for a in active),
        current=None if current is None else validate_key_id(current),
    )
