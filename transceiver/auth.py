# SPDX-License-Identifier: Apache-2.0
"""Who may call signaling: API keys, ephemeral client secrets, web origins.

The shape is OpenAI's Realtime API's: an application backend holds an API
key and never gives it to a browser. For each user session it POSTs
``/v1/realtime/client_secrets`` with the key and gets a short-lived secret
(``ek_...``), which the page then uses as its Bearer token for
``POST /v1/calls``. So:

* an **API key** is accepted only from a non-browser client: a request that
  carries an ``Origin`` header (every browser's cross-origin and POST
  requests do) is refused, so a key pasted into a page stops working at once
  instead of leaking quietly;
* a **client secret** is stateless: ``ek_`` + base64url of
  ``version | expires_at (u32, unix s) | nonce (12 bytes) | MAC (16 bytes)``,
  the MAC an HMAC-SHA256 under a key derived from the API key. Any
  transceiver (or worker) holding the same API keys verifies it without a
  shared store; rotating the API key (the keys file's first line) retires
  every secret minted with the old one once that line is removed;
* a secret is the call's owner: a call can be ended, restarted or read only
  with the credential that created it (or an API key);
* **CORS**: a page may call from its own origin, or from one listed in
  ``[transceiver] cors_origins``; any other origin is refused with 403
  before anything is allocated.

Every refusal is an ``AuthError`` carrying the HTTP status and a message that
says what to do; nothing here raises anything else on bad input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from voxrelay.secrets import matching_secret

CLIENT_SECRET_PREFIX = "ek_"  # noqa: S105 - a format's prefix
_VERSION = 1
_LAYOUT = struct.Struct(">BI12s")  # version, expires_at, nonce
_MAC_BYTES = 16
_SECRET_BYTES = _LAYOUT.size + _MAC_BYTES
MIN_CLIENT_SECRET_TTL = 10.0


class AuthError(Exception):
    """A refused request: ``status`` (401, 403), a machine ``code``, a message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Credential:
    """Who is calling. ``identity`` names the credential without revealing it
    (per-client limits and call ownership key on it)."""

    kind: str
    """"api_key", "client_secret", or "none" (auth switched off)."""
    identity: str
    expires_at: float | None = None

    @property
    def is_api_key(self) -> bool:
        return self.kind in ("api_key", "none")

    @property
    def pending_limit_key(self) -> str:
        """What the per-client pending-call limit counts under: each client
        secret (one browser session, untrusted) on its own; "" (no per-client
        limit) for an API key, which is the operator's own backend and may set
        up many users' calls at once, bounded by ``max_calls`` alone."""
        return self.identity if self.kind == "client_secret" else ""


@dataclass(frozen=True)
class ClientSecret:
    value: str
    expires_at: int
    identity: str


def _derived(api_key: str) -> bytes:
    # A key of its own for secrets, so that an ek_ MAC says nothing about the API key.
    return hmac.new(api_key.encode(), b"voxrelay client secret v1", hashlib.sha256).digest()


def _fingerprint(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()[:10]


class Authenticator:
    """Checks signaling credentials against the API keys (the first mints).

    ``api_keys=None`` switches authentication off (a closed lab): every
    request is then the "none" credential.
    """

    def __init__(self, api_keys: Sequence[str] | None, *, default_ttl: float = 600.0,
                 max_ttl: float = 7200.0, clock: Callable[[], float] = time.time) -> None:
        if api_keys is not None and not api_keys:
            raise ValueError("authentication needs at least one API key (or None for none)")
        self._keys = None if api_keys is None else list(api_keys)
        self._derived = None if api_keys is None else [_derived(k) for k in api_keys]
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self._keys is not None

    def authenticate(self, header: str | None) -> Credential:
        """The credential in an ``Authorization`` header, or ``AuthError`` (401)."""
        if self._keys is None or self._derived is None:
            return Credential("none", "")
        if not header:
            raise AuthError(401, "missing_credential",
                            "send Authorization: Bearer <API key or ephemeral client secret>")
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise AuthError(401, "bad_credential", "Authorization must be 'Bearer <secret>'")
        if value.startswith(CLIENT_SECRET_PREFIX):
            return self._client_secret(value)
        matched = matching_secret(value, self._keys)
        if matched is None:
            raise AuthError(401, "bad_credential", "wrong API key")
        return Credential("api_key", "key:" + _fingerprint(matched))

    def _client_secret(self, value: str) -> Credential:
        if self._derived is None:
            raise AuthError(401, "bad_credential", "authentication is off")
        body = value[len(CLIENT_SECRET_PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise AuthError(401, "bad_credential", "client secret is not valid base64url") from None
        if len(raw) != _SECRET_BYTES:
            raise AuthError(401, "bad_credential", "client secret has the wrong length")
        head, mac = raw[:_LAYOUT.size], raw[_LAYOUT.size:]
        version, expires_at, nonce = _LAYOUT.unpack(head)
        if version != _VERSION:
            raise AuthError(401, "bad_credential", f"client secret version {version} is unknown")
        ok = False
        for key in self._derived:
            expected = hmac.new(key, head, hashlib.sha256).digest()[:_MAC_BYTES]
            ok |= hmac.compare_digest(mac, expected)
        if not ok:
            raise AuthError(401, "bad_credential",
                            "client secret was not minted with this service's API key")
        if expires_at <= self._clock():
            raise AuthError(401, "expired_credential",
                            f"client secret expired at {expires_at} (unix time): mint a new one")
        return Credential("client_secret", "ek:" + nonce.hex(), float(expires_at))

    def mint(self, ttl: float | None = None) -> ClientSecret:
        """A fresh client secret valid for ``ttl`` seconds (default: ``default_ttl``)."""
        if self._keys is None or self._derived is None:
            raise AuthError(400, "auth_disabled", "authentication is off "
                            "([transceiver] auth = false): there are no secrets to mint")
        ttl = self.default_ttl if ttl is None else ttl
        if not MIN_CLIENT_SECRET_TTL <= ttl <= self.max_ttl:
            raise AuthError(400, "bad_request",
                            f"expires_after.seconds must be within {MIN_CLIENT_SECRET_TTL:g}.."
                            f"{self.max_ttl:g}, got {ttl:g}")
        expires_at = int(self._clock() + ttl)
        nonce = secrets.token_bytes(12)
        head = _LAYOUT.pack(_VERSION, expires_at, nonce)
        mac = hmac.new(self._derived[0], head, hashlib.sha256).digest()[:_MAC_BYTES]
        value = CLIENT_SECRET_PREFIX + base64.urlsafe_b64encode(head + mac).decode().rstrip("=")
        return ClientSecret(value, expires_at, "ek:" + nonce.hex())


class OriginPolicy:
    """Which web origins may call: the page's own, and ``allowed`` ("*": any)."""

    def __init__(self, allowed: Sequence[str]) -> None:
        self.any = "*" in allowed
        self.allowed = frozenset(o for o in allowed if o != "*")

    def allows(self, origin: str, own_origin: str) -> bool:
        return origin == own_origin or self.any or origin in self.allowed

    def is_cross(self, origin: str, own_origin: str) -> bool:
        return origin != own_origin
