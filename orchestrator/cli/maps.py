# SPDX-License-Identifier: Apache-2.0
"""``voxrelay maps``: show the relay's pinned BPF maps."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli import common
from orchestrator.cli.common import CONTEXT, emit, relay_read_options, table
from orchestrator.media import FlowMedia, MediaStats
from orchestrator.relay import FlowEntry
from orchestrator.sync import keyring_from_map


@click.group(context_settings=CONTEXT)
def maps() -> None:
    """Show the relay's pinned BPF maps (needs root and a loaded relay)."""


@maps.command("transceivers")
@relay_read_options
def maps_transceivers(config_path: Path | None, name: str | None, as_json: bool) -> None:
    """Transceivers the XDP program routes to: id, private address, status."""
    txrs = common.view(config_path, name).transceivers()
    rows = [{"id": i, "address": t.address, "status": t.status} for i, t in sorted(txrs.items())]
    emit(as_json, rows, table(["ID", "ADDRESS", "STATUS"],
                              [[r["id"], r["address"], r["status"]] for r in rows]))


@maps.command("blocked")
@relay_read_options
def maps_blocked(config_path: Path | None, name: str | None, as_json: bool) -> None:
    """Source prefixes that may not open a flow, and why: the private side's
    subnets and the relay's own addresses (always), and [relay]
    blocked_source_prefixes (the operator's). Their packets are dropped and
    counted as drop_blocked_source (maps stats)."""
    blocked = common.view(config_path, name).blocked_sources()
    order = sorted(blocked, key=lambda net: (net.version, int(net.network_address), net.prefixlen))
    rows = [{"prefix": str(net),
             "why": [str(flag.name).lower() for flag in type(blocked[net]) if flag in blocked[net]]}
            for net in order]
    emit(as_json, rows,
         table(["PREFIX", "WHY"], [[r["prefix"], ", ".join(r["why"])] for r in rows]))


@maps.command("keys")
@relay_read_options
def maps_keys(config_path: Path | None, name: str | None, as_json: bool) -> None:
    """Active token key slots (fingerprints only; the keys are secret)."""
    slots = common.view(config_path, name).keys()
    current = keyring_from_map(slots).current
    rows = [{"key_id": i, "fingerprint": common.key_fingerprint(k), "current": i == current}
            for i, k in sorted(slots.items())]
    emit(as_json, rows, table(["KEY_ID", "FINGERPRINT", "CURRENT"],
                              [[r["key_id"], r["fingerprint"], "*" if r["current"] else ""]
                               for r in rows]))


@maps.command("stats")
@relay_read_options
@click.option("--all", "show_all", is_flag=True, help="Also show counters that are zero.")
def maps_stats(config_path: Path | None, name: str | None, as_json: bool, show_all: bool) -> None:
    """Packets by verdict and drop reason, summed over CPUs.

    When the ICE-TCP front runs on this host (its stats file exists), its
    connections, frames, and refusals and drops by reason follow, summed over
    its workers (JSON: "tcpfront", null without a front).
    """
    view = common.view(config_path, name)
    stats = view.stats()
    front_path, front = common.tcpfront_summary(config_path, name)
    data = {"counters": stats, "flows": view.flow_count(), "flow_capacity": view.flow_capacity(),
            "tcpfront": front}
    rows = [[k, v] for k, v in stats.items() if v or show_all or k == "rx_total"]
    text = table(["COUNTER", "PACKETS"], rows) + (
        f"\n\nflows {data['flows']} / {data['flow_capacity']}"
    )
    if front is not None:
        # Always shown: connections and frames; reasons only when non-zero (or --all).
        front_rows = [[f"{group}.{key}", value] for group, values in front.items()
                      for key, value in values.items()
                      if value or show_all or group in ("connections", "frames")]
        text += (f"\n\nICE-TCP front ({front_path}):\n"
                 + table(["COUNTER", "VALUE"], front_rows))
    emit(as_json, data, text)


