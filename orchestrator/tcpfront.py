# SPDX-License-Identifier: Apache-2.0
"""The ICE-TCP front: RFC 6544 passive TCP on the relay's port 443, carried to UDP.

A caller whose network blocks UDP reaches the relay over TCP (the answer's
``tcp 443 typ host tcptype passive`` candidate, ``transceiver/ice.py``). Each
TCP connection carries RFC 4571 frames (a 2-byte big-endian length, then one
STUN, DTLS, SRTP or SRTCP packet). The front treats a connection exactly as
the XDP program treats a new 5-tuple:

1. The first complete frame must be a STUN Binding Request whose USERNAME
   starts with a routing token (``voxrelay.token``, the twin of
   ``bpf/token.h``), verified with the relay's own keys.
2. The token's transceiver must be in the relay's ``transceivers`` map and
   active; per-source, per-token and total connection limits apply.
3. Then the connection gets a UDP socket bound to ``private_address:port``
   (``[tcpfront] udp_port_min..udp_port_max``, a range apart from the XDP
   flows' ``port_min..port_max``, so the XDP program passes the replies up
   to this socket) and connected to ``transceiver:token port``. Every frame
   goes out as one datagram, every datagram from the transceiver comes back
   as one frame. The transceiver sees a peer-reflexive address on the
   relay's private side, as it does for the XDP path, and needs no TCP.

Anything else is refused (the connection is closed) and counted by reason
(``REFUSALS``): bad framing, a non-STUN first frame, a bad token, no first
frame within ``first_frame_seconds`` (slowloris), frames over
``max_frame_bytes``, and the limits. No UDP socket exists for a connection
before its token verified, so nothing reaches a transceiver that a valid
token did not open.

Keys and transceivers come from the relay's pins (``orchestrator.pinview``,
read-only, no bcc): the same entries the XDP program reads, synced by the
orchestrator, so the two paths accept exactly the same tokens and follow a
drain at the same moment, and the front needs no directory secret. The
snapshot is re-read at most every ``ROUTE_MAX_AGE`` seconds, on demand.

Efficiency: ``asyncio.BufferedProtocol`` reads into one preallocated buffer
per connection; frames are forwarded as memoryview slices of it with a plain
``send`` on the connected UDP socket; datagrams are received into one
buffer shared by the process and written to the TCP transport (which copies
only what the kernel did not take). Back-pressure: when the UDP socket
refuses a frame (EAGAIN) the connection stops reading TCP until the socket
is writable again, with the frame still in place; when the TCP transport's
buffer passes its high-water mark the UDP socket is no longer read (the
kernel's receive queue then drops, as a router would); what the transport
holds past its high-water mark is bounded by one burst (``UDP_BURST``
datagrams). One event loop per core: ``workers`` (0, the default: one per
CPU) processes on one ``SO_REUSEPORT`` listening port, each with its own
slice of the UDP port range and its own row of counters; a classic BPF
reuseport program (``steer_by_source``) sends every connection from one
client address to the same worker, so that the per-source limit holds for
the front as a whole. Each worker raises its descriptor limit to what
``max_connections`` needs (``raise_fd_limit``).

Counters live in a small memory-mapped file (``StatsFile``), one row per
worker, like a per-CPU BPF array: each worker writes only its own row, and
``voxrelay tcpfront stats``, ``voxrelay maps stats``, ``voxrelay relay
status`` and the Prometheus exporters (``orchestrator.metrics``) sum the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import ipaddress
import logging
import mmap
import os
import resource
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from orchestrator.errors import LoaderError
from orchestrator.pinview import open_pinview
from orchestrator.relay import RelayUnavailable
from voxrelay import token as tokens
from voxrelay.config import ConfigError, RelayConfig, TcpFrontConfig

log = logging.getLogger(__name__)

# --- counters ------------------------------------------------------------------------

REFUSALS = (
    "bad_framing",          # a zero-length frame
    "frame_too_large",      # a length prefix above max_frame_bytes (at any frame)
    "not_stun",             # the first frame is not a STUN message
    "not_binding_request",  # STUN, but not a Binding Request
    "no_username",          # a Binding Request without USERNAME (or with an empty token part)
    "token_malformed",      # voxrelay.token.verify's reasons (the names of bpf/verdicts.h)
    "token_unknown_key",
    "token_bad_mac",
    "token_expired",
    "transceiver_unknown",  # not in the relay's transceivers map
    "transceiver_draining",
    "source_limit",         # max_connections_per_source open already
    "total_limit",          # max_connections open already
    "token_limit",          # max_connections_per_token open with this token already
    "slowloris",            # no complete first frame within first_frame_seconds
    "incomplete",           # closed by the peer before a complete first frame
    "no_port",              # no free UDP port in this worker's range
    "no_relay",             # the relay's pins cannot be read (not loaded)
)
"""Why a connection was refused, in a fixed order: the index is the slot in the
stats file. Append only; never reorder (a reader of another build labels slots
by the names the file carries, so this is for tidiness, not an ABI)."""

EVENTS = (
    "accepted",               # TCP connections accepted
    "established",            # first frame verified, UDP socket open
    "closed",                 # established connections that ended (either side, or idle)
    "idle_closed",            # of those: no frame either way for idle_seconds
    "open",                   # gauge: connections open now (accepted and not yet gone)
    "frames_to_transceiver",
    "bytes_to_transceiver",   # payload bytes, without the 2-byte prefix
    "frames_to_client",
    "bytes_to_client",
    "udp_send_errors",        # frames the UDP socket refused, not for EAGAIN (dropped)
    "udp_too_large",          # datagrams from the transceiver over max_frame_bytes (dropped)
    "udp_paused",             # times TCP reading paused because the UDP socket was full
    "tcp_paused",             # times UDP reading paused because the TCP writer was congested
)
COUNTERS = EVENTS + tuple(f"refused_{r}" for r in REFUSALS)
_INDEX = {name: i for i, name in enumerate(COUNTERS)}
I_ACCEPTED, I_ESTABLISHED, I_CLOSED, I_IDLE, I_OPEN = (_INDEX[n] for n in EVENTS[:5])
I_FRAMES_TX, I_BYTES_TX, I_FRAMES_RX, I_BYTES_RX = (_INDEX[n] for n in EVENTS[5:9])
I_UDP_ERR, I_UDP_BIG, I_UDP_PAUSED, I_TCP_PAUSED = (_INDEX[n] for n in EVENTS[9:])


class Refused(ValueError):
    """A connection the front refuses; ``reason`` is one of ``REFUSALS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --- the first frame ------------------------------------------------------------------

