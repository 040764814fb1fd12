# SPDX-License-Identifier: Apache-2.0
"""The one ``host:port`` parser.

Every address a user types (``--probe-relay``, ``listen`` settings, the
transceiver's ``relays`` entries, the lab's TCP front) goes through
:func:`parse_hostport`, so that all of them accept the same spellings and
fail with the same, exact messages (STYLE: parsers are pure and raise
``ValueError`` with an exact message that tests assert).

Accepted spellings:

- ``192.0.2.1:3478``: IPv4 and a port;
- ``[2001:db8::1]:3478``: IPv6 in brackets (a bare IPv6 address is refused,
  since ``2001:db8::1`` could be read as host ``2001:db8:`` port 1);
- ``relay.example:3478``: a hostname (RFC 1123 labels); not with ``ipv4_only``
  or ``ip_only``;
- ``192.0.2.1``, ``[2001:db8::1]``, ``relay.example``: only with a
  ``default_port``;
- ``:8080``: only with a ``default_host`` (a listen address on all interfaces).

Messages, where ``<what> `` is the caller's name for the value (``relay``,
``[transceiver] listen``), or nothing::

    <what> '<value>' must be HOST:PORT          (ADDR:PORT with ipv4_only or ip_only)
    <what> '<value>': an IPv6 address needs brackets, [ADDR]:PORT
    <what> address '<host>' is not an IPv4 address
    <what> address '<host>' is not an IPv6 address
    <what> address '<host>' is not an IP address   (ip_only)
    <what> host '<host>' is not an IP address or a hostname
    <what> port '<port>' is not in 1..65535     (0..65535 with allow_zero)

The form is checked first, then the host, then the port.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class HostPort(NamedTuple):
    """A parsed address: ``host`` without brackets, ``port`` in 0..65535.

    A tuple, so ``host, port = parse_hostport(...)`` and comparisons with
    ``(host, port)`` work; ``str()`` gives it back in ``host:port`` form.
    """

    host: str
    port: int

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)


def format_hostport(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 address (the inverse of
    :func:`parse_hostport`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_hostname(name: str) -> bool:
    """RFC 1123 hostname: dot-separated labels of letters, digits and inner
    hyphens, at most 253 characters, optional trailing dot; the last label
    is not all digits (so ``192.0.2.300`` is not taken for a name)."""
    name = name.removesuffix(".")
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    return all(_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def parse_hostport(value: str, default_port: int | None = None, *,
                   default_host: str | None = None, allow_zero: bool = False,
                   ipv4_only: bool = False, ip_only: bool = False,
                   what: str = "") -> HostPort:
    """Parse ``value`` as ``host:port`` (see the module docstring).

    ``default_port`` is used when ``value`` has no port, ``default_host``
    when its host is empty (``:8080``); without them both parts are
    required. ``allow_zero`` admits port 0 (a listen address: the kernel
    picks). ``ipv4_only`` admits only an IPv4 literal as the host,
    ``ip_only`` an IPv4 or (bracketed) IPv6 literal: no hostname.
    ``what`` names the value in messages. Raises ``ValueError``.
    """
    prefix = f"{what} " if what else ""
    form = "ADDR:PORT" if ipv4_only or ip_only else "HOST:PORT"
    bad_form = ValueError(f"{prefix}{value!r} must be {form}")
    bracketed = value.startswith("[")
    if bracketed:
        close = value.find("]")
        if close < 0:
            raise bad_form
        host, rest = value[1:close], value[close + 1:]
        if rest and not rest.startswith(":"):
            raise bad_form
        has_port, port_text = bool(rest), rest[1:]
    else:
        if value.count(":") > 1:
            raise ValueError(f"{prefix}{value!r}: an IPv6 address needs brackets, [ADDR]:PORT")
        host, colon, port_text = value.partition(":")
        has_port = bool(colon)
    if not has_port:
        if default_port is None:
            raise bad_form
        port_text = str(default_port)
    if not host:
        if default_host is None or bracketed:
            raise bad_form
        host = default_host
    _check_host(host, bracketed=bracketed, ipv4_only=ipv4_only, prefix=prefix)
    if ip_only and not bracketed and not _is_ipv4(host):
        raise ValueError(f"{prefix}address {host!r} is not an IP address")
    low = 0 if allow_zero else 1
    if not (port_text.isascii() and port_text.isdigit()) or not low <= int(port_text) <= 65535:
        raise ValueError(f"{prefix}port {port_text!r} is not in {low}..65535")
    return HostPort(host, int(port_text))


def _check_host(host: str, *, bracketed: bool, ipv4_only: bool, prefix: str) -> None:
    if ipv4_only:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{prefix}address {host!r} is not an IPv4 address") from None
    elif bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{prefix}address {host!r} is not an IPv6 address") from None
    elif not _is_ipv4(host) and not is_hostname(host):
        raise ValueError(f"{prefix}host {host!r} is not an IP address or a hostname")


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True
