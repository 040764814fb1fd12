# SPDX-License-Identifier: Apache-2.0
"""The ICE-TCP front (orchestrator/tcpfront.py): framing, the first frame, limits,
routes, config, stats, and one front on loopback with a UDP echo for a transceiver."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest

from lab import stun
from orchestrator import tcpfront as tf
from tests.support import until_async
from transceiver.ice import RelaySpec, parse_relay, relay_candidates, tcp_candidates
from voxrelay import token
from voxrelay.config import Config, ConfigError, RelayConfig, TcpFrontConfig, validate

KEY = bytes(range(16))
NOW = 1_700_000_000


# --- the first frame ---------------------------------------------------------------


def test_username_token_from_a_binding_request() -> None:
    ufrag = token.mint(KEY, key_id=1, transceiver_id=7, port=40000, now=NOW)
    assert tf.stun_username_token(stun.ice_binding_request(f"{ufrag}:abcd", before=3)) == ufrag
    assert tf.stun_username_token(memoryview(stun.binding_request(ufrag))) == ufrag


@pytest.mark.parametrize(("data", "reason", "message"), [
    (b"\x16\xfe\xfd" + b"\0" * 30, "not_stun", "first frame is not STUN (no magic cookie)"),
    (b"\x00\x01\x00\x00", "not_stun", "first frame is 4 bytes, shorter than a STUN header"),
    (stun.message(length_delta=4), "not_stun", "STUN length 4 does not match the frame's 0"),
    (stun.message(cookie=0x01020304), "not_stun", "first frame is not STUN (no magic cookie)"),
    (stun.message(msg_type=0x0101), "not_binding_request",
     "first frame is STUN type 0x0101, not a Binding Request"),
    (stun.message([(stun.ATTR_PRIORITY, b"\0\0\0\1")]), "no_username",
     "Binding Request has no USERNAME"),
    (stun.message([(stun.ATTR_USERNAME, b":cli")]), "no_username",
     "USERNAME has no server ufrag"),
    (stun.message([(stun.ATTR_PRIORITY, b"\0\0\0\1")] * 16 + [(stun.ATTR_USERNAME, b"a:b")]),
     "no_username", "Binding Request has no USERNAME"),
])
def test_first_frame_refusals(data: bytes, reason: str, message: str) -> None:
    with pytest.raises(tf.Refused) as err:
        tf.stun_username_token(data)
    assert (err.value.reason, str(err.value)) == (reason, message)


def test_attribute_overrunning_the_message() -> None:
    good = stun.message([(stun.ATTR_USERNAME, b"abcd:efgh")])
    bad = good[:22] + struct.pack(">H", 200) + good[24:]
    with pytest.raises(tf.Refused, match="^STUN attribute 0x0006 overruns the message$"):
        tf.stun_username_token(bad)


# --- framing -----------------------------------------------------------------------


def feed(buf: tf.FrameBuffer, data: bytes) -> list[bytes]:
    """Write ``data`` into ``buf`` as a socket would (in what pieces fit) and take the frames."""
    out: list[bytes] = []
    while data:
        room = buf.writable()
        n = min(len(room), len(data))
        room[:n] = data[:n]
        buf.filled(n)
        data = data[n:]
        while (f := buf.next_frame()) is not None:
            out.append(bytes(f))
            buf.consume()
    return out


def test_frames_split_and_joined_across_reads() -> None:
    buf = tf.FrameBuffer(100)
    stream = b"".join(tf.frame(bytes([i]) * (i + 1)) for i in range(60))
    got: list[bytes] = []
    for cut in range(0, len(stream), 7):  # 7-byte reads: prefixes split, many frames per buffer
        got += feed(buf, stream[cut:cut + 7])
    assert got == [bytes([i]) * (i + 1) for i in range(60)]
    assert len(buf) == 0


def test_whole_frames_never_move() -> None:
    buf = tf.FrameBuffer(100)
    first = buf.writable()
    assert feed(buf, tf.frame(b"x" * 100)) == [b"x" * 100]
    # consumed to empty: the next read lands at the start again
    assert buf.writable().obj is first.obj and len(buf.writable()) == len(first)


def test_partial_frame_is_kept_through_compaction() -> None:
    buf = tf.FrameBuffer(50)
    stream = tf.frame(b"a" * 50) + tf.frame(b"b" * 50) + tf.frame(b"c" * 50)
    assert feed(buf, stream[:80]) == [b"a" * 50]
    assert feed(buf, stream[80:]) == [b"b" * 50, b"c" * 50]


@pytest.mark.parametrize(("data", "reason", "message"), [
    (b"\xff\xff", "frame_too_large", "frame of 65535 bytes is over the 4096-byte cap"),
    (b"\x10\x01", "frame_too_large", "frame of 4097 bytes is over the 4096-byte cap"),
    (b"\x00\x00", "bad_framing", "zero-length frame"),
])
def test_bad_length_prefixes(data: bytes, reason: str, message: str) -> None:
    buf = tf.FrameBuffer(4096)
    with pytest.raises(tf.Refused) as err:
        feed(buf, data)
    assert (err.value.reason, str(err.value)) == (reason, message)


def test_frame_helper_refuses_what_cannot_be_framed() -> None:
    assert tf.frame(b"abc") == b"\x00\x03abc"
    with pytest.raises(ValueError, match="^frame payload of 65536 bytes is over 65535$"):
        tf.frame(b"\0" * 65536)


# --- limits and routes ----------------------------------------------------------------


def test_limits_per_source_total_and_token() -> None:
    limits = tf.Limits(total=3, per_source=2, per_token=1)
    assert limits.admit("a") is None and limits.admit("a") is None
    assert limits.admit("a") == "source_limit"
    assert limits.admit("b") is None
    assert limits.admit("c") == "total_limit"
    limits.release("a")
    assert limits.admit("c") is None
    assert limits.admit_token("t") and not limits.admit_token("t")
    limits.release_token("t")
    assert limits.admit_token("t")
    for source in ("a", "b", "c"):
        limits.release(source)
    assert limits.open == 0 and limits.sources == {}


def routes(keys: dict[int, bytes] | None = None,
           txrs: dict[int, tuple[str, str]] | None = None) -> tf.Routes:
    tables = (keys if keys is not None else {1: KEY},
              txrs if txrs is not None else {7: ("10.0.0.2", "active")})
    return tf.Routes(lambda: tables)


def test_route_of_a_valid_token() -> None:
    ufrag = token.mint(KEY, key_id=1, transceiver_id=7, port=40123)
    assert routes().route(ufrag) == tf.Route(7, "10.0.0.2", 40123)


@pytest.mark.parametrize(("mint_args", "tables", "reason"), [
    ({"key_id": 2}, {}, "token_unknown_key"),
    ({"key": bytes(16)}, {}, "token_bad_mac"),
    ({"ttl": 1, "now": NOW}, {}, "token_expired"),
    ({"transceiver_id": 8}, {}, "transceiver_unknown"),
    ({}, {"txrs": {7: ("10.0.0.2", "draining")}}, "transceiver_draining"),
])
def test_route_refusals(mint_args: dict[str, object], tables: dict[str, object],
                        reason: str) -> None:
    args: dict[str, object] = {"key_id": 1, "transceiver_id": 7, "port": 40000, **mint_args}
    key = args.pop("key", KEY)
    ufrag = token.mint(key, **args)  # type: ignore[arg-type]
    with pytest.raises(tf.Refused) as err:
        routes(**tables).route(ufrag)  # type: ignore[arg-type]
    assert err.value.reason == reason


def test_route_of_a_malformed_token_and_of_no_relay() -> None:
    with pytest.raises(tf.Refused) as err:
        routes().route("short")
    assert err.value.reason == "token_malformed"

    def unreadable() -> tf.RouteTables:
        raise OSError("relay 'x' is not loaded")

    with pytest.raises(tf.Refused, match="^the relay's maps cannot be read: relay 'x' is not loaded$"):
        tf.Routes(unreadable).route("A" * 32)


def test_routes_are_reread_after_max_age_only() -> None:
    now = [0.0]
    reads = []

    def read() -> tf.RouteTables:
        reads.append(now[0])
        return {1: KEY}, {7: ("10.0.0.2", "active")}

    r = tf.Routes(read, max_age=1.0, clock=lambda: now[0])
    ufrag = token.mint(KEY, key_id=1, transceiver_id=7, port=40000)
    for t in (0.0, 0.5, 0.99, 1.0, 1.5, 2.2):
        now[0] = t
        r.route(ufrag)
    assert reads == [0.0, 1.0, 2.2]


def test_udp_ports_split_between_workers_and_reused_last() -> None:
    a = tf.UdpPorts("127.0.0.1", 61000, 61009, index=0, workers=2)
    b = tf.UdpPorts("127.0.0.1", 61000, 61009, index=1, workers=2)
    assert len(a) == len(b) == 5
    sock = a.bind()
    assert sock is not None
    try:
        assert sock.getsockname()[1] == 61000
        a.release(61000)
        assert list(a._free)[-1] == 61000
    finally:
        sock.close()


# --- config --------------------------------------------------------------------------


@pytest.mark.parametrize(("front", "relay", "message"), [
    ({"udp_port_min": 50000, "udp_port_max": 50010}, {},
     ("[tcpfront] UDP port range 50000..50010 overlaps [relay] port_min..port_max "
     "20000..59999 (the XDP flows' ports)")),
    ({"udp_port_min": 3000, "udp_port_max": 4000}, {},
     "[tcpfront] UDP port range 3000..4000 contains [relay] public_port 3478"),
    ({"udp_port_min": 62000, "udp_port_max": 61000}, {},
     "[tcpfront] UDP port range 62000..61000 must satisfy 1024 <= min <= max <= 65535"),
    ({"port": 0}, {}, "[tcpfront] port 0 is outside 1..65535"),
    ({"max_frame_bytes": 65535}, {}, "[tcpfront] max_frame_bytes 65535 is outside 20..16384"),
    ({"max_connections": 0}, {}, "[tcpfront] max_connections must be at least 1, got 0"),
    ({"max_connections": 4}, {},
     "[tcpfront] max_connections_per_source must not exceed max_connections"),
    ({"first_frame_seconds": 0.0}, {}, "[tcpfront] first_frame_seconds must be > 0, got 0.0"),
    ({"workers": 65}, {}, "[tcpfront] workers 65 is over 64"),
])
def test_tcpfront_config_errors(front: dict[str, object], relay: dict[str, object],
                                message: str) -> None:
    config = Config(relay=RelayConfig(**relay), tcpfront=TcpFrontConfig(**front))  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as err:
        validate(config)
    assert str(err.value) == message


def test_default_config_is_valid_and_the_port_must_be_admitted() -> None:
    config = validate(Config())
    with pytest.raises(ConfigError, match=r"^\[tcpfront\] port 443 is not in \[relay\] "
                                          r"public_tcp_ports \[\]: the relay's input filter "
                                          r"would drop every connection$"):
        tf.check_runnable(config.relay, config.tcpfront)
    tf.check_runnable(RelayConfig(public_tcp_ports=[443]), config.tcpfront)


# --- the answer's TCP candidates -----------------------------------------------------------


def test_tcp_candidate_after_every_udp_one() -> None:
    relays = [parse_relay("203.0.113.1:3478 tcp=443"), parse_relay("203.0.113.2:3478"),
              parse_relay("203.0.113.3:3478 tcp=443")]
    cands = relay_candidates(relays)
    assert [c.to_sdp().split(" ", 2)[2] for c in cands] == [
        "udp 2130706431 203.0.113.1 3478 typ host",
        "udp 2130706175 203.0.113.2 3478 typ host",
        "udp 2130705919 203.0.113.3 3478 typ host",
        "tcp 2124414975 203.0.113.1 443 typ host tcptype passive",
        "tcp 2124414463 203.0.113.3 443 typ host tcptype passive",
    ]
    assert max(c.priority for c in cands if c.transport == "tcp") < \
        min(c.priority for c in cands if c.transport == "udp")
    assert tcp_candidates([RelaySpec("203.0.113.9", 3478)]) == []


def test_tcp_relay_option_errors() -> None:
    with pytest.raises(ValueError, match="^relay tcp 'x' is not a port in 1..65535$"):
        parse_relay("203.0.113.1:3478 tcp=x")
    with pytest.raises(ValueError, match="^relay tcp '0' is not a port in 1..65535$"):
        parse_relay("203.0.113.1:3478 tcp=0")


# --- stats ---------------------------------------------------------------------------------


def test_stats_file_rows_are_summed(tmp_path: Path) -> None:
    path = tmp_path / "front.stats"
    stats = tf.StatsFile(path, workers=2, create=True)
    try:
        a, b = stats.row(0), stats.row(1)
        a[tf.I_ACCEPTED] += 3
        b[tf.I_ACCEPTED] += 4
        b[tf.I_REFUSED["slowloris"]] += 1
        got = tf.read_stats(path)
        assert got["accepted"] == 7 and got["refused_slowloris"] == 1
        assert list(got) == list(tf.COUNTERS)
        a.release()
        b.release()
    finally:
        stats.close()
    path.write_bytes(b"nope" + bytes(40))
    with pytest.raises(ValueError, match="not a TCP front stats file"):
        tf.read_stats(path)


# --- one front on loopback --------------------------------------------------------------


class Echo(asyncio.DatagramProtocol):
    """The 'transceiver': echoes every datagram, remembering what it got and from where."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple[str, int]]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] - a datagram endpoint's

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.append((data, addr))
        assert self.transport is not None
        self.transport.sendto(b"echo:" + data, addr)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, payload: bytes) -> None:
        self.writer.write(tf.frame(payload))
        await self.writer.drain()

    async def recv(self) -> bytes:
        n = int.from_bytes(await self.reader.readexactly(2), "big")
        return await self.reader.readexactly(n)

    async def closed(self) -> bool:
        """True when the front closed the connection (EOF or reset)."""
        try:
            return await asyncio.wait_for(self.reader.read(), 5) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def front(tmp_path: Path):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    transport, echo = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    echo_port = transport.get_extra_info("sockname")[1]
    stats = tf.StatsFile(tmp_path / "front.stats", 1, create=True)
    config = TcpFrontConfig(port=0, udp_port_min=61500, udp_port_max=61509,
                            max_connections=8, max_connections_per_source=4,
                            max_connections_per_token=2, first_frame_seconds=30,
                            idle_seconds=30, max_frame_bytes=1500)
    server = tf.TcpFront(config, ("127.0.0.1", 0), "127.0.0.1",
                         routes(txrs={7: ("127.0.0.1", "active"), 8: ("127.0.0.1", "draining")}),
                         stats.row(0), listen6=("::1", 0))
    await server.start()
    clients: list[Client] = []

    async def connect(host: str = "127.0.0.1") -> Client:
        port = server.port6 if ":" in host else server.port
        reader, writer = await asyncio.open_connection(host, port)
        clients.append(Client(reader, writer))
        return clients[-1]

    def counters() -> dict[str, int]:
        return tf.read_stats(tmp_path / "front.stats")

    def ufrag(**kw: int) -> str:
        args = {"key_id": 1, "transceiver_id": 7, "port": echo_port, **kw}
        return token.mint(KEY, **args)

    yield server, echo, connect, counters, ufrag
    for c in clients:
        c.close()
    await server.stop()
    transport.close()
    stats.close()