STUN_HEADER = 20
STUN_MAGIC = 0x2112A442
STUN_BINDING_REQUEST = 0x0001
STUN_USERNAME = 0x0006
MAX_STUN_ATTRS = 16
"""Attributes walked looking for USERNAME: the same cap as bpf/consts.h."""


def stun_username_token(frame: bytes | bytearray | memoryview) -> str:
    """The routing token from a framed STUN Binding Request's USERNAME.

    USERNAME is ``<server ufrag>:<client ufrag>`` and the server ufrag is the
    token. Raises ``Refused`` (not_stun, not_binding_request, no_username)
    with an exact message.
    """
    n = len(frame)
    if n < STUN_HEADER:
        raise Refused("not_stun", f"first frame is {n} bytes, shorter than a STUN header")
    msg_type, msg_len, magic = struct.unpack_from(">HHI", frame, 0)
    if msg_type & 0xC000 or magic != STUN_MAGIC:
        raise Refused("not_stun", "first frame is not STUN (no magic cookie)")
    if msg_len != n - STUN_HEADER or msg_len % 4:
        raise Refused("not_stun",
                      f"STUN length {msg_len} does not match the frame's {n - STUN_HEADER}")
    if msg_type != STUN_BINDING_REQUEST:
        raise Refused("not_binding_request", f"first frame is STUN type 0x{msg_type:04x}, "
                                             "not a Binding Request")
    pos = STUN_HEADER
    for _ in range(MAX_STUN_ATTRS):
        if pos + 4 > n:
            break
        attr_type, attr_len = struct.unpack_from(">HH", frame, pos)
        value = pos + 4
        if value + attr_len > n:
            raise Refused("not_stun", f"STUN attribute 0x{attr_type:04x} overruns the message")
        if attr_type == STUN_USERNAME:
            raw = bytes(frame[value:value + attr_len])
            server, _, _ = raw.partition(b":")
            if not server:
                raise Refused("no_username", "USERNAME has no server ufrag")
            return server.decode("ascii", "replace")
        pos = value + attr_len + (-attr_len % 4)
    raise Refused("no_username", "Binding Request has no USERNAME")


# --- framing ---------------------------------------------------------------------------


