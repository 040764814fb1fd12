# SPDX-License-Identifier: Apache-2.0
"""voxrelay/addr.py: the one host:port parser, with exact messages.

The last tables keep the semantics of the five parsers it replaces: what each
caller accepted and refused, and (where a test of the caller asserts one) the
caller's exact message.
"""

from __future__ import annotations

from typing import Any

import pytest

from voxrelay.addr import HostPort, format_hostport, is_hostname, parse_hostport


@pytest.mark.parametrize(
    "value, kwargs, expected",
    [
        ("192.0.2.1:3478", {}, ("192.0.2.1", 3478)),
        ("[2001:db8::1]:3478", {}, ("2001:db8::1", 3478)),
        ("[fe80::1%eth0]:5", {}, ("fe80::1%eth0", 5)),
        ("relay.example:3478", {}, ("relay.example", 3478)),
        ("relay-1.example.:80", {}, ("relay-1.example.", 80)),
        ("localhost:1", {}, ("localhost", 1)),
        ("192.0.2.1:65535", {}, ("192.0.2.1", 65535)),
        ("192.0.2.1", {"default_port": 3478}, ("192.0.2.1", 3478)),
        ("[::1]", {"default_port": 3478}, ("::1", 3478)),
        ("relay.example", {"default_port": 3478}, ("relay.example", 3478)),
        ("192.0.2.1:9", {"default_port": 3478}, ("192.0.2.1", 9)),
        (":8080", {"default_host": "0.0.0.0"}, ("0.0.0.0", 8080)),
        ("127.0.0.1:0", {"allow_zero": True}, ("127.0.0.1", 0)),
        ("127.0.0.1", {"default_port": 0, "allow_zero": True}, ("127.0.0.1", 0)),
        ("203.0.113.5:3478", {"ipv4_only": True}, ("203.0.113.5", 3478)),
    ],
)
def test_accepts(value: str, kwargs: dict[str, Any], expected: tuple[str, int]) -> None:
    parsed = parse_hostport(value, **kwargs)
    assert parsed == expected
    assert isinstance(parsed, HostPort)
    assert (parsed.host, parsed.port) == expected


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        ("", {}, "'' must be HOST:PORT"),
        ("192.0.2.1", {}, "'192.0.2.1' must be HOST:PORT"),
        (":3478", {}, "':3478' must be HOST:PORT"),
        ("[::1", {}, "'[::1' must be HOST:PORT"),
        ("[::1]3478", {}, "'[::1]3478' must be HOST:PORT"),
        ("[]:3478", {"default_host": "::"}, "'[]:3478' must be HOST:PORT"),
        ("2001:db8::1", {"default_port": 3478},
         "'2001:db8::1': an IPv6 address needs brackets, [ADDR]:PORT"),
        ("[192.0.2.1]:5", {}, "address '192.0.2.1' is not an IPv6 address"),
        ("192.0.2.300:5", {}, "host '192.0.2.300' is not an IP address or a hostname"),
        ("-bad.example:5", {}, "host '-bad.example' is not an IP address or a hostname"),
        ("a b:5", {}, "host 'a b' is not an IP address or a hostname"),
        ("x:0", {}, "port '0' is not in 1..65535"),
        ("x:65536", {"allow_zero": True}, "port '65536' is not in 0..65535"),
        ("x:", {"default_port": 3478}, "port '' is not in 1..65535"),
        ("x:http", {}, "port 'http' is not in 1..65535"),
        ("x:+5", {}, "port '+5' is not in 1..65535"),
        ("x:\u00b2", {}, "port '\u00b2' is not in 1..65535"),
        ("relay.example:5", {"ipv4_only": True}, "address 'relay.example' is not an IPv4 address"),
        ("[::1]:5", {"ipv4_only": True}, "address '::1' is not an IPv4 address"),
        ("x", {"ipv4_only": True}, "'x' must be ADDR:PORT"),
        ("x", {"what": "[transceiver] listen"}, "[transceiver] listen 'x' must be HOST:PORT"),
        ("x:0", {"what": "relay"}, "relay port '0' is not in 1..65535"),
    ],
)
def test_refuses_with_exact_message(value: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_hostport(value, **kwargs)
    assert str(info.value) == message


def test_format_is_the_inverse() -> None:
    for value in ("192.0.2.1:3478", "[2001:db8::1]:3478", "relay.example:1"):
        parsed = parse_hostport(value)
        assert str(parsed) == value
        assert format_hostport(*parsed) == value


def test_hostname_rules() -> None:
    assert is_hostname("a" * 63 + ".example")
    assert not is_hostname("a" * 64 + ".example")
    assert not is_hostname(("a" * 60 + ".") * 5)  # > 253 characters
    assert not is_hostname("bad-.example")
    assert not is_hostname("a..b")
    assert not is_hostname("1.2.3")
    assert is_hostname("3com.example")


# --- the five callers it replaces --------------------------------------------------------
# orchestrator/probe.py parse_hostport: --probe-relay and the orchestrator's listen
# (HOST[:PORT], default port, port 0 only for a listen address).
PROBE_RELAY: dict[str, Any] = {"default_port": 3478, "what": "relay"}
ORCH_LISTEN: dict[str, Any] = {"default_port": 0, "allow_zero": True}
# transceiver/cli.py _split_listen: [transceiver] listen, HOST:PORT, empty host = all.
TXR_LISTEN: dict[str, Any] = {"default_host": "0.0.0.0", "allow_zero": True,
                              "what": "[transceiver] listen"}
# transceiver/model/server.py serve_model: listen address, host and port required.
MODEL_LISTEN: dict[str, Any] = {"allow_zero": True, "what": "listen address"}
# transceiver/ice.py parse_relay: the relays entries' ADDR:PORT, IPv4 or IPv6, no hostname.
RELAY_SPEC: dict[str, Any] = {"ip_only": True, "what": "relay"}
# lab/tcpfront.py: LISTEN and TARGET, HOST:PORT.
TCP_FRONT: dict[str, Any] = {"allow_zero": True}


@pytest.mark.parametrize(
    "kwargs, value, expected",
    [
        (PROBE_RELAY, "1.2.3.4:99", ("1.2.3.4", 99)),
        (PROBE_RELAY, "1.2.3.4", ("1.2.3.4", 3478)),
        (PROBE_RELAY, "[fd00::1]:5", ("fd00::1", 5)),
        (ORCH_LISTEN, "127.0.0.1:7480", ("127.0.0.1", 7480)),
        (ORCH_LISTEN, "127.0.0.1:0", ("127.0.0.1", 0)),
        (TXR_LISTEN, "0.0.0.0:8080", ("0.0.0.0", 8080)),
        (TXR_LISTEN, ":8080", ("0.0.0.0", 8080)),
        (TXR_LISTEN, "127.0.0.1:0", ("127.0.0.1", 0)),
        (MODEL_LISTEN, "127.0.0.1:0", ("127.0.0.1", 0)),
        (MODEL_LISTEN, "127.0.0.1:50051", ("127.0.0.1", 50051)),
        (RELAY_SPEC, "203.0.113.5:3478", ("203.0.113.5", 3478)),
        (RELAY_SPEC, "[2001:db8::10]:3478", ("2001:db8::10", 3478)),
        (TCP_FRONT, "10.77.0.1:8080", ("10.77.0.1", 8080)),
        (TCP_FRONT, "127.0.0.1:0", ("127.0.0.1", 0)),
    ],
)
def test_callers_accept(kwargs: dict[str, Any], value: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(value, **kwargs) == expected


@pytest.mark.parametrize(
    "kwargs, value, message",
    [
        (PROBE_RELAY, "x:0", "relay port '0' is not in 1..65535"),
        (PROBE_RELAY, ":5", "relay ':5' must be HOST:PORT"),
        (TXR_LISTEN, "8080", "[transceiver] listen '8080' must be HOST:PORT"),
        (TXR_LISTEN, "host:x", "[transceiver] listen port 'x' is not in 0..65535"),
        (MODEL_LISTEN, "nowhere", "listen address 'nowhere' must be HOST:PORT"),
        (MODEL_LISTEN, ":50051", "listen address ':50051' must be HOST:PORT"),
        # tests/unit/test_transceiver_units.py test_parse_relay_errors, word for word
        (RELAY_SPEC, "203.0.113.5", "relay '203.0.113.5' must be ADDR:PORT"),
        (RELAY_SPEC, "relay.example:3478", "relay address 'relay.example' is not an IP address"),
        (RELAY_SPEC, "203.0.113.5:0", "relay port '0' is not in 1..65535"),
        (TCP_FRONT, "8080", "'8080' must be HOST:PORT"),
        (TCP_FRONT, ":8080", "':8080' must be HOST:PORT"),
    ],
)
def test_callers_refuse(kwargs: dict[str, Any], value: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_hostport(value, **kwargs)
    assert str(info.value) == message