async def test_a_verified_connection_is_carried_both_ways(front) -> None:  # type: ignore[no-untyped-def]
    server, echo, connect, counters, ufrag = front
    client = await connect()
    first = stun.binding_request(ufrag())
    await client.send(first)
    assert await client.recv() == b"echo:" + first
    await client.send(b"\x17\xfe\xfd dtls")
    assert await client.recv() == b"echo:\x17\xfe\xfd dtls"
    # one relay-side UDP port from the range for the whole connection
    sources = {addr for _, addr in echo.got}
    assert len(sources) == 1 and 61500 <= next(iter(sources))[1] <= 61509
    got = counters()
    assert (got["accepted"], got["established"], got["open"]) == (1, 1, 1)
    assert got["frames_to_transceiver"] == 2 and got["frames_to_client"] == 2
    assert got["bytes_to_client"] == 2 * 5 + len(first) + 8
    client.close()
    await _until(lambda: counters()["open"] == 0)
    assert counters()["closed"] == 1 and len(server.ports) == 10


async def _until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    from tests.support import until_async

    await until_async(predicate, timeout=timeout)


@pytest.mark.parametrize(("payload", "reason"), [
    (b"GET / HTTP/1.1\r\n\r\n", "not_stun"),
    (stun.message(msg_type=0x0101), "not_binding_request"),
    (stun.binding_request("A" * 32), "token_malformed"),
    (None, "bad_token"),
    (None, "draining"),
])
async def test_refused_first_frames_open_nothing(front, payload: bytes | None,  # type: ignore[no-untyped-def]
                                                 reason: str) -> None:
    _server, echo, connect, counters, ufrag = front
    if reason == "bad_token":
        payload, reason = stun.binding_request(token.mint(bytes(16), key_id=1, transceiver_id=7,
                                                          port=40000)), "token_bad_mac"
    elif reason == "draining":
        payload, reason = stun.binding_request(ufrag(transceiver_id=8)), "transceiver_draining"
    client = await connect()
    assert payload is not None
    await client.send(payload)
    assert await client.closed()
    await _until(lambda: counters()["open"] == 0)
    got = counters()
    assert got[f"refused_{reason}"] == 1 and got["established"] == 0
    assert echo.got == []