class FrameBuffer:
    """RFC 4571 framing over one preallocated buffer, with no per-frame copy.

    ``writable()`` is where the socket reads into; ``filled(n)`` accounts for
    what it read; ``next_frame()`` returns a memoryview of the next complete
    frame's payload (valid until the next ``consume``/``writable``), None when
    none is complete, and raises ``Refused`` for a zero or oversized length.
    ``consume()`` releases the frame ``next_frame`` returned. The buffer holds
    two maximal frames, and is compacted only when the free tail is shorter
    than one: whole frames per read (the common case) never move.
    """

    __slots__ = ("_buf", "_end", "_frame_end", "_start", "_view", "max_frame")

    def __init__(self, max_frame: int) -> None:
        if not 1 <= max_frame <= 65535:
            raise ValueError(f"max_frame {max_frame} is outside 1..65535")
        self.max_frame = max_frame
        self._buf = bytearray(2 * (max_frame + 2))
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._frame_end = -1

    def __len__(self) -> int:
        return self._end - self._start

    def writable(self) -> memoryview:
        if len(self._buf) - self._end < self.max_frame + 2 and self._start:
            pending = self._end - self._start
            self._view[:pending] = self._view[self._start:self._end]  # memmove
            self._start, self._end = 0, pending
        return self._view[self._end:]

    def filled(self, n: int) -> None:
        self._end += n

    def next_frame(self) -> memoryview | None:
        start, avail = self._start, self._end - self._start
        if avail < 2:
            return None
        buf = self._buf
        length = (buf[start] << 8) | buf[start + 1]
        if length > self.max_frame:
            raise Refused("frame_too_large", f"frame of {length} bytes is over the "
                                             f"{self.max_frame}-byte cap")
        if length == 0:
            raise Refused("bad_framing", "zero-length frame")
        if avail < 2 + length:
            return None
        self._frame_end = start + 2 + length
        return self._view[start + 2:self._frame_end]

    def consume(self) -> None:
        self._start = self._frame_end
        if self._start == self._end:
            self._start = self._end = 0


def frame(payload: bytes) -> bytes:
    """``payload`` with its RFC 4571 length prefix (for clients and tests)."""
    if len(payload) > 0xFFFF:
        raise ValueError(f"frame payload of {len(payload)} bytes is over 65535")
    return len(payload).to_bytes(2, "big") + payload


# --- limits ----------------------------------------------------------------------------


class Limits:
    """Open connections in total, per source address and per token."""

    def __init__(self, total: int, per_source: int, per_token: int) -> None:
        self.total, self.per_source, self.per_token = total, per_source, per_token
        self.open = 0
        self.sources: dict[str, int] = {}
        self.tokens: dict[str, int] = {}

    def admit(self, source: str) -> str | None:
        """Take a connection slot for ``source``; the refusal reason, or None."""
        if self.open >= self.total:
            return "total_limit"
        if self.sources.get(source, 0) >= self.per_source:
            return "source_limit"
        self.open += 1
        self.sources[source] = self.sources.get(source, 0) + 1
        return None

    def release(self, source: str) -> None:
        self.open -= 1
        left = self.sources[source] - 1
        if left:
            self.sources[source] = left
        else:
            del self.sources[source]

    def admit_token(self, ufrag: str) -> bool:
        if self.tokens.get(ufrag, 0) >= self.per_token:
            return False
        self.tokens[ufrag] = self.tokens.get(ufrag, 0) + 1
        return True

    def release_token(self, ufrag: str) -> None:
        left = self.tokens[ufrag] - 1
        if left:
            self.tokens[ufrag] = left
        else:
            del self.tokens[ufrag]


# --- routes (keys and transceivers) ------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Where a verified token's connection goes."""

    transceiver_id: int
    address: str
    port: int


class RouteSnapshot(Protocol):
    """What the front needs of the relay's maps (``PinView`` has both)."""

    def keys(self) -> dict[int, bytes]: ...
    def transceivers(self) -> dict[int, tuple[str, str]]: ...


RouteTables = tuple[dict[int, bytes], dict[int, tuple[str, str]]]
"""(key id -> key, transceiver id -> (address, status)): what ``Routes`` reads."""

ROUTE_MAX_AGE = 1.0
"""Seconds a snapshot of keys and transceivers is used before it is re-read."""


