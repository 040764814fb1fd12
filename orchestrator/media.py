# SPDX-License-Identifier: Apache-2.0
"""Media telemetry of a flow as the XDP relay keeps it (bpf/media.h), typed.

The relay follows each flow's RTP headers and STUN consent checks without
decrypting anything; these are the readers' views of ``abi.MediaDir`` and
``abi.ConsentRtt``: ``voxrelay maps flows`` shows them, the exporter turns
them into histograms per transceiver (``metrics.FlowMediaCollector``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

RTP_CLOCK_HZ = 48_000
"""The RTP clock the relay's jitter is in (bpf/media.h: Opus, RFC 7587)."""


@dataclass(frozen=True)
class MediaStats:
    """RTP of one direction of a flow, as the relay saw it (bpf/media.h).

    The relay reads only the clear RTP header of SRTP: sequence numbers give
    loss and reordering (RFC 3550 A.1), timestamps against arrival give the
    interarrival jitter (A.8). Counts are over the flow's life."""

    packets: int           # RTP packets that arrived, duplicates not counted
    expected: int          # packets the sequence numbers say were sent
    reordered: int
    duplicates: int
    resyncs: int           # new SSRC or sequence jump: accounting restarted
    jitter_ms: float

    @property
    def lost(self) -> int:
        """Packets never seen (a late packet is not lost; never below 0)."""
        return max(0, self.expected - self.packets)

    @property
    def loss_ratio(self) -> float:
        return self.lost / self.expected if self.expected else 0.0

    @classmethod
    def from_map(cls, m: Any) -> MediaStats | None:
        """From an ``abi.MediaDir``; None when the direction carried no RTP."""
        if not m.received:
            return None
        return cls(packets=int(m.received), expected=int(m.expected),
                   reordered=int(m.reordered), duplicates=int(m.duplicates),
                   resyncs=int(m.resyncs),
                   jitter_ms=int(m.jitter_q4) / 16 / RTP_CLOCK_HZ * 1000)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "lost": self.lost, "loss_ratio": self.loss_ratio}


@dataclass(frozen=True)
class ConsentRtt:
    """STUN consent checks timed through the relay, request -> success response."""

    samples: int
    last_ms: float
    mean_ms: float
    max_ms: float

    @classmethod
    def from_map(cls, c: Any) -> ConsentRtt | None:
        """From an ``abi.ConsentRtt``; None before the first answered check."""
        if not c.samples:
            return None
        return cls(samples=int(c.samples), last_ms=int(c.last_us) / 1000,
                   mean_ms=int(c.sum_us) / int(c.samples) / 1000, max_ms=int(c.max_us) / 1000)


@dataclass(frozen=True)
class FlowMedia:
    """A flow's media telemetry, both ways. ``to_transceiver`` is the client's
    RTP; ``client_rtt`` is relay -> client -> relay (the client's leg, from
    the transceiver's consent checks); ``transceiver_rtt`` is the other leg."""

    to_transceiver: MediaStats | None = None
    to_client: MediaStats | None = None
    client_rtt: ConsentRtt | None = None
    transceiver_rtt: ConsentRtt | None = None

    def to_json(self) -> dict[str, Any]:
        return {name: (None if value is None else value.to_json() if isinstance(value, MediaStats)
                       else asdict(value))
                for name, value in (("to_transceiver", self.to_transceiver),
                                    ("to_client", self.to_client),
                                    ("client_rtt", self.client_rtt),
                                    ("transceiver_rtt", self.transceiver_rtt))}