async def test_oversized_zero_and_slow_connections_are_refused(front) -> None:  # type: ignore[no-untyped-def]
    server, echo, connect, counters, ufrag = front
    big = await connect()
    big.writer.write(b"\xff\xff" + b"\0" * 100)
    zero = await connect()
    zero.writer.write(b"\x00\x00")
    server.config.first_frame_seconds = 0.4
    slow = await connect()
    slow.writer.write(tf.frame(stun.binding_request(ufrag()))[:30])  # never completes
    for c in (big, zero, slow):
        assert await c.closed()
    got = counters()
    assert got["refused_frame_too_large"] == 1 and got["refused_bad_framing"] == 1
    assert got["refused_slowloris"] == 1 and echo.got == []
    # an established connection is closed too by an oversized frame, after its first
    ok = await connect()
    await ok.send(stun.binding_request(ufrag()))
    await ok.recv()
    ok.writer.write(b"\x05\xdd" + b"\0" * 1501)
    assert await ok.closed()
    assert counters()["refused_frame_too_large"] == 2


async def test_source_total_and_token_limits(front) -> None:  # type: ignore[no-untyped-def]
    _server, _echo, connect, counters, ufrag = front
    same = ufrag()
    conns = [await connect() for _ in range(4)]
    extra = await connect()  # the fifth open from 127.0.0.1: per-source limit 4
    assert await extra.closed()
    assert counters()["refused_source_limit"] == 1
    await conns[0].send(stun.binding_request(same))
    await conns[1].send(stun.binding_request(same))
    await conns[2].send(stun.binding_request(same))  # a third with one token: refused
    assert await conns[2].closed()
    got = counters()
    assert got["refused_token_limit"] == 1 and got["established"] == 2
    # an early close before any frame is counted as incomplete
    conns[3].close()
    await _until(lambda: counters()["refused_incomplete"] == 1)