class Routes:
    """Verifies a token and finds its transceiver, from a snapshot at most
    ``max_age`` old. ``read`` returns (keys, {id: (address, status)}) and
    raises OSError or RuntimeError when the relay cannot be read."""

    def __init__(self, read: Callable[[], RouteTables], max_age: float = ROUTE_MAX_AGE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._max_age = max_age
        self._clock = clock
        self._at = -1e18
        self._keys: dict[int, bytes] = {}
        self._txrs: dict[int, tuple[str, str]] = {}

    def _fresh(self) -> None:
        now = self._clock()
        if now - self._at < self._max_age:
            return
        try:
            self._keys, self._txrs = self._read()
        except (OSError, RuntimeError) as exc:
            self._keys, self._txrs = {}, {}
            self._at = now
            raise Refused("no_relay", f"the relay's maps cannot be read: {exc}") from None
        self._at = now

    def route(self, ufrag: str) -> Route:
        """The route for ``ufrag``; raises ``Refused`` with the kernel's reason names."""
        self._fresh()
        try:
            tok = tokens.verify(ufrag, self._keys)
        except tokens.TokenError as exc:
            raise Refused(exc.reason, str(exc)) from None
        entry = self._txrs.get(tok.transceiver_id)
        if entry is None:
            raise Refused("transceiver_unknown",
                          f"transceiver {tok.transceiver_id} is not in the map")
        address, status = entry
        if status != "active":
            raise Refused("transceiver_draining", f"transceiver {tok.transceiver_id} is {status}")
        return Route(tok.transceiver_id, address, tok.port)


def pinned_routes(relay_name: str) -> Routes:
    """``Routes`` read from the pins of relay ``relay_name`` (reopened per read,
    so that a relay loaded again is followed)."""

    def read() -> RouteTables:
        try:
            view = open_pinview(relay_name)
        except (RelayUnavailable, LoaderError) as exc:
            raise RuntimeError(str(exc)) from None
        with view:
            return view.keys(), {i: (t.address, t.status) for i, t in view.transceivers().items()}

    return Routes(read)


# --- UDP ports -------------------------------------------------------------------------


class UdpPorts:
    """This worker's relay-side UDP ports: ``min..max`` with ``(port - min) % workers == index``.

    Handed out oldest-released first, so that a port is reused as late as
    possible (a transceiver may still send a consent check to the last user).
    """

    def __init__(self, address: str, port_min: int, port_max: int,
                 index: int = 0, workers: int = 1) -> None:
        self.address = address
        self._free = deque(p for p in range(port_min, port_max + 1)
                           if (p - port_min) % workers == index)

    def __len__(self) -> int:
        return len(self._free)

    def bind(self) -> socket.socket | None:
        """A non-blocking UDP socket bound to a free port, or None when none is left."""
        for _ in range(len(self._free)):
            port = self._free.popleft()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((self.address, port))
            except OSError as exc:
                sock.close()
                self._free.append(port)  # another process has it now; try it again later
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            sock.setblocking(False)
            return sock
        return None

    def release(self, port: int) -> None:
        self._free.append(port)


# --- stats file ----------------------------------------------------------------------

_MAGIC = b"VXTF"
_HEADER = struct.Struct("=4sIII")  # magic, version, workers, counters


class StatsFile:
    """Counters in a memory-mapped file: a header, the counter names, then one
    row of ``u64`` per worker. Each worker writes only its row (no locks, like
    a per-CPU map); readers sum the rows."""

    def __init__(self, path: Path, workers: int, create: bool) -> None:
        self.path = path
        names = "\n".join(COUNTERS).encode()
        names += b"\0" * (-len(names) % 8)
        self._names_len = len(names)
        self.size = _HEADER.size + 4 + self._names_len + workers * len(COUNTERS) * 8
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("wb") as f:
                f.write(_HEADER.pack(_MAGIC, 1, workers, len(COUNTERS)))
                f.write(struct.pack("=I", self._names_len) + names)
                f.write(b"\0" * (workers * len(COUNTERS) * 8))
            tmp.replace(path)
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)
        self.workers = workers
        self._rows = _HEADER.size + 4 + self._names_len

    def row(self, index: int) -> memoryview:
        """Worker ``index``'s counters, as a memoryview of u64 indexed like ``COUNTERS``."""
        start = self._rows + index * len(COUNTERS) * 8
        return memoryview(self._map)[start:start + len(COUNTERS) * 8].cast("Q")

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self._map.close()


def read_stats(path: Path) -> dict[str, int]:
    """Counter name -> sum over workers, from a stats file of any build."""
    data = Path(path).read_bytes()
    if len(data) < _HEADER.size + 4:
        raise ValueError(f"{path}: too short for a TCP front stats file")
    magic, version, workers, count = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != 1:
        raise ValueError(f"{path}: not a TCP front stats file (magic {magic!r}, version {version})")
    (names_len,) = struct.unpack_from("=I", data, _HEADER.size)
    names_at = _HEADER.size + 4
    names = data[names_at:names_at + names_len].rstrip(b"\0").decode().split("\n")
    rows_at = names_at + names_len
    if len(names) != count or len(data) < rows_at + workers * count * 8:
        raise ValueError(f"{path}: truncated TCP front stats file")
    values = struct.unpack_from(f"={workers * count}Q", data, rows_at)
    return {name: sum(values[w * count + i] for w in range(workers))
            for i, name in enumerate(names)}


def default_stats_path(relay_name: str) -> Path:
    return Path(f"/run/voxrelay/tcpfront-{relay_name}.stats")


