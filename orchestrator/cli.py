"""The orchestrator's commands: a thin click layer over the typed library.

Mounted by voxrelay/cli.py through the voxrelay.commands entry points. Every command prints a table (or one
line) by default and JSON with ``--json``; every expected failure (not root,
bcc missing, relay not loaded, directory unreachable, a bad token) is one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from orchestrator.bccview import open_relay
from orchestrator.relay import FlowEntry, RelayUnavailable, RelayView
from orchestrator.sync import keyring_from_map
from voxrelay import token as tk
from voxrelay.config import Config, ConfigError, load_config
from voxrelay.directory import Directory, DirectoryUnavailable, UnknownTransceiver, connect

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"]}


# --- shared plumbing -----------------------------------------------------------
def friendly(fn: F) -> F:
    """Turn the failures an operator can fix into one-line errors."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (RelayUnavailable, ConfigError, DirectoryUnavailable, UnknownTransceiver) as exc:
            raise click.ClickException(str(exc)) from None
        except PermissionError as exc:
            raise click.ClickException(
                f"permission denied ({exc.filename or exc.strerror}): run this as root"
            ) from None
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        except ImportError as exc:
            raise click.ClickException(
                f"this build cannot import {exc.name or exc}: run scripts/setup.sh to reinstall"
            ) from None

    return wrapper  # type: ignore[return-value]


def config_option(fn: F) -> F:
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
        envvar="VOXRELAY_CONFIG", default=None,
        help="TOML config (default /etc/voxrelay/voxrelay.toml if present; env VOXRELAY_CONFIG).",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)


def name_option(fn: F) -> F:
    return click.option(
        "--name", default=None,
        help="Relay name (maps under /sys/fs/bpf/voxrelay/<name>/); default: [relay] name.",
    )(fn)


def directory_option(fn: F) -> F:
    return click.option(
        "--directory", "directory_url", default=None, metavar="URL",
        help="Directory URL (http://... embedded, redis://...); default from [orchestrator].",
    )(fn)


def _config(path: Path | None) -> Config:
    return load_config(path)


def _view(config_path: Path | None, name: str | None) -> RelayView:
    return open_relay(name or _config(config_path).relay.name)


def _directory(config_path: Path | None, url: str | None) -> Directory:
    from orchestrator.service import directory_url

    config = _config(config_path)
    return connect(url or directory_url(config), grace=config.orchestrator.heartbeat_grace_seconds)


def _run(coro_fn: Callable[[Directory], Any], directory: Directory) -> Any:
    async def main() -> Any:
        try:
            return await coro_fn(directory)
        finally:
            await directory.close()

    return asyncio.run(main())


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def emit(as_json: bool, data: Any, text: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else text)


def key_fingerprint(key: bytes) -> str:
    """Identifies a key in output without printing it."""
    return hashlib.sha256(key).hexdigest()[:12]


# --- relay (thin over orchestrator/loader.py) -----------------------------------
def _loader_call(fn: Callable[[], Any]) -> Any:
    from orchestrator.relay import require_bpf

    require_bpf("loading or inspecting the XDP relay")
    from pyroute2.netlink.exceptions import NetlinkError

    from orchestrator import bpfsys, loader, netlink

    try:
        return fn()
    except loader.LoaderError as exc:
        raise click.ClickException(str(exc)) from None
    except netlink.NetlinkSetupError as exc:
        hint = (": check [relay] public_interface and private_interface in the config (--config), "
                "or give --netns" if "no interface" in str(exc) else "")
        raise click.ClickException(f"{exc}{hint}") from None
    except (NetlinkError, bpfsys.BpfError) as exc:
        raise click.ClickException(f"the kernel refused: {exc}") from None


@click.group(context_settings=CONTEXT)
def relay() -> None:
    """Load, replace, unload and inspect the XDP relay on this host.

    The relay's maps are pinned under /sys/fs/bpf/voxrelay/<name>/ and its
    program is held by pinned BPF links, so it keeps forwarding when no
    process runs; `voxrelay orchestrator run` then keeps its maps in sync.
    """


@relay.command("load")
@config_option
@name_option
@click.option("--mode", type=click.Choice(["native", "generic"]), default=None,
              help="XDP mode (default: [relay] xdp_mode).")
@click.option("--netns", default=None, help="Network namespace holding the interfaces.")
@click.option("--replace", "do_replace", is_flag=True,
              help="Swap the running program atomically, keeping maps and flows.")