async def test_udp_side_back_pressure_resumes(front, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    server, _echo, connect, counters, ufrag = front
    client = await connect()
    await client.send(stun.binding_request(ufrag()))
    await client.recv()
    conn = next(iter(server.established))
    real = conn.udp
    calls = {"n": 0}

    class Flaky:
        """The socket refuses one send with EAGAIN, then takes everything."""

        def send(self, data: memoryview) -> int:
            calls["n"] += 1
            if calls["n"] == 1:
                raise BlockingIOError
            return real.send(data)

        def fileno(self) -> int:
            return real.fileno()

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(real, name)

    conn.udp = Flaky()
    for i in range(3):
        await client.send(f"frame {i}".encode())
    replies = [await client.recv() for _ in range(3)]
    assert replies == [f"echo:frame {i}".encode() for i in range(3)]
    assert counters()["udp_paused"] == 1 and not conn.udp_blocked
    conn.udp = real


async def test_datagrams_over_the_frame_cap_are_dropped_and_counted(front) -> None:  # type: ignore[no-untyped-def]
    _server, _echo, connect, counters, ufrag = front
    client = await connect()
    await client.send(stun.binding_request(ufrag()))
    await client.recv()
    await client.send(b"x" * 1500)  # its echo, "echo:" + 1500 bytes, is over the 1500 cap
    await client.send(b"small")
    assert await client.recv() == b"echo:small"
    assert counters()["udp_too_large"] == 1


async def test_a_burst_of_replies_comes_back_in_order(front) -> None:  # type: ignore[no-untyped-def]
    _server, _echo, connect, _counters, ufrag = front
    client = await connect()
    await client.send(stun.binding_request(ufrag()))
    await client.recv()
    client.writer.write(b"".join(tf.frame(f"n{i}".encode()) for i in range(200)))
    replies = [await client.recv() for _ in range(200)]
    assert replies == [f"echo:n{i}".encode() for i in range(200)]


def test_routes_of_a_relay_that_is_not_loaded_refuse_no_relay() -> None:
    with pytest.raises(tf.Refused) as err:
        tf.pinned_routes("vx-no-such-relay").route("A" * 32)
    assert err.value.reason == "no_relay"
    assert "vx-no-such-relay" in str(err.value)


def test_cli_runs_workers_on_one_port_and_sums_their_counters(tmp_path: Path) -> None:
    import json
    import re
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.support import until

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stats = tmp_path / "front.stats"
    config = tmp_path / "voxrelay.toml"
    config.write_text(
        f'[relay]\nname = "vx-unit-none"\npublic_address = "127.0.0.1"\n'
        f'private_address = "127.0.0.1"\npublic_tcp_ports = [{port}]\n'
        f'[tcpfront]\nport = {port}\nworkers = 2\nudp_port_min = 61700\nudp_port_max = 61709\n'
        f'stats_file = "{stats}"\nmetrics_listen = "127.0.0.1:0"\n')
    proc = subprocess.Popen([sys.executable, "-m", "voxrelay.cli", "tcpfront", "run",
                             "--config", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        metrics_port = int(re.search(r"metrics on port (\d+)", line).group(1))  # type: ignore[union-attr]

        def children() -> list[int]:
            out = []
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == proc.pid:
                    out.append(int(stat.parent.name))
            return out

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        until(lambda: len(children()) == 2 and listening(), timeout=20,
              what="two workers listening")
        for _ in range(6):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(tf.frame(b"GET / HTTP/1.1\r\n\r\n"))
                s.settimeout(5)
                try:
                    assert s.recv(10) == b""
                except ConnectionResetError:
                    pass  # refused with an abort: a reset is as good as an EOF
        until(lambda: tf.read_stats(stats)["refused_not_stun"] == 6, timeout=5,
              what="six refusals summed over the workers")
        got = tf.read_stats(stats)
        # the readiness probes closed before a frame: "incomplete"
        assert got["accepted"] == 6 + got["refused_incomplete"] and got["established"] == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as response:
            text = response.read().decode()
        assert 'voxrelay_tcpfront_refused_total{reason="not_stun"} 6.0' in text
        workers = children()
        assert len(workers) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        time.sleep(0.2)
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
        assert json.dumps(got)  # counters are plain ints
    finally:
        if proc.poll() is None:
            proc.kill()  # its workers follow (PR_SET_PDEATHSIG)
            proc.wait()


async def test_a_congested_tcp_writer_pauses_the_udp_side_and_resumes(front) -> None:  # type: ignore[no-untyped-def]
    server, _echo, _connect, counters, ufrag = front
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, before connect
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    client = Client(*await asyncio.open_connection(sock=sock, limit=2048))
    await client.send(stun.binding_request(ufrag()))
    await client.recv()
    conn = next(iter(server.established))
    assert conn.transport is not None
    conn.transport.set_write_buffer_limits(high=8192)
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    # The client sends and does not read: its receive window, then the
    # front's write buffer, fill with echoes, and the front stops reading UDP.
    payload = b"p" * 1400
    for _ in range(400):
        client.writer.write(tf.frame(payload))
    from tests.support import until_async

    await until_async(lambda: counters()["tcp_paused"] >= 1, timeout=10,
                      what="the front to pause its UDP side")
    assert conn.tcp_blocked
    # Reading again drains the writer, the UDP side resumes, and the call goes on.
    # Read until it resumes (the writer holds up to a burst of frames past its
    # high-water mark, so a fixed count may not bring it below the low one).
    got = 0
    while conn.tcp_blocked:
        assert got < 400, "the UDP side never resumed"
        assert await asyncio.wait_for(client.recv(), 10) == b"echo:" + payload
        got += 1
    while counters()["frames_to_client"] - 1 > got:  # what the kernel did not drop
        await client.recv()
        got += 1
    await client.send(b"after")
    while (reply := await client.recv()) != b"echo:after":
        assert reply == b"echo:" + payload
    client.close()


def test_workers_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    import signal
    import socket
    import subprocess
    import sys

    from tests.support import until

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "voxrelay.toml"
    config.write_text(
        f'[relay]\nname = "vx-unit-none"\npublic_address = "127.0.0.1"\n'
        f'private_address = "127.0.0.1"\npublic_tcp_ports = [{port}]\n'
        f'[tcpfront]\nport = {port}\nworkers = 2\nudp_port_min = 61710\nudp_port_max = 61719\n'
        f'stats_file = "{tmp_path / "front.stats"}"\nmetrics_listen = ""\n')
    proc = subprocess.Popen([sys.executable, "-m", "voxrelay.cli", "tcpfront", "run",
                             "--config", str(config)])

    def children() -> list[int]:
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == proc.pid:
                out.append(int(stat.parent.name))
        return out

    workers: list[int] = []
    try:
        until(lambda: len(children()) == 2, timeout=20, what="two workers")
        workers = children()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    until(lambda: not [pid for pid in workers if Path(f"/proc/{pid}/stat").exists()
                       and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"],
          timeout=10, what="the workers to exit after their supervisor was killed")


def test_stats_command_table_and_json(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from voxrelay.cli import cli

    path = tmp_path / "front.stats"
    config = tmp_path / "voxrelay.toml"
    config.write_text(f'[tcpfront]\nstats_file = "{path}"\n')
    runner = CliRunner()
    missing = runner.invoke(cli, ["tcpfront", "stats", "--config", str(config)])
    assert missing.exit_code == 1
    assert f"no TCP front stats at {path}: is `voxrelay tcpfront run` running?" in missing.output
    stats = tf.StatsFile(path, workers=1, create=True)
    try:
        row = stats.row(0)
        row[tf.I_ACCEPTED] += 5
        row[tf.I_REFUSED["token_bad_mac"]] += 2
        row.release()
    finally:
        stats.close()
    text = runner.invoke(cli, ["tcpfront", "stats", "--config", str(config)])
    assert text.exit_code == 0, text.output
    lines = dict(line.split() for line in text.output.splitlines()[1:])
    assert (lines["accepted"], lines["refused_token_bad_mac"]) == ("5", "2")
    assert "refused_slowloris" not in lines  # zero refusals only with --all
    assert "refused_slowloris" in runner.invoke(
        cli, ["tcpfront", "stats", "--config", str(config), "--all"]).output
    data = json.loads(runner.invoke(cli, ["tcpfront", "stats", "--config", str(config),
                                          "--json"]).output)
    assert data["accepted"] == 5 and data["refused_slowloris"] == 0


# --- the front's counters beside the relay's: maps stats, relay status, /metrics ---------


def _front_stats_file(path: Path) -> None:
    stats = tf.StatsFile(path, workers=2, create=True)
    try:
        for index, (accepted, frames) in enumerate(((7, 100), (5, 20))):
            row = stats.row(index)
            row[tf.I_ACCEPTED] += accepted
            row[tf.I_ESTABLISHED] += 2
            row[tf.I_OPEN] += 1
            row[tf.I_FRAMES_TX] += frames
            row[tf.I_FRAMES_RX] += frames + 1
            row[tf.I_UDP_BIG] += 1
            row[tf.I_REFUSED["token_bad_mac"]] += 3
            row[tf.I_REFUSED["slowloris"]] += index
            row.release()
    finally:
        stats.close()


def test_summary_groups_every_reason() -> None:
    got = tf.summary({"accepted": 4, "refused_slowloris": 2, "udp_paused": 1,
                      "refused_from_a_newer_build": 5})
    assert got["connections"] == {"accepted": 4, "established": 0, "closed": 0,
                                  "idle_closed": 0, "open": 0}
    assert set(got["refused"]) == set(tf.REFUSALS) | {"from_a_newer_build"}
    assert got["refused"]["slowloris"] == 2 and got["refused"]["from_a_newer_build"] == 5
    assert got["backpressure"] == {"udp_full": 1, "tcp_full": 0}
    assert got["dropped"] == {"udp_send_error": 0, "udp_too_large": 0}


def test_orchestrator_metrics_carry_the_front_with_reason_labels_only(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from orchestrator.metrics import OrchestratorMetrics
    from tests.unit.test_metrics_service import samples

    path = tmp_path / "front.stats"
    absent = samples(generate_latest(OrchestratorMetrics(tcpfront_stats=path).registry).decode())
    assert not [name for name, _ in absent if name.startswith("voxrelay_tcpfront")]
    _front_stats_file(path)
    got = samples(generate_latest(OrchestratorMetrics(tcpfront_stats=path).registry).decode())
    assert got[("voxrelay_tcpfront_connections_total", (("event", "accepted"),))] == 12
    assert got[("voxrelay_tcpfront_connections_open", ())] == 2
    assert got[("voxrelay_tcpfront_frames_total", (("direction", "to_transceiver"),))] == 120
    assert got[("voxrelay_tcpfront_frames_total", (("direction", "to_client"),))] == 122
    assert got[("voxrelay_tcpfront_refused_total", (("reason", "token_bad_mac"),))] == 6
    assert got[("voxrelay_tcpfront_refused_total", (("reason", "slowloris"),))] == 1
    assert got[("voxrelay_tcpfront_refused_total", (("reason", "no_relay"),))] == 0
    assert got[("voxrelay_tcpfront_dropped_total", (("reason", "udp_too_large"),))] == 2
    assert got[("voxrelay_tcpfront_backpressure_total", (("reason", "tcp_full"),))] == 0
    labels = {key for name, label in got if name.startswith("voxrelay_tcpfront")
              for key, _ in label}
    assert labels == {"event", "reason", "direction"}
    assert {value for name, label in got if name == "voxrelay_tcpfront_refused_total"
            for _, value in label} == set(tf.REFUSALS)


def test_maps_stats_and_relay_status_show_the_front(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json

    from click.testing import CliRunner

    from orchestrator import loader
    from orchestrator.cli import common as ocli
    from orchestrator.cli import relay as relay_cli
    from tests.unit.orch_fakes import FakeRelayView
    from voxrelay.cli import cli

    view = FakeRelayView()
    view.counters = {"rx_total": 10, "fwd_new_flow": 2}
    monkeypatch.setattr(ocli, "open_relay", lambda name: view)
    monkeypatch.setattr(relay_cli, "require_bpf", lambda what: None)
    monkeypatch.setattr(loader, "status", lambda name, netns=None: loader.RelayStatus(
        name, "/sys/fs/bpf/voxrelay/" + name, None, True, 7, "relay", "ab", "native"))
    path = tmp_path / "front.stats"
    config = tmp_path / "voxrelay.toml"
    config.write_text(f'[tcpfront]\nstats_file = "{path}"\n')
    runner = CliRunner()

    def run(*args: str):  # type: ignore[no-untyped-def]
        out = runner.invoke(cli, [*args, "--config", str(config)], catch_exceptions=False)
        assert out.exit_code == 0, out.output
        return out.output

    # No front has run here: nothing about it in the tables, null in JSON.
    assert "ICE-TCP" not in run("maps", "stats") and "ICE-TCP" not in run("relay", "status")
    assert json.loads(run("maps", "stats", "--json"))["tcpfront"] is None
    assert json.loads(run("relay", "status", "--json"))["tcpfront"] is None
    _front_stats_file(path)
    text = run("maps", "stats")
    front = text[text.index(f"ICE-TCP front ({path}):"):].splitlines()
    rows = dict(line.split() for line in front[2:])
    assert rows["connections.accepted"] == "12" and rows["connections.open"] == "2"
    assert rows["frames.to_transceiver"] == "120" and rows["frames.to_client"] == "122"
    assert rows["refused.token_bad_mac"] == "6" and rows["dropped.udp_too_large"] == "2"
    assert "refused.no_relay" not in rows  # zero reasons only with --all
    assert "refused.no_relay" in run("maps", "stats", "--all")
    data = json.loads(run("maps", "stats", "--json"))
    assert data["counters"] == view.counters
    assert data["tcpfront"]["refused"]["slowloris"] == 1
    assert data["tcpfront"]["frames"] == {"to_transceiver": 120, "to_client": 122}
    status = run("relay", "status")
    assert (f"ICE-TCP front: 2 open; 12 accepted, 4 established, 7 refused (token_bad_mac 6, "
            f"slowloris 1); frames 120 to transceivers, 122 to clients, 2 dropped ({path})"
            in status), status
    assert json.loads(run("relay", "status", "--json"))["tcpfront"]["connections"]["open"] == 2


async def test_an_ipv6_client_is_carried_like_an_ipv4_one(front) -> None:  # type: ignore[no-untyped-def]
    """The front's IPv6 VIP ([relay] public_address6): the same token check, the
    same UDP to the transceiver (IPv4 here) and back."""
    _server, _echo, connect, counters, ufrag = front
    client = await connect("::1")
    first = stun.binding_request(ufrag())
    await client.send(first)
    assert await client.recv() == b"echo:" + first
    assert counters()["established"] == 1
    bad = await connect("::1")
    await bad.send(stun.binding_request(ufrag()[:-2] + "zz"))
    assert await bad.closed()


async def test_the_per_source_limit_counts_an_ipv6_client_by_its_64(front) -> None:  # type: ignore[no-untyped-def]
    server, _echo, connect, counters, _ufrag = front
    for _ in range(4):  # max_connections_per_source = 4
        await connect("::1")
    await _until(lambda: counters()["open"] == 4)
    fifth = await connect("::1")
    assert await fifth.closed()
    assert counters()["refused_source_limit"] == 1
    assert server.limits.sources == {"::/64": 4}


def test_source_key_is_the_address_or_the_ipv6_64() -> None:
    assert tf.source_key("192.0.2.7") == "192.0.2.7"
    assert tf.source_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert tf.source_key("2001:db8:1:2:ffff::9") == tf.source_key("2001:db8:1:2::1")
    assert tf.source_key("2001:db8:1:3::1") != tf.source_key("2001:db8:1:2::1")
    assert tf.source_key("?") == "?"


async def test_two_workers_on_one_ipv6_port_keep_one_sources_limit(tmp_path: Path) -> None:
    """Two workers (two fronts, as ``tcpfront run`` starts them) share one
    SO_REUSEPORT port on ::1: the IPv6 steering program sends all 12
    connections from ::1 to one of them, so 3 pass the per-source limit of 3,
    not 6."""
    stats = tf.StatsFile(tmp_path / "front.stats", 2, create=True)
    config = TcpFrontConfig(port=0, udp_port_min=61540, udp_port_max=61549,
                            max_connections_per_source=3, first_frame_seconds=60,
                            idle_seconds=60, max_frame_bytes=1500)
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    with socket.socket() as probe4:
        probe4.bind(("127.0.0.1", 0))
        port4 = probe4.getsockname()[1]
    workers = [tf.TcpFront(config, ("127.0.0.1", port4), "127.0.0.1", routes(), stats.row(i),
                           index=i, workers=2, listen6=("::1", port)) for i in range(2)]
    writers = []
    try:
        for w in workers:
            await w.start()
        for _ in range(12):
            writers.append((await asyncio.open_connection("::1", port))[1])
        await _until(lambda: tf.read_stats(tmp_path / "front.stats")["accepted"] == 12)
        got = tf.read_stats(tmp_path / "front.stats")
        assert got["refused_source_limit"] == 9 and got["open"] == 3, got
        assert sorted(len(w.limits.sources) for w in workers) == [0, 1]
    finally:
        for wr in writers:
            wr.close()
        for w in workers:
            await w.stop()
        stats.close()


def test_ipv6_steering_hashes_the_sources_64() -> None:
    import socket

    program = tf.source_steering_program(2, socket.AF_INET6)
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    loads = [k for code, _jt, _jf, k in insns if code == 0x20]
    # ld [net + 8] and ld [net + 12]: the first 64 bits of the IPv6 source
    assert loads == [(-0x100000 + 8) & 0xFFFFFFFF, (-0x100000 + 12) & 0xFFFFFFFF]
    assert insns[-1][0] == 0x16 and insns[-2] == (0x94, 0, 0, 2)  # ret A; A %= workers
    with pytest.raises(ValueError, match="neither AF_INET nor AF_INET6"):
        tf.source_steering_program(2, socket.AF_UNIX)


def test_source_steering_program_is_five_classic_bpf_instructions() -> None:
    program = tf.source_steering_program(3)
    assert len(program) == 5 * 8
    code, _jt, _jf, k = struct.unpack_from("=HBBI", program, 0)
    assert (code, k) == (0x20, (-0x100000 + 12) & 0xFFFFFFFF)  # ld [net + 12]: the source
    assert struct.unpack_from("=HBBI", program, 24) == (0x94, 0, 0, 3)  # A %= workers
    with pytest.raises(ValueError, match="workers 1 is outside 2..64"):
        tf.source_steering_program(1)


def test_one_source_lands_on_one_worker_so_its_limit_holds_across_workers(  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    import signal
    import socket
    import subprocess
    import sys

    from tests.support import until

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stats = tmp_path / "front.stats"
    config = tmp_path / "voxrelay.toml"
    config.write_text(
        f'[relay]\nname = "vx-unit-none"\npublic_address = "127.0.0.1"\n'
        f'private_address = "127.0.0.1"\npublic_tcp_ports = [{port}]\n'
        f'[tcpfront]\nport = {port}\nworkers = 2\nudp_port_min = 61720\nudp_port_max = 61729\n'
        f'max_connections_per_source = 3\nfirst_frame_seconds = 60.0\n'
        f'stats_file = "{stats}"\nmetrics_listen = ""\n')
    proc = subprocess.Popen([sys.executable, "-m", "voxrelay.cli", "tcpfront", "run",
                             "--config", str(config)])
    held: list[socket.socket] = []

    def listeners() -> int:  # one LISTEN row per worker's socket (SO_REUSEPORT)
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
        return sum(1 for r in rows if r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A")

    try:
        until(lambda: listeners() == 2, timeout=20, what="both workers listening")
        # 12 connections from one address: with the kernel's 4-tuple hash they
        # would spread over both workers and 6 would pass the limit of 3.
        for _ in range(12):
            held.append(socket.create_connection(("127.0.0.1", port)))
        until(lambda: tf.read_stats(stats)["accepted"] == 12, timeout=10, what="12 accepted")
        got = tf.read_stats(stats)
        assert got["refused_source_limit"] == 9, got
        assert got["open"] == 3, got
    finally:
        for s in held:
            s.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_fd_limit_is_raised_for_max_connections() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        got = tf.raise_fd_limit(TcpFrontConfig(max_connections=1000))
        assert got == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert got == (2064 if hard == resource.RLIM_INFINITY else min(2064, hard))
        # Already enough: left alone.
        assert tf.raise_fd_limit(TcpFrontConfig(max_connections=10)) == got
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_burst_of_connects_waits_in_the_accept_queue_while_the_worker_is_busy(front) -> None:  # type: ignore[no-untyped-def]
    """The listen backlog is ``LISTEN_BACKLOG``, not asyncio's 100: with the worker's
    loop busy (blocked here), 300 connects complete in the kernel's accept queue.
    A full queue drops the SYN, and that connect would reach the worker a second or
    more later, after slowloris had freed its source's slots."""
    server, _echo, _connect, counters, _ufrag = front
    burst = 300
    socks: list[socket.socket] = []
    try:
        for _ in range(burst):  # the loop cannot accept meanwhile: this blocks it
            socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=0.5))
    except TimeoutError:
        pytest.fail(f"connect {len(socks) + 1} of {burst} timed out: the accept queue was full")
    finally:
        for s in socks:
            s.close()
    assert len(socks) == burst
    await until_async(lambda: counters()["accepted"] == burst, timeout=10,
                      what="the worker accepting the whole burst")