def stats_path(relay: RelayConfig, front: TcpFrontConfig) -> Path:
    """Where this config's front keeps its counters ([tcpfront] stats_file, or the default)."""
    return Path(front.stats_file) if front.stats_file else default_stats_path(relay.name)


DROPS = {"udp_send_error": "udp_send_errors", "udp_too_large": "udp_too_large"}
"""Frames dropped after the first, by reason (the metric label -> the counter)."""
BACKPRESSURE = {"udp_full": "udp_paused", "tcp_full": "tcp_paused"}
"""Times one side paused the other, by which side was full (label -> counter)."""


def summary(stats: dict[str, int]) -> dict[str, dict[str, int]]:
    """The counters grouped as ``maps stats``, ``relay status`` and /metrics show
    them: connections, frames, bytes, refusals and drops by reason, back-pressure.
    Every reason of this build is present (0 when a file of another build lacks
    it), and so is any reason a file of a newer build carries."""
    return {
        "connections": {k: stats.get(k, 0) for k in
                        ("accepted", "established", "closed", "idle_closed", "open")},
        "frames": {"to_transceiver": stats.get("frames_to_transceiver", 0),
                   "to_client": stats.get("frames_to_client", 0)},
        "bytes": {"to_transceiver": stats.get("bytes_to_transceiver", 0),
                  "to_client": stats.get("bytes_to_client", 0)},
        "refused": {**{r: stats.get(f"refused_{r}", 0) for r in REFUSALS},
                    **{k.removeprefix("refused_"): v for k, v in stats.items()
                       if k.startswith("refused_")}},
        "dropped": {label: stats.get(name, 0) for label, name in DROPS.items()},
        "backpressure": {label: stats.get(name, 0) for label, name in BACKPRESSURE.items()},
    }


def read_summary(path: Path) -> dict[str, dict[str, int]] | None:
    """``summary`` of the stats file at ``path``; None when there is none (no front
    has run on this host). A file that is not a stats file raises ValueError."""
    try:
        return summary(read_stats(path))
    except FileNotFoundError:
        return None


# --- the connection --------------------------------------------------------------------


UDP_BURST = 64
"""Datagrams read per readable event before yielding to the loop."""


