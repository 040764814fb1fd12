# SPDX-License-Identifier: Apache-2.0
"""What the relay's kernel stack sees: AF_PACKET taps inside a namespace.

XDP runs before the kernel's packet taps, so a packet that the relay program
forwards (XDP_REDIRECT / XDP_TX) or drops never reaches an AF_PACKET socket on
that interface, while anything it passes (XDP_PASS) does. Counting UDP on the
relay's interfaces during a call therefore measures exactly "the kernel stack
on the relay saw none of the media".
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Self

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800


def parse_udp(frame: bytes) -> tuple[str, int, str, int] | None:
    """(src, sport, dst, dport) of an Ethernet/IPv4/UDP frame, else None."""
    if len(frame) < 14 + 20 + 8 or struct.unpack("!H", frame[12:14])[0] != ETH_P_IP:
        return None
    ihl = (frame[14] & 0x0F) * 4
    if frame[14 + 9] != socket.IPPROTO_UDP or len(frame) < 14 + ihl + 8:
        return None
    src = socket.inet_ntoa(frame[26:30])
    dst = socket.inet_ntoa(frame[30:34])
    sport, dport = struct.unpack("!HH", frame[14 + ihl : 14 + ihl + 4])
    return src, sport, dst, dport


@dataclass
class UdpTap:
    """Counts IPv4 UDP frames seen by the stack on ``ifnames`` inside ``netns``.

    ``with UdpTap(ns, ["pub0", "priv0"]) as tap: ...`` then ``tap.udp`` (a
    Counter keyed by (ifname, src, sport, dst, dport)).
    """

    netns: str | None
    ifnames: list[str]
    udp: Counter[tuple[str, str, int, str, int]] = field(default_factory=Counter)
    frames: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []

    def __enter__(self) -> Self:
        from orchestrator.netlink import run_in_netns

        for ifname in self.ifnames:
            sock = run_in_netns(self.netns, self._open, ifname)
            self._socks.append(sock)
            t = threading.Thread(target=self._read, args=(sock, ifname), daemon=True,
                                 name=f"udptap:{ifname}")
            t.start()
            self._threads.append(t)
        return self

    @staticmethod
    def _open(ifname: str) -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((ifname, 0))
        sock.settimeout(0.2)
        return sock

    def _read(self, sock: socket.socket, ifname: str) -> None:
        while not self._stop.is_set():
            try:
                frame = sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.frames += 1
            parsed = parse_udp(frame)
            if parsed is not None:
                self.udp[(ifname, *parsed)] += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        for s in self._socks:
            s.close()

    def udp_total(self) -> int:
        return sum(self.udp.values())


@dataclass
class IpTap:
    """Counts IPv4 frames from ``source`` seen on every interface of ``netns``."""

    netns: str | None
    source: str
    count: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._want = socket.inet_aton(self.source)

    def __enter__(self) -> Self:
        from orchestrator.netlink import run_in_netns

        def open_any() -> socket.socket:
            # Unbound AF_PACKET: every interface of the namespace, both directions.
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            sock.settimeout(0.2)
            return sock

        self._sock = run_in_netns(self.netns, open_any)
        self._thread = threading.Thread(target=self._read, daemon=True, name="iptap")
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                frame = self._sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if (len(frame) >= 34 and struct.unpack("!H", frame[12:14])[0] == ETH_P_IP
                    and frame[26:30] == self._want):
                self.count += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
