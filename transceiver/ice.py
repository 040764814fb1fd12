# SPDX-License-Identifier: Apache-2.0
"""ICE behind the relay: a small, documented adapter over aioice.

Why an adapter at all: aiortc builds its aioice ``Connection`` deep inside
``RTCIceGatherer`` and gives us no hook for the three things a call behind the
XDP relay needs:

1. The server ufrag must be a routing token that names this transceiver and
   the call's UDP port, so the port must be bound *before* the ufrag exists.
   We bind the port ourselves (``PortPool``), mint the token, then hand both to
   ``RoutedConnection``. The ufrag is set at the source (aioice's
   ``local_username``), never by rewriting SDP afterwards.
2. The one local socket is the bound port on the private address: no other
   host candidates, no STUN, no TURN. But the answer must advertise only the
   relays' public addresses, so ``local_candidates`` (what aiortc writes into
   the SDP) returns the relay candidates, while the socket stays private.
3. aioice has no ICE-lite and would send checks to the client's own
   candidates, around the relay. ``RoutedConnection`` ignores every remote
   candidate from signaling: the only pairs are the peer-reflexive addresses
   learned from checks that arrive through the relay, which are answered,
   checked back (triggered checks) and nominated by the client as usual.

``routed_ice()`` installs the adapter for the current task only (a
``ContextVar``), so an aiortc client in the same process (the tests) keeps the
stock ``Connection``. It patches one name, ``aiortc.rtcicetransport.Connection``,
with a factory that falls through to aioice's class when no call is being set
up.

NAT rebinding is the fourth thing: a client's NAT may give its flow a new
source port mid-call. The relay then makes a new flow, and the transceiver
sees the client's next check arrive from a new peer-reflexive address. aioice
(the controlled side) moves media only on USE-CANDIDATE, which an aiortc
client's consent checks never carry, so it would keep sending to the dead
mapping until consent expires. ``RoutedConnection`` moves the nominated pair
to the new address, as pion and libwebrtc do, once both hold: the new pair
is authenticated both ways (the client's check passed MESSAGE-INTEGRITY with
our password, and our triggered check's response with theirs), and the
current pair has been silent for ``RoutedIce.rebind_silence`` seconds (a
timer waits for that when the check comes early). A pair the client
nominates moves media at once (aioice's own rule).

ICE restart (``restart_ice``) is missing from aioice too: it swaps credentials,
forgets the old check list and learned candidates, and keeps the nominated
pair carrying media until a new pair is nominated (RFC 8445 section 9). The
controlling side (the aiortc test client, lab/client.py) also needs
``aioice_connection``, ``set_local_credentials`` and
``accept_remote_candidates`` for its half of a restart.

This is the one module that touches aioice/aiortc beyond their documented
API. ``INTERNALS`` lists every such name, and ``TESTED_WITH`` the versions
they were checked against (pinned with ``==`` in pyproject.toml);
``tests/unit/test_aiortc_contract.py`` fails when an installed aioice or
aiortc lacks any of them, and when code here or elsewhere touches a private
aioice/aiortc name the table does not list.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import logging
import random
import secrets
import socket
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import aiortc.jitterbuffer
import aiortc.rtcicetransport
import aiortc.rtcrtpreceiver
from aioice import Candidate, Connection, stun
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import CandidatePair, StunProtocol
from aiortc import RTCIceTransport, RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

from voxrelay.addr import parse_hostport

logger = logging.getLogger(__name__)

TESTED_WITH = {"aiortc": "1.16.0", "aioice": "0.13.0", "av": "18.1.0"}
"""The versions INTERNALS was checked against; pyproject.toml pins exactly these."""


@dataclass(frozen=True)
class Internal:
    """One aioice/aiortc name this module relies on beyond the documented API.

    ``kind`` is what ``owner.name`` must be: "attribute" (set on every
    instance; ``type`` names the type of its value on a fresh one),
    "annotation" (a declared instance attribute aioice reads), "method",
    "property", "class", "constant", "function", "parameter" (a keyword of
    ``owner``, a callable), "patched" (a module global this module replaces) or
    "receiver-set" (an attribute aiortc's RTCRtpReceiver sets on each packet).
    """

    owner: str
    name: str
    kind: str
    type: str = ""
    why: str = ""


_CONN = "aioice.ice.Connection"
_PAIR = "aioice.ice.CandidatePair"
INTERNALS: tuple[Internal, ...] = (
    # RoutedConnection: construction and the three overrides.
    Internal(_CONN, "ice_controlling", "parameter"),
    Internal(_CONN, "local_username", "parameter", why="the token ufrag, set at the source"),
    Internal(_CONN, "local_password", "parameter"),
    Internal(_CONN, "use_ipv6", "parameter"),
    Internal(_CONN, "local_candidates", "property", why="overridden: the answer lists relays"),
    Internal(_CONN, "gather_candidates", "method", why="overridden: our one bound socket"),
    Internal(_CONN, "add_remote_candidate", "method", why="overridden: signaled ones ignored"),
    Internal(_CONN, "query_consent", "method", why="overridden: per-call interval and failures"),
    Internal(_CONN, "build_request", "method"),
    Internal(_CONN, "check_state", "method"),
    Internal(_CONN, "check_start_task", "method"),
    Internal(_CONN, "_local_candidates_start", "attribute", "bool"),
    Internal(_CONN, "_local_candidates_end", "attribute", "bool"),
    Internal(_CONN, "_local_candidates", "attribute", "list"),
    Internal(_CONN, "_protocols", "attribute", "list"),
    Internal(_CONN, "_nominated", "attribute", "dict"),
    Internal(_CONN, "_query_consent_task", "attribute", "NoneType"),
    # restart_ice and the controlling side's checks.
    Internal(_CONN, "_check_list", "attribute", "list"),
    Internal(_CONN, "_check_list_done", "attribute", "bool"),
    Internal(_CONN, "_check_list_state", "attribute", "Queue"),
    Internal(_CONN, "_nominating", "attribute", "set"),
    Internal(_CONN, "_remote_candidates", "attribute", "list"),
    Internal(_CONN, "_remote_candidates_end", "attribute", "bool"),
    Internal(_CONN, "_local_username", "attribute", "str"),
    Internal(_CONN, "_local_password", "attribute", "str"),
    Internal(_CONN, "_closing", "attribute", "bool"),
    # NAT rebinding: where an authenticated check and a check's result arrive.
    Internal(_CONN, "check_incoming", "method", why="extended: a rebinding client's new address"),
    Internal(_CONN, "check_complete", "method", why="extended: a rebinding client's new address"),
    Internal(_CONN, "close", "method", why="extended: the rebinding timer is cancelled"),
    Internal("aioice.ice.StunProtocol", "datagram_received", "method",
             why="extended: when each remote address was last heard"),
    Internal("aioice.ice", "CandidatePair", "class"),
    Internal(_PAIR, "task", "attribute", "NoneType"),
    Internal(_PAIR, "nominated", "attribute", "bool"),
    Internal(_PAIR, "state", "attribute", "State"),
    Internal(_PAIR, "protocol", "attribute", "StunProtocol"),
    Internal(_PAIR, "remote_addr", "property"),
    Internal(f"{_PAIR}.State", "FROZEN", "constant", "State"),
    Internal(f"{_PAIR}.State", "WAITING", "constant", "State"),
    Internal("aioice.ice", "StunProtocol", "class"),
    Internal("aioice.ice.StunProtocol", "local_candidate", "annotation"),
    Internal("aioice.ice.StunProtocol", "transport", "annotation",
             why="closed by drop_transports when a call's close runs out of time"),
    Internal("aioice.ice.StunProtocol", "request", "method"),
    Internal("aioice.ice", "CONSENT_INTERVAL", "constant", "int"),
    Internal("aioice.candidate", "candidate_foundation", "function"),
    Internal("aioice.candidate", "candidate_priority", "function"),
    Internal("aioice.stun", "TransactionError", "class"),
    # aiortc: where its gatherer builds the connection, and the client's restart.
    Internal("aiortc.rtcicetransport", "Connection", "patched", why="aiortc's gatherer calls it"),
    Internal("aiortc.rtcicetransport.RTCIceTransport", "_connection", "attribute", "Connection"),
    Internal("aiortc.rtcicetransport.RTCIceGatherer", "_remote_candidates_end", "attribute",
             "bool"),
    # aiortc: the audio receiver's jitter buffer (short_audio_jitter, issue #12).
    Internal("aiortc.rtcrtpreceiver", "JitterBuffer", "class",
             why="RTCRtpReceiver builds its buffer from this module global"),
    Internal("aiortc.jitterbuffer.JitterBuffer", "prefetch", "parameter"),
    Internal("aiortc.jitterbuffer.JitterBuffer", "_remove_frame", "method",
             why="add() asks it for the next frame; _ShortAudioJitterBuffer answers for audio"),
    Internal("aiortc.jitterbuffer.JitterBuffer", "remove", "method"),
    Internal("aiortc.jitterbuffer.JitterBuffer", "_origin", "attribute", "NoneType"),
    Internal("aiortc.jitterbuffer.JitterBuffer", "_packets", "attribute", "list"),
    Internal("aiortc.jitterbuffer.JitterBuffer", "_capacity", "attribute", "int"),
    Internal("aiortc.jitterbuffer.JitterBuffer", "_is_video", "attribute", "bool"),
    Internal("aiortc.jitterbuffer", "JitterFrame", "class"),
    Internal("aiortc.rtp.RtpPacket", "_data", "receiver-set",
             why="RTCRtpReceiver stores the depayloaded frame there before JitterBuffer.add"),
    # aiortc: the receive packet path (receive_audio_payloads, transceiver/rxopus.py).
    Internal("aiortc.rtcrtpreceiver.RTCRtpReceiver", "_RTCRtpReceiver__jitter_buffer",
             "attribute", "JitterBuffer",
             why="where a call's audio sink is attached (the receiver's own buffer)"),
    Internal("aiortc.jitterbuffer.JitterBuffer", "add", "method",
             why="extended: a frame goes to the call's sink instead of the decoder thread"),
    Internal("aiortc.rtcrtpreceiver.RTCRtpReceiver", "_handle_rtp_packet", "method",
             why="passes JitterBuffer.add's frame to the decoder thread only when not None"),
)

_ICE_CHARS = string.ascii_letters + string.digits + "+/"


def random_ice_password() -> str:
    """A fresh ICE password: 24 ice-chars (RFC 8445 asks for >= 22)."""
    return "".join(secrets.choice(_ICE_CHARS) for _ in range(24))


# ---------------------------------------------------------------- relay specs


@dataclass(frozen=True)
class RelaySpec:
    """One relay the answer advertises: its public address as clients see it."""

    host: str
    port: int
    region: str = ""
    rtt_ms: float | None = None
    tcp: int = 0
    """The relay's ICE-TCP port (``tcp=443``: orchestrator/tcpfront.py there); 0: none."""


def parse_relay(spec: str) -> RelaySpec:
    """Parse ``"ADDR:PORT [region=NAME] [rtt_ms=FLOAT] [tcp=PORT]"`` (the ``relays`` entries).

    Raises ``ValueError`` with a message naming the bad part.
    """
    parts = spec.split()
    if not parts:
        raise ValueError("relay spec is empty")
    # IPv4 or IPv6: a dual-stack relay is listed once per VIP, "[ADDR]:PORT"
    # for its IPv6 one ([relay] public_address6).
    addr, port = parse_hostport(parts[0], ip_only=True, what="relay")
    region = ""
    rtt: float | None = None
    tcp = 0
    for option in parts[1:]:
        key, eq, value = option.partition("=")
        if not eq:
            raise ValueError(f"relay option {option!r} must be key=value")
        if key == "region":
            if not value:
                raise ValueError("relay region must not be empty")
            region = value
        elif key == "rtt_ms":
            try:
                rtt = float(value)
            except ValueError:
                raise ValueError(f"relay rtt_ms {value!r} is not a number") from None
            if not 0 <= rtt < 60000:
                raise ValueError(f"relay rtt_ms {value!r} is outside 0..60000")
        elif key == "tcp":
            tcp = _parse_tcp_port(value)
        else:
            raise ValueError(f"relay option {key!r} is unknown; known: region, rtt_ms, tcp")
    return RelaySpec(addr, port, region, rtt, tcp)


def relay_candidates(relays: list[RelaySpec], region: str = "") -> list[Candidate]:
    """The answer's candidates: one per relay, nearest first, priority decreasing.

    Nearest = same region as this transceiver first, then lower RTT, then the
    order in the config. The advertised type is ``host``: to the client the
    relay's public address *is* the server's address (the relay is stateless
    NAT, not a TURN allocation), and browsers pair host candidates directly.
    """
    if not relays:
        raise ValueError("at least one relay is required to advertise candidates")

    def proximity(item: tuple[int, RelaySpec]) -> tuple[int, float, int]:
        index, relay = item
        same_region = 0 if (region and relay.region == region) else 1
        rtt = relay.rtt_ms if relay.rtt_ms is not None else float("inf")
        return (same_region, rtt, index)

    ordered = [relay for _, relay in sorted(enumerate(relays), key=proximity)]
    candidates = []
    for rank, relay in enumerate(ordered):
        candidates.append(
            Candidate(
                foundation=candidate_foundation("host", "udp", relay.host),
                component=1,
                transport="udp",
                priority=candidate_priority(1, "host", local_pref=65535 - rank),
                host=relay.host,
                port=relay.port,
                type="host",
            )
        )
    return candidates + tcp_candidates(ordered)


def _parse_tcp_port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ValueError(f"relay tcp {value!r} is not a port in 1..65535")
    return int(value)


def tcp_candidates(ordered: list[RelaySpec]) -> list[Candidate]:
    """RFC 6544 passive TCP candidates for the relays that have ``tcp=PORT``, in
    the same order, each below every UDP candidate: local preference
    (direction 4 for host passive) << 13 | (8191 - rank), under UDP's 65535 - rank."""
    return [
        Candidate(
            foundation=candidate_foundation("host", "tcp", relay.host),
            component=1,
            transport="tcp",
            priority=candidate_priority(1, "host", local_pref=(4 << 13) | (8191 - rank)),
            host=relay.host,
            port=relay.tcp,
            type="host",
            tcptype="passive",
        )
        for rank, relay in enumerate(ordered)
        if relay.tcp
    ]


# ---------------------------------------------------------------- ports


class PortPool:
    """Binds each call's UDP socket on the private address, from a port range.

    The port is chosen here (not by the kernel) because it goes into the
    routing token before ICE starts. Ports in use by other processes are
    skipped (EADDRINUSE); ``release`` makes a port available again.
    """

    def __init__(self, address: str, port_min: int, port_max: int) -> None:
        if not 1 <= port_min <= port_max <= 65535:
            raise ValueError(f"port range {port_min}..{port_max} is not within 1..65535")
        self.address = address
        self.port_min = port_min
        self.port_max = port_max
        self._in_use: set[int] = set()

    @property
    def in_use(self) -> frozenset[int]:
        return frozenset(self._in_use)

    def bind(self) -> socket.socket:
        size = self.port_max - self.port_min + 1
        start = random.randrange(size)
        for step in range(size):
            port = self.port_min + (start + step) % size
            if port in self._in_use:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((self.address, port))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            sock.setblocking(False)
            self._in_use.add(port)
            return sock
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {self.port_min}..{self.port_max}")

    def release(self, port: int) -> None:
        self._in_use.discard(port)


CONSENT_RETRANSMISSIONS = 3
"""Retransmissions of one consent check (RFC 5389 backoff from aioice's 0.5 s
RTO: sent at 0, 0.5, 1.5 and 3.5 s, given up at 7.5 s). An answer that takes
up to 7.5 s still refreshes consent, and the checks overlap (one every
consent_interval s), so a late answer to any of them counts."""


# ---------------------------------------------------------------- connection


@dataclass
class RoutedIce:
    """What one call's ICE needs: the bound socket, its token ufrag, the relays."""

    sock: socket.socket
    ufrag: str
    password: str
    advertised: list[Candidate]
    consent_interval: float = aioice.ice.CONSENT_INTERVAL
    consent_timeout: float = 30.0
    """Seconds after the last authenticated consent response that the
    connection closes (RFC 7675 section 5.1)."""
    rebind_silence: float = 0.5
    """Seconds the nominated pair must be silent before media moves to a new,
    authenticated address of the client (NAT rebinding)."""
    connections: list[RoutedConnection] = field(default_factory=list)
    """Every connection aiortc built for this call; with BUNDLE only one gathers."""

    def primary(self) -> RoutedConnection | None:
        """The connection that owns the socket (the one aiortc gathered)."""
        return next((c for c in self.connections if c.gathering_started), None)


_HEARD_KEEP = 16  # remote addresses whose last packet time is kept, per socket


class RoutedProtocol(StunProtocol):
    """aioice's protocol, remembering when each remote address was last heard
    (any datagram: media keeps a pair "live" as much as a check does)."""

    def __init__(self, receiver: Connection) -> None:
        super().__init__(receiver)
        self.heard: dict[tuple[str, int], float] = {}

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        key = (str(addr[0]), int(addr[1]))
        heard = self.heard
        if key not in heard and len(heard) >= _HEARD_KEEP:
            del heard[min(heard, key=heard.__getitem__)]
        heard[key] = asyncio.get_running_loop().time()
        super().datagram_received(data, addr)


class RoutedConnection(Connection):
    """An aioice ``Connection`` for a call behind the relay (controlled side).

    See the module docstring for why each override exists.
    """

    def __init__(self, routed: RoutedIce, **kwargs: Any) -> None:
        # aiortc passes its own username/password/policy/servers: ours win.
        super().__init__(
            ice_controlling=False,
            local_username=routed.ufrag,
            local_password=routed.password,
            use_ipv6=False,
        )
        self.routed = routed
        self.ignored_remote_candidates = 0
        self.rebinds = 0
        self.consent_fresh_at = 0.0
        """Loop time of the last authenticated consent response (0: none yet)."""
        """Times media moved to a new address of the client without a restart."""
        self._rebind_timer: asyncio.TimerHandle | None = None
        routed.connections.append(self)

    @property
    def local_candidates(self) -> list[Candidate]:
        # What goes into the SDP answer: the relays only. The private socket's
        # own candidate is kept off this list on purpose. Empty until gathered,
        # as aiortc starts ICE as soon as this list is non-empty.
        if not self._local_candidates_end:
            return []
        return list(self.routed.advertised)

    @property
    def gathering_started(self) -> bool:
        return self._local_candidates_start

    @property
    def bound_address(self) -> tuple[str, int]:
        # typeshed types getsockname() as Any; an AF_INET socket's is (host, port)
        address: tuple[str, int] = self.routed.sock.getsockname()[:2]
        return address

    async def gather_candidates(self) -> None:
        if self._local_candidates_start:
            return
        self._local_candidates_start = True
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(
            lambda: RoutedProtocol(self), sock=self.routed.sock
        )
        host, port = self.bound_address
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", host),
            component=1,
            transport="udp",
            priority=candidate_priority(1, "host"),
            host=host,
            port=port,
            type="host",
        )
        self._protocols.append(protocol)
        self._local_candidates.append(protocol.local_candidate)
        self._local_candidates_end = True

    async def add_remote_candidate(self, remote_candidate: Candidate | None) -> None:
        # Never check the client's own candidates (that would go around the
        # relay), and never signal end-of-candidates either: with no pairs,
        # aioice would declare ICE failed before the relay's checks arrive.
        # The call's ICE timeout bounds the wait instead.
        if remote_candidate is not None:
            self.ignored_remote_candidates += 1

    async def query_consent(self) -> None:
        # Consent freshness (RFC 7675): consent lasts consent_timeout s after
        # the last authenticated response to one of our checks, which go out
        # every consent_interval s (+-20 %). aioice counts failed checks
        # instead, which puts the close anywhere between 24 and 36 s after
        # the last response; a deadline puts it at 30 s.
        #
        # aioice also gives each check one send and half a second: a caller
        # whose answers take longer (a deep uplink buffer on a congested
        # mobile link, or a client whose event loop is behind) would fail
        # every check and lose the call 30 s in while its media flows. Here
        # each check is a STUN transaction of its own, retransmitted with
        # RFC 5389's backoff for 7.5 s (CONSENT_RETRANSMISSIONS), and the checks
        # overlap: an answer to any of them, however late, refreshes consent.
        if self.remote_password is None:  # aioice checks consent only once connected
            raise RuntimeError(f"{self}: consent checks need the remote ICE password")
        integrity_key = self.remote_password.encode("utf8")
        interval = self.routed.consent_interval
        timeout = self.routed.consent_timeout
        loop = asyncio.get_running_loop()
        checks: set[asyncio.Task[Any]] = set()
        watching = True  # False once the deadline is gone: a late callback must not touch it
        # ICE connected (a check succeeded) just before aioice starts this loop.
        self.consent_fresh_at = loop.time()
        try:
            async with asyncio.timeout_at(self.consent_fresh_at + timeout) as deadline:

                def answered(check: asyncio.Task[Any]) -> None:
                    checks.discard(check)
                    if check.cancelled() or check.exception() is not None or not watching:
                        return  # no answer in 7.5 s: the deadline decides
                    self.consent_fresh_at = loop.time()
                    deadline.reschedule(self.consent_fresh_at + timeout)

                while True:
                    await asyncio.sleep(interval * (0.8 + 0.4 * random.random()))
                    for pair in list(self._nominated.values()):
                        request = self.build_request(pair, nominate=False)
                        check = asyncio.ensure_future(pair.protocol.request(
                            request, pair.remote_addr, integrity_key=integrity_key,
                            retransmissions=CONSENT_RETRANSMISSIONS))
                        checks.add(check)
                        check.add_done_callback(answered)
        except TimeoutError:
            pass
        finally:
            watching = False
            for check in list(checks):
                check.cancel()
        logger.info("%s consent to send expired (%.1f s since the last response)",
                    self, loop.time() - self.consent_fresh_at)
        self._query_consent_task = None
        await self.close()

    # ------------------------------------------------------------ NAT rebinding

    def check_incoming(self, message: stun.Message, addr: tuple[str, int],
                       protocol: StunProtocol) -> None:
        # Called by aioice only for a request that passed MESSAGE-INTEGRITY.
        super().check_incoming(message, addr, protocol)
        self._consider_rebind(addr, protocol)

    def check_complete(self, pair: CandidatePair) -> None:
        super().check_complete(pair)
        if pair.state == CandidatePair.State.SUCCEEDED:
            self._consider_rebind(pair.remote_addr, pair.protocol)

    def _consider_rebind(self, addr: tuple[str, int], protocol: StunProtocol) -> None:
        """Move media to ``addr`` if it is a checked pair and the current one is silent."""
        if self._closing:
            return
        component = protocol.local_candidate.component
        current = self._nominated.get(component)
        if current is None or current.remote_addr == addr:
            return  # not connected yet (aioice nominates), or nothing new
        pair = next((p for p in self._check_list if p.protocol is protocol
                     and p.remote_addr == addr
                     and p.state == CandidatePair.State.SUCCEEDED), None)
        if pair is None:
            return  # our triggered check has not succeeded yet: check_complete comes back
        loop = asyncio.get_running_loop()
        heard = getattr(current.protocol, "heard", {})
        silent = loop.time() - heard.get(current.remote_addr, 0.0)
        wait = self.routed.rebind_silence - silent
        if self._rebind_timer is not None:
            self._rebind_timer.cancel()
            self._rebind_timer = None
        if wait > 0:
            self._rebind_timer = loop.call_later(wait, self._consider_rebind, addr, protocol)
            return
        logger.info("%s NAT rebinding: media moves from %s to %s (silent for %.2f s)",
                    self, current.remote_addr, addr, silent)
        pair.nominated = True
        self._nominated[component] = pair
        self.rebinds += 1

    async def close(self) -> None:
        if self._rebind_timer is not None:
            self._rebind_timer.cancel()
            self._rebind_timer = None
        await super().close()

    def drop_transports(self) -> None:
        """Close the datagram transports of this connection (idempotent): the
        last resort of a call whose peer connection did not close in time."""
        for protocol in self._protocols:
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.close()

    def nominated_remote(self) -> tuple[str, int] | None:
        pair = self._nominated.get(1)
        return pair.remote_addr if pair else None