class _Shared:
    """What every connection of one worker shares: one receive buffer for a
    burst of datagrams, each received right behind the previous one's frame
    (prefix, payload), so that a burst goes to TCP in one write."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self.rx = bytearray(UDP_BURST * (2 + max_frame + 1))
        self.view = memoryview(self.rx)


class FrontConnection(asyncio.BufferedProtocol):
    """One ICE-TCP connection (see the module docstring)."""

    def __init__(self, front: TcpFront) -> None:
        self.front = front
        self.c = front.counters
        self.frames = FrameBuffer(front.config.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.source = ""
        self.source_key = ""
        self.admitted = False
        self.ufrag = ""
        self.udp: socket.socket | None = None
        self.udp_fd = -1
        self.udp_port = 0
        self.deadline = 0.0
        self.last = 0.0
        self.udp_blocked = False
        self.tcp_blocked = False
        self.closed = False

    # --- TCP side ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):
            raise TypeError(f"a TCP front connection needs a stream transport, got {transport!r}")
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Frames go out as they come (a reply waiting for the peer's delayed
            # ACK costs 40 ms); asyncio sets this only for sockets made with proto 6.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.source = str(peer[0]) if peer else "?"
        self.source_key = source_key(self.source)
        self.c[I_ACCEPTED] += 1
        reason = self.front.limits.admit(self.source_key)
        if reason is not None:
            self.refuse(reason)
            return
        self.admitted = True
        self.c[I_OPEN] += 1
        self.deadline = self.front.loop.time() + self.front.config.first_frame_seconds
        self.front.pending.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.frames.writable()

    def buffer_updated(self, nbytes: int) -> None:
        self.frames.filled(nbytes)
        self.drain()

    def drain(self) -> None:
        """Forward every complete frame; stop at the first the UDP socket refuses."""
        frames, c = self.frames, self.c
        try:
            while not self.closed:
                payload = frames.next_frame()
                if payload is None:
                    return
                if self.udp is None:
                    try:
                        self.first_frame(payload)
                    except OSError as exc:  # bind/connect: e.g. a private_address not on this host
                        raise Refused("no_port", f"cannot open the UDP side: {exc}") from None
                    if self.udp is None:
                        return
                    frames.consume()
                    continue
                try:
                    self.udp.send(payload)
                except BlockingIOError:
                    self.block_udp()
                    return
                except OSError:
                    c[I_UDP_ERR] += 1  # ECONNREFUSED after an ICMP...: drop it, as UDP does
                else:
                    c[I_FRAMES_TX] += 1
                    c[I_BYTES_TX] += len(payload)
                frames.consume()
                self.last = self.front.loop.time()
        except Refused as exc:
            self.refuse(exc.reason, str(exc))

    def first_frame(self, payload: memoryview) -> None:
        front = self.front
        ufrag = stun_username_token(payload)
        route = front.routes.route(ufrag)
        if not front.limits.admit_token(ufrag):
            raise Refused("token_limit", "too many connections with this token")
        self.ufrag = ufrag
        sock = front.ports.bind()
        if sock is None:
            raise Refused("no_port", "no free UDP port")
        self.udp = sock
        self.udp_fd = sock.fileno()
        self.udp_port = sock.getsockname()[1]
        try:
            sock.connect((route.address, route.port))
            sock.send(payload)
        except OSError as exc:
            self.c[I_UDP_ERR] += 1
            log.debug("first datagram to %s:%d: %s", route.address, route.port, exc)
        else:
            self.c[I_FRAMES_TX] += 1
            self.c[I_BYTES_TX] += len(payload)
        front.pending.discard(self)
        front.established.add(self)
        self.c[I_ESTABLISHED] += 1
        self.last = front.loop.time()
        front.loop.add_reader(self.udp_fd, self.udp_readable)

    def block_udp(self) -> None:
        self.udp_blocked = True
        self.c[I_UDP_PAUSED] += 1
        if self.transport is not None:
            self.transport.pause_reading()
        self.front.loop.add_writer(self.udp_fd, self.udp_writable)

    def udp_writable(self) -> None:
        self.front.loop.remove_writer(self.udp_fd)
        self.udp_blocked = False
        self.drain()
        if not self.udp_blocked and not self.closed and self.transport is not None:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.udp is None and self.admitted and not self.closed:
            self.c[I_INDEX_INCOMPLETE] += 1
        self.teardown()

    def pause_writing(self) -> None:
        if self.udp is not None and not self.tcp_blocked:
            self.tcp_blocked = True
            self.c[I_TCP_PAUSED] += 1
            self.front.loop.remove_reader(self.udp_fd)

    def resume_writing(self) -> None:
        if self.udp is not None and self.tcp_blocked and not self.closed:
            self.tcp_blocked = False
            self.front.loop.add_reader(self.udp_fd, self.udp_readable)

    # --- UDP side ---
    def udp_readable(self) -> None:
        udp, transport, shared, c = self.udp, self.transport, self.front.shared, self.c
        if udp is None or transport is None:
            return
        rx, view, cap = shared.rx, shared.view, shared.max_frame
        pos = 0
        for _ in range(UDP_BURST):
            try:
                # one byte more than a frame may hold: a longer datagram shows as cap + 1
                n = udp.recv_into(view[pos + 2:pos + 3 + cap])
            except BlockingIOError:
                break
            except OSError:
                continue  # ECONNREFUSED from an earlier send: nothing to read this round
            if n > cap:
                c[I_UDP_BIG] += 1
                continue
            rx[pos] = n >> 8
            rx[pos + 1] = n & 0xFF
            pos += 2 + n
            c[I_FRAMES_RX] += 1
            c[I_BYTES_RX] += n
        if pos:
            # one write per burst; the transport copies what the kernel did not take
            transport.write(view[:pos])
            self.last = self.front.loop.time()

    # --- ending ---
    def refuse(self, reason: str, message: str = "") -> None:
        if self.closed:
            return
        self.c[I_REFUSED[reason]] += 1
        log.debug("refused %s: %s %s", self.source, reason, message)
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self.teardown()

    def close(self, idle: bool = False) -> None:
        if self.closed:
            return
        if idle:
            self.c[I_IDLE] += 1
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self.teardown()

    def teardown(self) -> None:
        """Release everything once; safe to call more than once."""
        self.closed = True
        front = self.front
        front.pending.discard(self)
        if self.udp is not None:
            with contextlib.suppress(ValueError, OSError):
                front.loop.remove_reader(self.udp_fd)
                front.loop.remove_writer(self.udp_fd)
            self.udp.close()
            self.udp = None
            front.ports.release(self.udp_port)
            front.established.discard(self)
            self.c[I_CLOSED] += 1
        if self.ufrag:
            front.limits.release_token(self.ufrag)
            self.ufrag = ""
        if self.admitted:
            self.admitted = False
            front.limits.release(self.source_key)
            self.c[I_OPEN] -= 1


I_REFUSED = {r: _INDEX[f"refused_{r}"] for r in REFUSALS}
I_INDEX_INCOMPLETE = I_REFUSED["incomplete"]


# --- one source, one worker ------------------------------------------------------------

LISTEN_BACKLOG = 4096
"""Each worker's accept queue (the kernel caps it at net.core.somaxconn, 4096 by
default). With asyncio's default of 100, a burst of connects overflows it: the
kernel drops the handshakes' last ACKs, and those connections reach the worker
seconds later, after slowloris has freed their source's slots, so a burst from one
address got more than ``max_connections_per_source`` in over time."""
SO_ATTACH_REUSEPORT_CBPF = 51
"""linux/asm-generic/socket.h (Python's socket module does not name it)."""
_SKF_NET_OFF = -0x100000
"""Classic BPF: offsets from the network header (the reuseport program's data
starts past the TCP header)."""
_GOLDEN = 0x9E3779B1
"""Knuth's multiplicative hash: neighbouring addresses spread over the workers."""


def source_steering_program(workers: int, family: int = socket.AF_INET) -> bytes:
    """A classic BPF reuseport program: socket index = hash(source) % workers.

    Every connection from one client address (IPv4) or one /64 (IPv6, the
    prefix one subscriber holds: ``source_key``) then reaches the same worker,
    so that worker's per-source limit is the front's (with the kernel's own
    4-tuple hash, 1,000 connections from one address would spread over all
    the workers and pass ``workers`` times the limit).
    """
    if not 2 <= workers <= 64:
        raise ValueError(f"workers {workers} is outside 2..64")
    ld_w_abs, alu_mul_k, alu_add_x, tax = 0x20, 0x24, 0x0C, 0x07
    alu_rsh_k, alu_mod_k, ret_a = 0x74, 0x94, 0x16
    if family == socket.AF_INET:
        insns: tuple[tuple[int, int], ...] = (
            (ld_w_abs, (_SKF_NET_OFF + 12) & 0xFFFFFFFF),)     # A = ip->saddr
    elif family == socket.AF_INET6:
        insns = ((ld_w_abs, (_SKF_NET_OFF + 8) & 0xFFFFFFFF),  # A = saddr[0..3]
                 (alu_mul_k, _GOLDEN), (tax, 0),                # X = A * golden
                 (ld_w_abs, (_SKF_NET_OFF + 12) & 0xFFFFFFFF),  # A = saddr[4..7]
                 (alu_add_x, 0))                                # A += X: the /64
    else:
        raise ValueError(f"address family {family} is neither AF_INET nor AF_INET6")
    insns += ((alu_mul_k, _GOLDEN), (alu_rsh_k, 16), (alu_mod_k, workers), (ret_a, 0))
    return b"".join(struct.pack("=HBBI", code, 0, 0, k) for code, k in insns)


def source_key(address: str) -> str:
    """What the per-source limit counts by: an IPv4 address, or an IPv6 address's
    /64 (one subscriber's prefix: limiting single /128s would let a client take
    2**64 times the limit)."""
    if ":" not in address:
        return address
    try:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    except ValueError:
        return address


def steer_by_source(sock: socket.socket, workers: int) -> None:
    """Attach ``source_steering_program`` to ``sock``'s reuseport group (the
    last worker to attach sets it for all; they attach the same program)."""
    class SockFprog(ctypes.Structure):
        _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))

    program = source_steering_program(workers, sock.family)
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                    bytes(fprog))


