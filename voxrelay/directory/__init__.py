# SPDX-License-Identifier: Apache-2.0
"""The transceiver directory: records, one interface, two backends.

Transceivers use it like this (the URL picks the backend)::

    from voxrelay.directory import TransceiverRecord, connect

    async with connect("http://10.0.0.1:7480", secret=secret) as directory:   # or redis://...
        await directory.announce(TransceiverRecord(id=7, address="10.0.1.7", probe_port=3479))
        ring = await directory.keyring()            # mint with ring.current
        await directory.heartbeat(7, load=3)        # UnknownTransceiver -> announce again
        await directory.put_session("call-1", SessionRecord("call-1", 7, 40000).to_json(), ttl=60)

A transceiver stays announced with ``agent.keep_announced`` (the one
registration loop); ``memory.MemoryDirectory`` is the embedded store the
orchestrator serves (and ``transceiver run --directory memory`` uses alone).
"""

from __future__ import annotations

from .base import (
    Change,
    ChangeFeed,
    Directory,
    DirectoryAuthError,
    DirectoryError,
    DirectoryUnavailable,
    Snapshot,
    UnknownTransceiver,
)
from .memory import MemoryDirectory
from .records import (
    DEFAULT_PROBE_PORT,
    Keyring,
    SessionRecord,
    TransceiverRecord,
    parse_keyring,
    parse_session,
    parse_transceiver,
)


def connect(url: str, *, grace: float = 10.0, prefix: str = "voxrelay:",
            secret: str = "") -> Directory:
    """A directory client for ``url``: http(s):// is the embedded directory's
    HTTP API, redis:// / rediss:// / unix:// is Redis, and ``memory`` is a
    store in this process (a standalone lab transceiver, tests). ``grace``
    matters for Redis and memory, ``prefix`` only for Redis (the HTTP server
    decides its own grace). ``secret`` is the directory secret: the Bearer
    credential over HTTP, the password for Redis when the URL has none."""
    if url == "memory":
        return MemoryDirectory(grace=grace)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("http", "https"):
        from .http import HttpDirectory  # noqa: PLC0415  aiohttp's client: only when asked for

        return HttpDirectory(url, secret=secret)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisDirectory  # noqa: PLC0415  redis-py: only when asked for

        return RedisDirectory(url, grace=grace, prefix=prefix, password=secret or None)
    raise ValueError(
        f"directory URL {url!r} must be 'memory' or start with http://, https://, redis://, "
        "rediss:// or unix://"
    )


__all__ = [
    "DEFAULT_PROBE_PORT", "Change", "ChangeFeed", "Directory", "DirectoryAuthError",
    "DirectoryError",
    "DirectoryUnavailable", "Keyring", "SessionRecord", "Snapshot", "TransceiverRecord",
    "UnknownTransceiver", "connect", "parse_keyring", "parse_session", "parse_transceiver",
]