_routed: contextvars.ContextVar[RoutedIce | None] = contextvars.ContextVar(
    "voxrelay_routed_ice", default=None
)
_AioiceConnection = aioice.ice.Connection
# aiortc's gatherer calls the global ``Connection`` of aiortc.rtcicetransport,
# aioice's class imported there (not re-exported, so mypy hides it as an
# attribute): that module global is the one name install() patches.
_GATHERER_GLOBALS: dict[str, object] = vars(aiortc.rtcicetransport)


def _connection_factory(**kwargs: Any) -> Connection:
    routed = _routed.get()
    if routed is None:
        return _AioiceConnection(**kwargs)
    return RoutedConnection(routed, **kwargs)


def install() -> None:
    """Point aiortc's gatherer at our factory (idempotent)."""
    current = _GATHERER_GLOBALS["Connection"]
    if current is not _connection_factory:
        if current is not _AioiceConnection:
            raise RuntimeError("aiortc.rtcicetransport.Connection was patched by someone else")
        _GATHERER_GLOBALS["Connection"] = _connection_factory


@contextlib.contextmanager
def routed_ice(routed: RoutedIce) -> Iterator[None]:
    """Within this block (this task only), aiortc gatherers use ``RoutedConnection``."""
    install()
    token = _routed.set(routed)
    try:
        yield
    finally:
        _routed.reset(token)