# --- the front -------------------------------------------------------------------------



def _bound_port(server: asyncio.Server | None, why_none: str) -> int:
    """The port ``server`` listens on; RuntimeError(``why_none``) without one."""
    if server is None:
        raise RuntimeError(why_none)
    port: int = server.sockets[0].getsockname()[1]
    return port

class TcpFront:
    """One worker: a listening socket, its connections, the sweeper."""

    def __init__(self, config: TcpFrontConfig, listen: tuple[str, int], private_address: str,
                 routes: Routes, counters: memoryview, *, index: int = 0, workers: int = 1,
                 listen6: tuple[str, int] | None = None) -> None:
        self.config = config
        self.listen = listen
        self.listen6 = listen6
        """The IPv6 VIP's address and port (the same limits, ports and counters), or None."""
        self.routes = routes
        self.counters = counters
        self.limits = Limits(config.max_connections, config.max_connections_per_source,
                             config.max_connections_per_token)
        self.ports = UdpPorts(private_address, config.udp_port_min, config.udp_port_max,
                              index, workers)
        self.shared = _Shared(config.max_frame_bytes)
        self.pending: set[FrontConnection] = set()
        self.established: set[FrontConnection] = set()
        self.reuse_port = workers > 1
        self.workers = workers
        self._server: asyncio.Server | None = None
        self._server6: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()  # made inside the loop that serves it

    async def start(self) -> None:
        self._server = await self._serve(socket.AF_INET, self.listen)
        if self.listen6 is not None:
            try:
                self._server6 = await self._serve(socket.AF_INET6, self.listen6)
            except BaseException:
                self._server.close()
                raise
        self._sweeper = asyncio.create_task(self._sweep())

    async def _serve(self, family: int, listen: tuple[str, int]) -> asyncio.Server:
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # IPv6 only: an IPv4 client is the IPv4 socket's (no ::ffff: sources).
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(listen)
            sock.listen(LISTEN_BACKLOG)
            if self.reuse_port:
                steer_by_source(sock, self.workers)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        # The backlog again: create_server listens once more, with 100 unless told.
        return await self.loop.create_server(lambda: FrontConnection(self), sock=sock,
                                             backlog=LISTEN_BACKLOG)

    @property
    def port(self) -> int:
        return _bound_port(self._server, "the TCP front is not started")

    @property
    def port6(self) -> int:
        return _bound_port(self._server6, "the TCP front serves no IPv6 address")

    async def _sweep(self) -> None:
        """Slowloris and idle timeouts for every connection, once a second (one
        timer for all, instead of a timer re-armed per frame)."""
        idle = self.config.idle_seconds
        while self._server is not None and self._server.is_serving():  # cancelled by stop()
            await asyncio.sleep(min(1.0, self.config.first_frame_seconds / 2))
            now = self.loop.time()
            for conn in [c for c in self.pending if c.deadline <= now]:
                conn.refuse("slowloris", "no complete first frame in time")
            for conn in [c for c in self.established if now - c.last > idle]:
                conn.close(idle=True)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        servers = [srv for srv in (self._server, self._server6) if srv is not None]
        for srv in servers:
            srv.close()
        for conn in list(self.pending) + list(self.established):
            conn.close()
        for srv in servers:
            await srv.wait_closed()


