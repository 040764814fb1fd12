# SPDX-License-Identifier: Apache-2.0
"""Prometheus exporter for ``voxrelay orchestrator run``.

Map-backed values (packets, flows, transceivers, keys) are read at scrape
time by a custom collector, so that /metrics always shows what the kernel
holds, summed over CPUs, with no second copy to drift. Labels come only from
the verdict enum (bpf/verdicts.h names) and transceiver ids: never from
client addresses.

    voxrelay_packets_received_total                 every packet the program saw
    voxrelay_packets_total{verdict,reason}          verdict: pass|fwd|drop
    voxrelay_flows / voxrelay_flows_capacity
    voxrelay_transceivers{status}                   active|draining, in the map
    voxrelay_token_keys_active
    voxrelay_sync_lag_seconds                       announce -> entry visible in the map
    voxrelay_directory_connected                    1 while the directory answers
    voxrelay_maps_in_sync                           0 while out of sync (outage, failed write)
    voxrelay_probe_success{transceiver}             1/0, last probe
    voxrelay_probe_rtt_seconds{transceiver}         last successful probe
    voxrelay_relay_reloads_total                    times the relay was found loaded anew (new
                                                    maps under its pins) and resynced
    voxrelay_directory_refused_total{reason}        directory requests refused: missing|wrong
                                                    credential (someone is probing, or a
                                                    transceiver has a stale secret)

and the live flows' media as the relay saw it (``FlowMediaCollector``, from the
flows map, bpf/media.h), per transceiver id and direction (to_transceiver |
to_client) or consent leg (client | transceiver): distributions over live
flows, so histograms of gauges, recomputed at most every FLOW_MEDIA_MAX_AGE s:

    voxrelay_flow_jitter_seconds{transceiver,direction}       RFC 3550 jitter
    voxrelay_flow_loss_ratio{transceiver,direction}           lost / expected
    voxrelay_flow_consent_rtt_seconds{transceiver,leg}        last consent check
    voxrelay_flow_rtp_packets{transceiver,direction,kind}     received|lost|reordered|duplicate,
                                                              summed over live flows

and, when the ICE-TCP front runs on this host (its stats file exists), the
families of ``TcpFrontCollector``, read from that file at scrape time.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from orchestrator import tcpfront
from orchestrator.media import MediaStats
from orchestrator.relay import FlowEntry, RelayView
from voxrelay.addr import parse_hostport

log = logging.getLogger(__name__)

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FLOW_COUNT_MAX_AGE = 5.0
"""Counting a 1M-entry LRU walks the whole map: at most once per this many seconds."""


def split_stat(name: str) -> tuple[str, str] | None:
    """"drop_token_bad_mac" -> ("drop", "token_bad_mac"); rx_total -> None."""
    verdict, _, reason = name.partition("_")
    if verdict not in ("pass", "fwd", "drop") or not reason:
        return None
    return verdict, reason


class RelayCollector(Collector):
    def __init__(self, view: RelayView, clock: Callable[[], float] = time.monotonic) -> None:
        self.view = view
        self._clock = clock
        self._flows: tuple[float, int] | None = None

    def _flow_count(self) -> int:
        now = self._clock()
        if self._flows is None or now - self._flows[0] >= FLOW_COUNT_MAX_AGE:
            self._flows = (now, self.view.flow_count())
        return self._flows[1]

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        try:
            stats = self.view.stats()
            flows = self._flow_count()
            txrs = self.view.transceivers()
            keys = self.view.keys()
        except OSError as exc:
            # A relay unloaded under us: export nothing map-backed, say why in the log.
            log.warning("cannot read the relay's maps: %s", exc)
            return
        received = CounterMetricFamily(
            "voxrelay_packets_received", "Packets the XDP program saw (sum over CPUs)."
        )
        received.add_metric([], stats.get("rx_total", 0))
        yield received
        packets = CounterMetricFamily(
            "voxrelay_packets", "Packets by verdict and reason (sum over CPUs).",
            labels=["verdict", "reason"],
        )
        for name, value in sorted(stats.items()):
            parts = split_stat(name)
            if parts is not None:
                packets.add_metric(list(parts), value)
        yield packets
        in_use = GaugeMetricFamily("voxrelay_flows", "Entries in the flows map.")
        in_use.add_metric([], flows)
        yield in_use
        capacity = GaugeMetricFamily("voxrelay_flows_capacity", "Size of the flows map (LRU).")
        capacity.add_metric([], self.view.flow_capacity())
        yield capacity
        by_status = GaugeMetricFamily(
            "voxrelay_transceivers", "Transceivers in the map by status.", labels=["status"]
        )
        for status in ("active", "draining"):
            by_status.add_metric([status], sum(1 for t in txrs.values() if t.status == status))
        yield by_status
        active_keys = GaugeMetricFamily("voxrelay_token_keys_active", "Active token key slots.")
        active_keys.add_metric([], len(keys))
        yield active_keys


FLOW_MEDIA_MAX_AGE = 10.0
"""Walking every flow (a million, at most) for the media histograms: at most
once per this many seconds; scrapes in between get the last result."""
JITTER_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)
LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
RTT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0)


def histogram(name: str, doc: str, label_names: list[str],
              values: dict[tuple[str, ...], list[float]],
              buckets: tuple[float, ...]) -> HistogramMetricFamily:
    """A Prometheus histogram of ``values`` per label set (cumulative buckets)."""
    family = HistogramMetricFamily(name, doc, labels=label_names)
    for labels, xs in sorted(values.items()):
        counts = [(repr(b), float(sum(1 for x in xs if x <= b))) for b in buckets]
        counts.append(("+Inf", float(len(xs))))
        family.add_metric(list(labels), counts, sum(xs))
    return family


class FlowMediaCollector(Collector):
    """The live flows' media telemetry (bpf/media.h) as histograms per
    transceiver: each live flow is one observation of its current jitter,
    loss ratio and consent RTT. Expired flows (the relay treats them as gone)
    are left out. Labels: transceiver ids and enum names, never addresses."""

    def __init__(self, view: RelayView, clock: Callable[[], float] = time.monotonic) -> None:
        self.view = view
        self._clock = clock
        self._last: tuple[float, list[HistogramMetricFamily | GaugeMetricFamily]] | None = None

    def collect(self) -> Iterator[HistogramMetricFamily | GaugeMetricFamily]:
        now = self._clock()
        if self._last is None or now - self._last[0] >= FLOW_MEDIA_MAX_AGE:
            try:
                flows = self.view.flows()
            except OSError as exc:
                log.warning("cannot read the relay's flows: %s", exc)
                return
            self._last = (now, self.families(flows))
        yield from self._last[1]

    @staticmethod
    def families(flows: Iterable[FlowEntry]) -> list[HistogramMetricFamily | GaugeMetricFamily]:
        jitter: dict[tuple[str, ...], list[float]] = {}
        loss: dict[tuple[str, ...], list[float]] = {}
        rtt: dict[tuple[str, ...], list[float]] = {}
        packets = GaugeMetricFamily(
            "voxrelay_flow_rtp_packets", "RTP packets of the live flows, as the relay saw them.",
            labels=["transceiver", "direction", "kind"])
        totals: dict[tuple[str, str, str], int] = {}
        for f in flows:
            if f.state == "expired":
                continue
            txr = str(f.transceiver_id)
            directions: tuple[tuple[str, MediaStats | None], ...] = (
                ("to_transceiver", f.media.to_transceiver), ("to_client", f.media.to_client))
            for direction, m in directions:
                if m is None:
                    continue
                jitter.setdefault((txr, direction), []).append(m.jitter_ms / 1000)
                loss.setdefault((txr, direction), []).append(m.loss_ratio)
                for kind, n in (("received", m.packets), ("lost", m.lost),
                                ("reordered", m.reordered), ("duplicate", m.duplicates)):
                    totals[(txr, direction, kind)] = totals.get((txr, direction, kind), 0) + n
            legs = (("client", f.media.client_rtt), ("transceiver", f.media.transceiver_rtt))
            for leg, c in legs:
                if c is not None:
                    rtt.setdefault((txr, leg), []).append(c.last_ms / 1000)
        for labels, n in sorted(totals.items()):
            packets.add_metric(list(labels), n)
        return [
            histogram("voxrelay_flow_jitter_seconds",
                      "RFC 3550 interarrival jitter of each live flow's RTP, per direction.",
                      ["transceiver", "direction"], jitter, JITTER_BUCKETS),
            histogram("voxrelay_flow_loss_ratio",
                      "Share of each live flow's RTP packets never seen, per direction.",
                      ["transceiver", "direction"], loss, LOSS_BUCKETS),
            histogram("voxrelay_flow_consent_rtt_seconds",
                      "Last STUN consent round trip of each live flow through the relay: "
                      "leg client = relay-client-relay, transceiver = relay-transceiver-relay.",
                      ["transceiver", "leg"], rtt, RTT_BUCKETS),
            packets,
        ]


class TcpFrontCollector(Collector):
    """The ICE-TCP front's counters, read from its stats file at scrape time
    (``orchestrator.tcpfront.StatsFile``: summed over its workers). Labels are
    enum names only (the front's ``REFUSALS``, ``DROPS``, ``BACKPRESSURE``),
    never client addresses.

        voxrelay_tcpfront_connections_total{event}   accepted|established|closed|idle_closed
        voxrelay_tcpfront_connections_open
        voxrelay_tcpfront_refused_total{reason}      REFUSALS
        voxrelay_tcpfront_frames_total{direction}    to_transceiver|to_client
        voxrelay_tcpfront_bytes_total{direction}     payload bytes, without the 2-byte prefix
        voxrelay_tcpfront_dropped_total{reason}      udp_send_error|udp_too_large
        voxrelay_tcpfront_backpressure_total{reason} udp_full|tcp_full

    No stats file (no front on this host): nothing exported, nothing logged.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        try:
            groups = tcpfront.read_summary(self.path)
        except (OSError, ValueError) as exc:
            log.warning("TCP front stats unreadable: %s", exc)
            return
        if groups is None:
            return
        conns = groups["connections"]
        family = CounterMetricFamily("voxrelay_tcpfront_connections",
                                     "ICE-TCP front connections by event.", labels=["event"])
        for event in ("accepted", "established", "closed", "idle_closed"):
            family.add_metric([event], conns[event])
        yield family
        yield GaugeMetricFamily("voxrelay_tcpfront_connections_open",
                                "ICE-TCP front connections open now.", value=conns["open"])
        for group, name, label, help_text in (
            ("refused", "refused", "reason", "ICE-TCP connections refused, by reason."),
            ("frames", "frames", "direction", "Frames the ICE-TCP front forwarded."),
            ("bytes", "bytes", "direction", "Payload bytes the ICE-TCP front forwarded."),
            ("dropped", "dropped", "reason", "Frames dropped after the first, by reason."),
            ("backpressure", "backpressure", "reason", "Times one side paused the other."),
        ):
            family = CounterMetricFamily(f"voxrelay_tcpfront_{name}", help_text, labels=[label])
            for key, value in groups[group].items():
                family.add_metric([key], value)
            yield family


def serve_tcpfront_metrics(listen: str, stats_path: Path) -> int:
    """The front's own /metrics (``[tcpfront] metrics_listen``, host:port), from a
    thread, with only ``TcpFrontCollector``; returns the port it bound."""
    host, port = parse_hostport(listen, allow_zero=True, what="[tcpfront] metrics_listen")
    registry = CollectorRegistry()
    registry.register(TcpFrontCollector(stats_path))
    server, _ = start_http_server(port, host, registry=registry)
    bound: int = server.server_address[1]
    return bound


class OrchestratorMetrics:
    """Everything /metrics shows, in one registry (not the global one, so that
    tests and several orchestrators in one process do not collide)."""

    def __init__(self, view: RelayView | None = None, tcpfront_stats: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        if view is not None:
            self.registry.register(RelayCollector(view))
            self.registry.register(FlowMediaCollector(view))
        if tcpfront_stats is not None:
            self.registry.register(TcpFrontCollector(tcpfront_stats))
        self.sync_lag = Histogram(
            "voxrelay_sync_lag_seconds", "Announce to entry visible in the transceivers map.",
            buckets=LAG_BUCKETS, registry=self.registry,
        )
        self.directory_connected = Gauge(
            "voxrelay_directory_connected", "1 while the directory answers.", registry=self.registry
        )
        self.maps_in_sync = Gauge(
            "voxrelay_maps_in_sync", "1 when the maps reflect the directory; 0 while out of sync.",
            registry=self.registry,
        )
        self.probe_success = Gauge(
            "voxrelay_probe_success", "Last probe through the relay: 1 answered, 0 not.",
            ["transceiver"], registry=self.registry,
        )
        self.probe_rtt = Gauge(
            "voxrelay_probe_rtt_seconds", "Round trip of the last successful probe.",
            ["transceiver"], registry=self.registry,
        )
        self.directory_refused = Counter(
            "voxrelay_directory_refused", "Directory API requests refused for their credential.",
            ["reason"], registry=self.registry,
        )
        for reason in ("missing", "wrong"):
            self.directory_refused.labels(reason)
        self.relay_reloads = Counter(
            "voxrelay_relay_reloads", "Times the relay was loaded anew under the orchestrator "
            "(new maps under its pins) and the maps were resynced.", registry=self.registry,
        )

    def record_probe(self, transceiver_id: int, ok: bool, rtt_ms: float | None) -> None:
        label = str(transceiver_id)
        self.probe_success.labels(label).set(1 if ok else 0)
        if ok and rtt_ms is not None:
            self.probe_rtt.labels(label).set(rtt_ms / 1000)

    def forget_transceiver(self, transceiver_id: int) -> None:
        """Stop exporting the probe results of a transceiver that left the map."""
        for gauge in (self.probe_success, self.probe_rtt):
            with contextlib.suppress(KeyError):  # it never had a probe result
                gauge.remove(str(transceiver_id))

    def forget_transceivers(self, transceiver_ids: Iterable[int]) -> None:
        """``Syncer(on_delete=...)``: the sync removed these from the map."""
        for transceiver_id in transceiver_ids:
            self.forget_transceiver(transceiver_id)