# ---------------------------------------------------------------- jitter buffer

AUDIO_JITTER_FRAMES = 1
"""Audio frames aiortc's receiver holds back when packets come out of order
(aiortc: a fixed 4, 80 ms). Behind the relay the path is a LAN: one is enough
(issue #12)."""


class _ShortAudioJitterBuffer(aiortc.jitterbuffer.JitterBuffer):
    """aiortc's jitter buffer, but an audio packet that arrives in order is a
    frame at once.

    aiortc finds the end of a frame when a packet of the next timestamp
    arrives, so even at one frame of prefetch every audio frame waited a
    packet interval (20 ms) for its successor. An Opus packet is a whole
    frame: the one at the buffer's origin can be decoded as soon as it is
    there. A missing one is waited for while the newest packet is at most
    ``AUDIO_JITTER_FRAMES`` past it, then counted lost (aiortc waited until its
    16-packet buffer overflowed: 320 ms of silence for one lost packet).
    ``add`` returns one frame per packet, so after a loss or a reordering the
    frames run one packet behind, as every frame did before.
    """

    def __init__(self, capacity: int, prefetch: int = 0, is_video: bool = False) -> None:
        if not is_video:
            prefetch = min(prefetch, AUDIO_JITTER_FRAMES)
        super().__init__(capacity, prefetch=prefetch, is_video=is_video)
        self.sink: AudioSink | None = None
        """Set by ``receive_audio_payloads``: each frame goes there, not to aiortc's decoder."""
        self.sink_errors = 0

    def add(self, packet: RtpPacket) -> tuple[bool, aiortc.jitterbuffer.JitterFrame | None]:
        pli_flag, frame = super().add(packet)
        sink = self.sink
        if frame is None or sink is None:
            return pli_flag, frame
        try:
            sink(frame.data, frame.timestamp)
        except Exception:  # a broken sink must not stop aiortc's receive path
            self.sink_errors += 1
            if self.sink_errors == 1:
                logger.exception("audio sink failed (counted; later failures are not logged)")
        return pli_flag, None

    def _remove_frame(self, sequence_number: int) -> aiortc.jitterbuffer.JitterFrame | None:
        origin = self._origin
        if self._is_video or origin is None:
            frame: aiortc.jitterbuffer.JitterFrame | None = super()._remove_frame(sequence_number)
            return frame
        # How far the packet just stored is past the oldest one still wanted.
        ahead = uint16_add(sequence_number, -origin)
        for skip in range(min(ahead, self._capacity - 1) + 1):
            packet = self._packets[(origin + skip) % self._capacity]
            if packet is None:
                if ahead <= AUDIO_JITTER_FRAMES:
                    return None  # the oldest may still come: wait up to a frame for it
                continue  # late by more than that: count it lost, as aiortc's overflow would
            self.remove(skip + 1)
            return aiortc.jitterbuffer.JitterFrame(data=packet._data,  # type: ignore[attr-defined]
                                                   timestamp=packet.timestamp)
        return None