def _parse_client(value: str) -> tuple[str, int | None]:
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and "." in host:
        return host, int(port)
    return value, None


def filter_flows(flows: list[FlowEntry], transceiver: int | None,
                 client: str | None) -> list[FlowEntry]:
    """Pure: the flows of one transceiver and/or one client (addr or addr:port)."""
    out = flows
    if transceiver is not None:
        out = [f for f in out if f.transceiver_id == transceiver]
    if client is not None:
        host, port = _parse_client(client)
        out = [f for f in out if f.client.rpartition(":")[0] == host
               and (port is None or f.client == f"{host}:{port}")]
    return out


def media_columns(media: FlowMedia) -> list[str]:
    """Pure: a flow's telemetry cells; "-" where the relay saw nothing to measure.

    Loss is lost/expected packets as a percentage; up is client -> transceiver."""
    def loss(m: MediaStats | None) -> str:
        return "-" if m is None else f"{100 * m.loss_ratio:.1f}%"

    def jitter(m: MediaStats | None) -> str:
        return "-" if m is None else f"{m.jitter_ms:.1f}"

    rtt = media.client_rtt
    return [loss(media.to_transceiver), loss(media.to_client),
            jitter(media.to_transceiver), jitter(media.to_client),
            "-" if rtt is None else f"{rtt.last_ms:.1f}"]


@maps.command("flows")
@relay_read_options
@click.option("--transceiver", type=int, default=None, help="Only flows to this transceiver id.")
@click.option("--client", default=None, metavar="ADDR[:PORT]", help="Only flows of this client.")
@click.option("--all", "show_all", is_flag=True,
              help="Also show expired flows (unseen for longer than flow_idle_seconds).")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True,
              help="Rows to print (0: all). The flows map can hold a million.")
def maps_flows(config_path: Path | None, name: str | None, as_json: bool,
               transceiver: int | None, client: str | None, show_all: bool, limit: int) -> None:
    """Flows: client -> transceiver, relay-side port, age, idle time and state,
    and what the relay saw of each flow's media.

    STATE is active (a packet in the last 10 s), idle, or expired (unseen for
    longer than the relay's flow_idle_seconds: the relay treats it as gone,
    though it stays in the map until its slot is reused). Expired flows are
    hidden unless --all.

    Media (read from the clear RTP headers of SRTP and the STUN consent
    checks, nothing decrypted): LOSS_UP/LOSS_DOWN are packets missing by
    sequence number, client -> transceiver and back; JITTER_*_MS is RFC
    3550 interarrival jitter; RTT_CLIENT_MS is the last consent check's
    round trip relay -> client -> relay. "-": nothing seen yet. --json has
    every counter (reordered, duplicates, resyncs, the transceiver leg's RTT).
    """
    flows = filter_flows(common.view(config_path, name).flows(), transceiver, client)
    expired = sum(1 for f in flows if f.state == "expired")
    if not show_all:
        flows = [f for f in flows if f.state != "expired"]
    flows.sort(key=lambda f: (f.transceiver_id, f.client))
    shown = flows if limit == 0 else flows[:limit]
    text = table(
        ["CLIENT", "TRANSCEIVER", "TXR_ADDRESS", "RELAY_PORT", "AGE_S", "IDLE_S", "STATE",
         "LOSS_UP", "LOSS_DOWN", "JITTER_UP_MS", "JITTER_DOWN_MS", "RTT_CLIENT_MS"],
        [[f.client, f.transceiver_id, f.transceiver, f.relay_port,
          f"{f.age_s:.1f}", f"{f.idle_s:.1f}", f.state, *media_columns(f.media)]
         for f in shown],
    )
    if len(shown) < len(flows):
        text += f"\n... {len(flows) - len(shown)} more (--limit 0 for all)"
    if expired and not show_all:
        text += f"\n({expired} expired not shown; --all shows them)"
    emit(as_json, [f.to_json() for f in shown], text)
