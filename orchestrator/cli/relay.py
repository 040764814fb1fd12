# SPDX-License-Identifier: Apache-2.0
"""``voxrelay relay``: load, replace, unload and inspect the XDP relay (thin over ``loader``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click
from pyroute2.netlink.exceptions import NetlinkError

from orchestrator import bpfsys, loader, netlink
from orchestrator.cli import common
from orchestrator.cli.common import (
    CONTEXT,
    config_option,
    emit,
    friendly,
    json_option,
    name_option,
    table,
)
from orchestrator.relay import require_bpf

T = TypeVar("T")

_netns_option = click.option("--netns", default=None,
                             help="Network namespace holding the interfaces.")


def _loader_call(fn: Callable[[], T]) -> T:
    require_bpf("loading or inspecting the XDP relay")
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
@_netns_option
@click.option("--replace", "do_replace", is_flag=True,
              help="Swap the running program atomically, keeping maps and flows; "
                   "when none is loaded, load it.")
@json_option
@friendly
def relay_load(config_path: Path | None, name: str | None, mode: str | None, netns: str | None,
               do_replace: bool, as_json: bool) -> None:
    """Compile the relay, pin its maps, write its config, attach to both interfaces."""
    config = common.config_from(config_path)
    if name:
        config.relay.name = name

    def go() -> loader.RelayStatus:
        if do_replace:
            try:
                return loader.replace(config.relay, netns=netns)
            except loader.NotLoadedError:
                # Nothing to swap: a fresh node or after `relay unload`. The
                # DaemonSet's one command (load --replace, then the orchestrator)
                # relies on this to start there as after a restart.
                pass
        return loader.load(config.relay, netns=netns, mode=mode)

    st = _loader_call(go)
    emit(as_json, st.to_dict(), _status_text(st))


@relay.command("unload")
@config_option
@name_option
@_netns_option
@friendly
def relay_unload(config_path: Path | None, name: str | None, netns: str | None) -> None:
    """Detach the relay and remove its pins (its flows end; transceivers are untouched)."""
    relay_name = name or common.config_from(config_path).relay.name

    def go() -> bool:
        return loader.unload(relay_name, netns=netns)

    found = _loader_call(go)
    click.echo(f"relay {relay_name!r} " + ("unloaded" if found else "was not loaded"))


@relay.command("status")
@config_option
@name_option
@_netns_option
@json_option
@friendly
def relay_status(config_path: Path | None, name: str | None, netns: str | None,
                 as_json: bool) -> None:
    """What is attached and pinned for this relay (exit 1 when not loaded), and
    the ICE-TCP front's connections, frames and refusals when it runs here."""
    relay_name = name or common.config_from(config_path).relay.name

    def go() -> loader.RelayStatus:
        return loader.status(relay_name, netns=netns)

    st = _loader_call(go)
    front_path, front = common.tcpfront_summary(config_path, name)
    text = _status_text(st)
    if front is not None:
        text += "\n\n" + _tcpfront_line(front_path, front)
    emit(as_json, {**st.to_dict(), "tcpfront": front}, text)
    if not st.loaded:
        raise SystemExit(1)


def _status_text(st: loader.RelayStatus) -> str:
    if not st.loaded and not st.maps:
        return f"relay {st.name!r} is not loaded (run `voxrelay relay load`)"
    head = (f"relay {st.name!r}: {'loaded' if st.loaded else 'NOT attached'}, program "
            f"{st.prog_name or '-'} id {st.prog_id or '-'}, mode {st.mode or '-'}")
    ifs = table(["INTERFACE", "IFINDEX", "LINK", "ATTACHED"],
                [[i.ifname, i.ifindex, i.link_id, "yes" if i.attached else "no"]
                 for i in st.interfaces])
    mps = table(["MAP", "TYPE", "MAX_ENTRIES"], [[m.name, m.type, m.max_entries] for m in st.maps])
    return f"{head}\n\n{ifs}\n\n{mps}"


def _tcpfront_line(path: Path, front: dict[str, dict[str, int]]) -> str:
    """One line of the front's state; ``voxrelay maps stats`` has every counter."""
    c, f = front["connections"], front["frames"]
    refused = sum(front["refused"].values())
    dropped = sum(front["dropped"].values())
    top = sorted(((v, r) for r, v in front["refused"].items() if v), reverse=True)[:3]
    reasons = f" ({', '.join(f'{r} {v}' for v, r in top)})" if top else ""
    return (f"ICE-TCP front: {c['open']} open; {c['accepted']} accepted, "
            f"{c['established']} established, {refused} refused{reasons}; frames "
            f"{f['to_transceiver']} to transceivers, {f['to_client']} to clients, "
            f"{dropped} dropped ({path})")