class _OneFrameAudioJitterBuffer(aiortc.jitterbuffer.JitterBuffer):
    """aiortc's own reassembly at one frame of prefetch: each audio frame is
    handed on when the next packet arrives, 20 ms behind. The lab's clients
    measure with it: it is what a browser's adaptive buffer settles to on a
    clean path, so a turn timed by our client is not shorter than a caller's."""

    def __init__(self, capacity: int, prefetch: int = 0, is_video: bool = False) -> None:
        if not is_video:
            prefetch = min(prefetch, 1)
        super().__init__(capacity, prefetch=prefetch, is_video=is_video)


def short_audio_jitter(*, like_a_browser: bool = False) -> None:
    """Make receivers built from now on use the transceiver's audio buffer
    (``_ShortAudioJitterBuffer``), or with ``like_a_browser`` one that holds a
    frame (``_OneFrameAudioJitterBuffer``, the lab's timed clients).

    Process-wide: it replaces the class aiortc's RTCRtpReceiver builds its
    buffer from, so it must run before the peer connection's transceivers
    exist (``addTrack``), and the last call wins. Video keeps aiortc's buffer."""
    receiver_globals: dict[str, object] = vars(aiortc.rtcrtpreceiver)
    receiver_globals["JitterBuffer"] = (_OneFrameAudioJitterBuffer if like_a_browser
                                        else _ShortAudioJitterBuffer)