@json_option
@friendly
def relay_load(config_path: Path | None, name: str | None, mode: str | None, netns: str | None,
               do_replace: bool, as_json: bool) -> None:
    """Compile the relay, pin its maps, write its config, attach to both interfaces."""
    config = _config(config_path)
    if name:
        config.relay.name = name

    def go() -> Any:
        from orchestrator import loader

        if do_replace:
            return loader.replace(config.relay, netns=netns)
        return loader.load(config.relay, netns=netns, mode=mode)

    st = _loader_call(go)
    emit(as_json, st.to_dict(), _status_text(st))


@relay.command("unload")
@config_option
@name_option
@click.option("--netns", default=None, help="Network namespace holding the interfaces.")
@friendly
def relay_unload(config_path: Path | None, name: str | None, netns: str | None) -> None:
    """Detach the relay and remove its pins (its flows end; transceivers are untouched)."""
    relay_name = name or _config(config_path).relay.name

    def go() -> Any:
        from orchestrator import loader

        return loader.unload(relay_name, netns=netns)

    found = _loader_call(go)
    click.echo(f"relay {relay_name!r} " + ("unloaded" if found else "was not loaded"))


@relay.command("status")
@config_option
@name_option
@click.option("--netns", default=None, help="Network namespace holding the interfaces.")
@json_option
@friendly
def relay_status(config_path: Path | None, name: str | None, netns: str | None, as_json: bool) -> None:
    """What is attached and pinned for this relay (exit 1 when not loaded)."""
    relay_name = name or _config(config_path).relay.name

    def go() -> Any:
        from orchestrator import loader

        return loader.status(relay_name, netns=netns)

    st = _loader_call(go)
    emit(as_json, st.to_dict(), _status_text(st))
    if not st.loaded:
        raise SystemExit(1)


def _status_text(st: Any) -> str:
    if not st.loaded and not st.maps:
        return f"relay {st.name!r} is not loaded (run `voxrelay relay load`)"
    head = (f"relay {st.name!r}: {'loaded' if st.loaded else 'NOT attached'}, program "
            f"{st.prog_name or '-'} id {st.prog_id or '-'}, mode {st.mode or '-'}")
    ifs = table(["INTERFACE", "IFINDEX", "LINK", "ATTACHED"],
                [[i.ifname, i.ifindex, i.link_id, "yes" if i.attached else "no"] for i in st.interfaces])
    mps = table(["MAP", "TYPE", "MAX_ENTRIES"], [[m.name, m.type, m.max_entries] for m in st.maps])
    return f"{head}\n\n{ifs}\n\n{mps}"


# --- maps ------------------------------------------------------------------------
@click.group(context_settings=CONTEXT)
def maps() -> None:
    """Show the relay's pinned BPF maps (needs root and a loaded relay)."""


@maps.command("transceivers")
@config_option
@name_option
@json_option
@friendly
def maps_transceivers(config_path: Path | None, name: str | None, as_json: bool) -> None:
    """Transceivers the XDP program routes to: id, private address, status."""
    txrs = _view(config_path, name).transceivers()
    rows = [{"id": i, "address": t.address, "status": t.status} for i, t in sorted(txrs.items())]
    emit(as_json, rows, table(["ID", "ADDRESS", "STATUS"],
                              [[r["id"], r["address"], r["status"]] for r in rows]))


@maps.command("keys")
@config_option
@name_option
@json_option
@friendly
def maps_keys(config_path: Path | None, name: str | None, as_json: bool) -> None:
    """Active token key slots (fingerprints only; the keys are secret)."""
    slots = _view(config_path, name).keys()
    current = keyring_from_map(slots).current
    rows = [{"key_id": i, "fingerprint": key_fingerprint(k), "current": i == current}
            for i, k in sorted(slots.items())]
    emit(as_json, rows, table(["KEY_ID", "FINGERPRINT", "CURRENT"],
                              [[r["key_id"], r["fingerprint"], "*" if r["current"] else ""] for r in rows]))


@maps.command("stats")
@config_option
@name_option
@json_option
@click.option("--all", "show_all", is_flag=True, help="Also show counters that are zero.")
@friendly
def maps_stats(config_path: Path | None, name: str | None, as_json: bool, show_all: bool) -> None:
    """Packets by verdict and drop reason, summed over CPUs."""
    view = _view(config_path, name)
    stats = view.stats()
    data = {"counters": stats, "flows": view.flow_count(), "flow_capacity": view.flow_capacity()}
    rows = [[k, v] for k, v in stats.items() if v or show_all or k == "rx_total"]
    text = table(["COUNTER", "PACKETS"], rows) + (
        f"\n\nflows {data['flows']} / {data['flow_capacity']}"
    )
    emit(as_json, data, text)