# --- running it --------------------------------------------------------------------------


def listen_address(relay: RelayConfig, front: TcpFrontConfig) -> tuple[str, int]:
    return relay.public_address, front.port


def listen_address6(relay: RelayConfig, front: TcpFrontConfig) -> tuple[str, int] | None:
    """The IPv6 VIP on the same port, when the relay has one ([relay] public_address6)."""
    return (relay.public_address6, front.port) if relay.public_address6 else None


def check_runnable(relay: RelayConfig, front: TcpFrontConfig) -> None:
    """Refuse a front the relay's input filter would hide (a clear message, not a silent port)."""
    if front.port not in relay.public_tcp_ports:
        raise ConfigError(
            f"[tcpfront] port {front.port} is not in [relay] public_tcp_ports "
            f"{relay.public_tcp_ports}: the relay's input filter would drop every connection")


@contextlib.contextmanager
def _stats(path: Path, workers: int, create: bool) -> Iterator[StatsFile]:
    stats = StatsFile(path, workers, create)
    try:
        yield stats
    finally:
        stats.close()


def raise_fd_limit(front: TcpFrontConfig) -> int:
    """Raise this process's soft RLIMIT_NOFILE to what ``max_connections`` needs
    (two descriptors per connection, TCP and UDP, plus headroom), as far as the
    hard limit allows; returns the soft limit now. Without it a default soft
    limit of 1024 would make accept() fail with EMFILE near 500 connections:
    connections neither served nor counted."""
    need = 2 * front.max_connections + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        log.warning("RLIMIT_NOFILE hard limit %d is below the %d descriptors %d connections "
                    "need: raise it (systemd: LimitNOFILE)", hard, need, front.max_connections)
    return target


async def serve_worker(relay: RelayConfig, front: TcpFrontConfig, stats_path: Path,
                       index: int, routes: Routes | None = None,
                       stop: asyncio.Event | None = None) -> None:
    """Run worker ``index`` until ``stop`` is set (or forever)."""
    raise_fd_limit(front)
    with _stats(stats_path, front.worker_count(), create=False) as stats:
        server = TcpFront(front, listen_address(relay, front), relay.private_address,
                          routes or pinned_routes(relay.name), stats.row(index),
                          index=index, workers=front.worker_count(),
                          listen6=listen_address6(relay, front))
        await server.start()
        log.info("TCP front worker %d on %s:%d%s (UDP %d..%d from %s)", index, *server.listen,
                 f" and [{server.listen6[0]}]:{server.listen6[1]}" if server.listen6 else "",
                 front.udp_port_min, front.udp_port_max, relay.private_address)
        try:
            await (stop or asyncio.Event()).wait()
        finally:
            await server.stop()
            del server