AudioSink = Callable[[bytes, int], None]
"""(Opus payload, RTP timestamp) of each inbound audio frame, in sequence order."""


def receive_audio_payloads(pc: RTCPeerConnection, track: MediaStreamTrack,
                           sink: AudioSink) -> bool:
    """Hand ``track``'s Opus payloads to ``sink`` in the event loop, as its
    receiver's jitter buffer releases them, instead of to aiortc's decoder
    thread (which then idles until the receiver stops, and still ends the
    track then). False, and aiortc's path unchanged, when the track's receiver
    is not an audio one built with ``_ShortAudioJitterBuffer``
    (``short_audio_jitter()`` must run before its transceiver exists)."""
    for receiver in pc.getReceivers():
        if receiver.track is track:
            buffer = vars(receiver).get("_RTCRtpReceiver__jitter_buffer")
            if isinstance(buffer, _ShortAudioJitterBuffer) and not buffer._is_video:
                buffer.sink = sink
                return True
            return False
    return False


# ---------------------------------------------------------------- restart


def aioice_connection(transport: RTCIceTransport) -> Connection:
    """The aioice connection under an aiortc ICE transport (aiortc keeps it private)."""
    conn: Connection = transport._connection
    return conn


def set_local_credentials(conn: Connection, username: str, password: str) -> None:
    """Replace a connection's own ufrag and password (aioice has no setter):
    aiortc writes them into the next offer or answer."""
    conn._local_username = username
    conn._local_password = password