def _parse_client(value: str) -> tuple[str, int | None]:
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and "." in host:
        return host, int(port)
    return value, None


def filter_flows(flows: list[FlowEntry], transceiver: int | None, client: str | None) -> list[FlowEntry]:
    """Pure: the flows of one transceiver and/or one client (addr or addr:port)."""
    out = flows
    if transceiver is not None:
        out = [f for f in out if f.transceiver_id == transceiver]
    if client is not None:
        host, port = _parse_client(client)
        out = [f for f in out if f.client.rpartition(":")[0] == host
               and (port is None or f.client == f"{host}:{port}")]
    return out


@maps.command("flows")
@config_option
@name_option
@json_option
@click.option("--transceiver", type=int, default=None, help="Only flows to this transceiver id.")
@click.option("--client", default=None, metavar="ADDR[:PORT]", help="Only flows of this client.")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True,
              help="Rows to print (0: all). The flows map can hold a million.")
@friendly
def maps_flows(config_path: Path | None, name: str | None, as_json: bool,
               transceiver: int | None, client: str | None, limit: int) -> None:
    """Live flows: client -> transceiver, relay-side port, age and idle time."""
    flows = filter_flows(_view(config_path, name).flows(), transceiver, client)
    flows.sort(key=lambda f: (f.transceiver_id, f.client))
    shown = flows if limit == 0 else flows[:limit]
    text = table(
        ["CLIENT", "TRANSCEIVER", "TXR_ADDRESS", "RELAY_PORT", "AGE_S", "IDLE_S"],
        [[f.client, f.transceiver_id, f.transceiver, f.relay_port, f"{f.age_s:.1f}", f"{f.idle_s:.1f}"]
         for f in shown],
    )
    if len(shown) < len(flows):
        text += f"\n... {len(flows) - len(shown)} more (--limit 0 for all)"
    emit(as_json, [f.to_json() for f in shown], text)


# --- transceivers / keys (through the directory, the source of truth) -------------
@click.group(context_settings=CONTEXT)
def transceivers() -> None:
    """Drain, undrain or remove a transceiver in the directory.

    The change goes to the directory (the source of truth), and the running
    orchestrator writes it into the maps: a draining transceiver gets no new
    flows while its calls continue; a removed one gets no new flows at all.
    """


def _txr_command(verb: str, doc: str) -> click.Command:
    @click.argument("txr_id", type=int, metavar="ID")
    @config_option
    @directory_option
    @json_option
    @friendly
    def command(txr_id: int, config_path: Path | None, directory_url: str | None, as_json: bool) -> None:
        async def go(d: Directory) -> Any:
            if verb == "remove":
                return {"id": txr_id, "removed": await d.remove(txr_id)}
            record = await (d.drain(txr_id) if verb == "drain" else d.undrain(txr_id))
            return record.to_json()

        result = _run(go, _directory(config_path, directory_url))
        if verb == "remove":
            text = f"transceiver {txr_id} " + ("removed" if result["removed"] else "was not in the directory")
        else:
            text = f"transceiver {txr_id} is {result['status']}"
        emit(as_json, result, text)

    command.__doc__ = doc
    return transceivers.command(verb)(command)


_txr_command("drain", "Stop new flows to transceiver ID; its existing calls continue.")
_txr_command("undrain", "Let transceiver ID take new flows again.")
_txr_command("remove", "Forget transceiver ID: no new flows; its flows age out.")


@click.group(context_settings=CONTEXT)
def keys() -> None:
    """Manage the routing-token keys (in the directory; the orchestrator syncs the map)."""


@keys.command("rotate")
@config_option
@directory_option
@json_option
@friendly
def keys_rotate(config_path: Path | None, directory_url: str | None, as_json: bool) -> None:
    """Make a new current key; the previous one stays valid until the next rotation.

    Transceivers mint with the new key from their next key refresh; tokens
    minted with the previous key keep working until the rotation after this.
    """
    ring = _run(lambda d: d.rotate_keys(), _directory(config_path, directory_url))
    data = {"current": ring.current, "active": list(ring.active),
            "fingerprints": {str(i): key_fingerprint(k) for i, k in ring.active_keys().items()}}
    emit(as_json, data, f"current key id {ring.current}; active {', '.join(map(str, ring.active))}")