def accept_remote_candidates(transport: RTCIceTransport) -> None:
    """Let aiortc pass remote candidates to aioice again after an ICE restart.

    aiortc ignores remote candidates once its gatherer saw the end of the
    first description's; without this a restarted controlling agent never
    pairs the new answer's candidates and waits for the other side's next
    consent check to learn a peer-reflexive one.
    """
    transport.iceGatherer._remote_candidates_end = False


def restart_ice(
    conn: Connection,
    *,
    local_username: str,
    local_password: str,
    remote_username: str,
    remote_password: str,
) -> asyncio.Task[bool] | None:
    """ICE restart on a live aioice connection (aioice has none).

    New credentials on both sides; the old check list and learned candidates
    are forgotten; the nominated pair keeps carrying media until a check with
    the new credentials nominates a pair. For a controlling agent (the client)
    a task runs the new checks and returns whether a pair was nominated; the
    controlled side (the transceiver) needs none: the client's checks trigger
    ours. Remote candidates for the controlling side are added by aiortc
    afterwards from the new answer.
    """
    for pair in conn._check_list:
        if pair.task is not None:
            pair.task.cancel()
    conn._check_list = []
    conn._nominating.clear()
    conn._remote_candidates = []
    conn._remote_candidates_end = False
    set_local_credentials(conn, local_username, local_password)
    conn.remote_username = remote_username
    conn.remote_password = remote_password
    conn._check_list_done = False
    conn._check_list_state = asyncio.Queue()
    if not conn.ice_controlling:
        return None
    return asyncio.create_task(_controlling_checks(conn))


async def _controlling_checks(conn: Connection, timeout: float = 10.0) -> bool:
    """Run checks (aggressive nomination, as aioice does) until one pair is nominated."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    started: set[int] = set()
    while loop.time() < deadline and not conn._closing:
        if any(p.nominated for p in conn._check_list):
            return True
        for pair in conn._check_list:
            if id(pair) not in started and pair.state in (
                CandidatePair.State.FROZEN,
                CandidatePair.State.WAITING,
            ):
                started.add(id(pair))
                conn.check_state(pair, CandidatePair.State.WAITING)
                conn.check_start_task(pair)
                break
        await asyncio.sleep(0.02)
    return False