# --- token -------------------------------------------------------------------------
@click.group(context_settings=CONTEXT)
def token() -> None:
    """Mint or inspect a routing token (a server ICE ufrag), to debug routing."""


def _keys_for(key_hex: str | None, key_id: int | None, config_path: Path | None,
              name: str | None) -> tuple[dict[int, bytes], int | None]:
    """(active keys, current id): from --key-hex, else from the relay's maps."""
    if key_hex is not None:
        try:
            key = bytes.fromhex(key_hex)
        except ValueError:
            raise ValueError("--key-hex is not hexadecimal") from None
        if len(key) != tk.KEY_BYTES:
            raise ValueError(f"--key-hex must be {tk.KEY_BYTES} bytes ({2 * tk.KEY_BYTES} hex digits), got {len(key)}")
        kid = 0 if key_id is None else key_id
        return {kid: key}, kid
    slots = _view(config_path, name).keys()
    if not slots:
        raise ValueError("the relay has no active token key: is `voxrelay orchestrator run` running?")
    current = keyring_from_map(slots).current if key_id is None else key_id
    if current not in slots:
        raise ValueError(f"token key id {current} is not active in the relay's keys map")
    return slots, current


def _token_json(t: tk.Token) -> dict[str, Any]:
    return {"version": t.version, "key_id": t.key_id, "transceiver_id": t.transceiver_id,
            "port": t.port, "expiry": t.expiry, "nonce": t.nonce}


@token.command("mint")
@click.option("--transceiver", "txr_id", type=int, required=True, help="Transceiver id to route to.")
@click.option("--port", type=int, required=True, help="The transceiver's UDP port for this call.")
@click.option("--ttl", type=int, default=3600, show_default=True, help="Seconds the token may start flows.")
@click.option("--key-hex", default=None, help="Key as 32 hex digits (default: the relay's current key).")
@click.option("--key-id", type=click.IntRange(0, 255), default=None, help="Key id (default: current).")
@config_option
@name_option
@json_option
@friendly
def token_mint(txr_id: int, port: int, ttl: int, key_hex: str | None, key_id: int | None,
               config_path: Path | None, name: str | None, as_json: bool) -> None:
    """Mint a token that routes to TRANSCEIVER:PORT (prints the ufrag)."""
    slots, current = _keys_for(key_hex, key_id, config_path, name)
    assert current is not None
    ufrag = tk.mint(slots[current], key_id=current, transceiver_id=txr_id, port=port, ttl=ttl)
    emit(as_json, {"ufrag": ufrag, **_token_json(tk.decode(ufrag)[0])}, ufrag)


@token.command("inspect")
@click.argument("ufrag")
@click.option("--key-hex", default=None, help="Check the MAC with this key (32 hex digits).")
@click.option("--verify/--no-verify", default=None,
              help="Check MAC and expiry against the relay's keys map (default: when --key-hex is given).")
@config_option
@name_option
@json_option
@friendly
def token_inspect(ufrag: str, key_hex: str | None, verify: bool | None, config_path: Path | None,
                  name: str | None, as_json: bool) -> None:
    """Decode a ufrag; with keys, check it as the kernel would (exit 1 if it would drop it).

    A ufrag of the form "<token>:<remote>" (a STUN USERNAME) is accepted too.
    """
    ufrag = ufrag.split(":", 1)[0]
    try:
        decoded, mac = tk.decode(ufrag)
    except tk.TokenError as exc:
        raise click.ClickException(f"{exc.reason}: {exc}") from None
    data: dict[str, Any] = {**_token_json(decoded), "mac": f"{mac:016x}",
                            "expires_in": decoded.expiry - int(time.time())}
    check = key_hex is not None if verify is None else verify
    verdict = "not checked (give --key-hex or --verify)"
    failed: str | None = None
    if check:
        slots, _ = _keys_for(key_hex, decoded.key_id if key_hex else None, config_path, name) \
            if key_hex else (_view(config_path, name).keys(), None)
        try:
            tk.verify(ufrag, slots)
            verdict = "valid: the relay would create a flow"
        except tk.TokenError as exc:
            verdict = failed = f"{exc.reason}: {exc}"
    data["verdict"] = verdict
    text = table(["FIELD", "VALUE"], [[k, v] for k, v in data.items()])
    emit(as_json, data, text)
    if failed:
        raise SystemExit(1)


# --- probe -------------------------------------------------------------------------
@click.command(context_settings=CONTEXT)
@click.option("--relay", "relay_addr", required=True, metavar="HOST[:PORT]",
              help="The relay's public address (port default 3478). Probe from where clients are.")
@click.option("--token", "ufrag", default=None, help="A probe token (see `voxrelay token mint`).")
@click.option("--transceiver", "txr_id", type=int, default=None,
              help="Mint a probe token for this transceiver (keys and probe port from the directory).")
@click.option("--timeout", type=float, default=1.0, show_default=True, help="Seconds per attempt.")
@click.option("--attempts", type=click.IntRange(1, 10), default=3, show_default=True)
@config_option
@directory_option
@json_option
@friendly
def probe(relay_addr: str, ufrag: str | None, txr_id: int | None, timeout: float, attempts: int,
          config_path: Path | None, directory_url: str | None, as_json: bool) -> None:
    """Send a STUN Binding Request through relay -> transceiver and expect the answer.

    The request carries a routing token for the transceiver's probe port,
    where its probe responder answers (orchestrator/probe.py explains the
    design). Exits 0 when the answer comes back through the relay, 1 with
    the reason when it does not.
    """
    from orchestrator.probe import mint_probe_token
    from orchestrator.probe import probe as run_probe

    relay = parse_relay(relay_addr)
    if (ufrag is None) == (txr_id is None):
        raise click.UsageError("give exactly one of --token or --transceiver")
    if ufrag is None:
        assert txr_id is not None

        async def fetch(d: Directory) -> Any:
            return await d.get_transceiver(txr_id), await d.keyring()

        record, ring = _run(fetch, _directory(config_path, directory_url))
        if record is None:
            raise click.ClickException(f"transceiver {txr_id} is not in the directory (gone or expired)")
        if ring.current is None:
            raise click.ClickException("the directory has no token key yet")
        ufrag = mint_probe_token(ring.keys, ring.current, txr_id, record.probe_port)
    result = run_probe(relay, ufrag, timeout=timeout, attempts=attempts, transceiver_id=txr_id)
    if result.ok:
        text = (f"ok: transceiver {result.transceiver_id} answered through {result.relay} "
                f"in {result.rtt_ms:.2f} ms (seen as {result.mapped_address})")
    else:
        text = f"probe failed: {result.reason}"
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
    elif result.ok:
        click.echo(text)
    else:
        click.echo(text, err=True)
    if not result.ok:
        raise SystemExit(1)


def parse_relay(value: str) -> tuple[str, int]:
    from orchestrator.probe import parse_hostport

    return parse_hostport(value, 3478)


# --- orchestrator run ------------------------------------------------------------
@click.group(context_settings=CONTEXT)
def orchestrator() -> None:
    """Run the orchestrator: directory, map sync, /metrics."""


@orchestrator.command("run")
@config_option
@name_option
@click.option("--probe-relay", default=None, metavar="HOST[:PORT]",
              help="Probe every active transceiver through this relay address and export the results.")
@click.option("--probe-interval", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@click.option("--upkeep-interval", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds between rewrites of the config's clock offset (token expiry follows "
                   "NTP) and re-resolving the transceivers' next hops.")
@click.option("-v", "--verbose", is_flag=True, help="Log every map write.")
@friendly
def orchestrator_run(config_path: Path | None, name: str | None, probe_relay: str | None,
                     probe_interval: float, upkeep_interval: float, verbose: bool) -> None:
    """Keep the relay's maps equal to the directory; serve the directory API and /metrics.

    Takes over the maps pinned by `voxrelay relay load` (no reload): kill and
    restart it at will, the XDP program keeps forwarding meanwhile. Stops on
    SIGINT/SIGTERM and leaves the maps as they are.
    """
    from orchestrator.service import run_orchestrator

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = _config(config_path)
    if name:
        config.relay.name = name
    view = open_relay(config.relay.name)
    from orchestrator.upkeep import BpfRelayUpkeep

    upkeep = BpfRelayUpkeep(view)  # type: ignore[arg-type]

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready(running: Any) -> None:
            click.echo(f"orchestrator for relay {config.relay.name!r}: directory "
                       f"{config.orchestrator.directory}, metrics on "
                       f"{config.orchestrator.metrics_listen.rsplit(':', 1)[0]}:{running.metrics_port}",
                       err=True)

        await run_orchestrator(config, view, stop, probe_relay=probe_relay,
                               probe_interval=probe_interval, on_ready=ready,
                               upkeep=upkeep, upkeep_interval=upkeep_interval)

    try:
        asyncio.run(main())
    except OSError as exc:
        raise click.ClickException(f"cannot start: {exc.strerror or exc}") from None

