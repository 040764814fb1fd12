# SPDX-License-Identifier: Apache-2.0
"""``voxrelay lab up | status | down``: the demo's stack, kept running, callable from this host.

``voxrelay demo`` builds the lab, places one call and removes everything.
``lab up`` builds the same stack (``lab.stack.start_stack``, one relay) in a
background process and leaves it running, reachable from the host's own
network namespace so that a browser on this machine can call it:

* the signaling front on relay 1's public address serves HTTPS with a
  self-signed certificate (``lab.tlsfront``): a browser grants the microphone
  only to a secure page;
* a veth ``vxh-<suffix>`` joins the host namespace to the lab's client
  namespace (198.18.0.0/30, the RFC 2544 benchmarking range), the client
  namespace forwards and masquerades what comes from the host (so the relay
  sees the lab's client address, as in the demo), and the host gets one
  route: relay 1's VIP (/32) via that veth. The VIP is 192.0.2.1 unless the
  host itself uses 192.0.2.0/24 (then 198.51.100.1, else 203.0.113.1): the
  route must not take the host's own gateway or neighbours away;
* the host's end of the veth sends full checksums (TX checksum offload off):
  a packet that reaches the relay's native XDP with a partial checksum is
  redirected with a wrong one (docs/deployment.md, "veth").

Everything lives in a state directory (``--state-dir``, env
``VOXRELAY_LAB_DIR``, default /var/lib/voxrelay/lab), never in the checkout:
``lab.json`` (what runs: the background process, its services, namespaces,
pins, the host link), ``lab.log`` (the background process's output), the
certificate, the stack's logs, config and secrets. ``lab down`` stops the
background process (which tears the stack down), then removes whatever a
crashed one left (by the names in ``lab.json``), checks that nothing is left
and removes the state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

STATE_DIR_ENV = "VOXRELAY_LAB_DIR"
DEFAULT_STATE_DIR = Path("/var/lib/voxrelay/lab")
RECORD_NAME = "lab.json"
LOG_NAME = "lab.log"
HOST_IF_PREFIX = "vxh-"
CLIENT_HOST_IF = "host"
"""The client namespace's end of the host link."""
CLIENT_HOST_ADDRESS = "198.18.0.1"
HOST_ADDRESS = "198.18.0.2"
HOST_LINK_PREFIX = 30
NAT_TABLE = "voxrelay_lab_host"
UP_TIMEOUT = 240.0
"""Seconds ``lab up`` waits for the stack (bcc compiles and the model load are slow on 2 cores)."""
DOWN_TIMEOUT = 60.0
CLIENT_SECRET_SECONDS = 3600
"""Lifetime of the client secret ``lab up`` mints for the page (the transceiver's max is 7200)."""


class LabCtlError(RuntimeError):
    """A user-facing failure of ``lab up/status/down``: printed as one line."""


@dataclass
class LabRecord:
    """``lab.json``: what one kept-up lab runs, so that ``status`` and ``down`` can find it."""

    state: str = "starting"
    """starting | up | stopping | failed."""
    pid: int = 0
    """The background process that holds the stack (``python -m lab.labctl serve``)."""
    error: str = ""
    suffix: str = ""
    namespaces: list[str] = field(default_factory=list)
    relay_names: list[str] = field(default_factory=list)
    pin_dirs: list[str] = field(default_factory=list)
    services: dict[str, int] = field(default_factory=dict)
    """Service name -> pid (each the leader of its own process group)."""
    host_link: str = ""
    url: str = ""
    vip: str = ""
    api_key_file: str = ""
    certificate: str = ""
    spki: str = ""
    """base64 SHA-256 of the certificate's public key (Chromium's --ignore-certificate-errors-spki-list)."""
    started_at: float = 0.0


def state_dir_of(path: Path | None) -> Path:
    if path is not None:
        return path
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def read_record(state_dir: Path) -> LabRecord | None:
    path = state_dir / RECORD_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabCtlError(f"{path} is unreadable ({exc}); remove it after checking `ip netns`") from None
    known = LabRecord.__dataclass_fields__
    return LabRecord(**{k: v for k, v in raw.items() if k in known})


def write_record(state_dir: Path, record: LabRecord) -> None:
    path = state_dir / RECORD_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2, sort_keys=True))
    tmp.replace(path)  # readers never see half a record


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_alive(pid: int, marker: str) -> bool:
    """True when ``pid`` runs and its command line holds ``marker`` (a reused pid does not count)."""
    if pid <= 0:
        return False
    cmd = _cmdline(pid)
    if not cmd:
        return False
    with contextlib.suppress(OSError):
        # A zombie has a cmdline of "" already; state Z is dead for our purpose.
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return marker in cmd


def daemon_alive(record: LabRecord) -> bool:
    return process_alive(record.pid, "lab.labctl")


SERVICE_MARKERS = ("voxrelay.cli", "lab.tlsfront", "lab.tcpfront")


def service_alive(pid: int) -> bool:
    return any(process_alive(pid, m) for m in SERVICE_MARKERS)


# --- the host link --------------------------------------------------------------


def connect_host(topo: Any) -> str:
    """Join the host namespace to the lab's client namespace and route relay 1's VIP there.

    Returns the host end's name. Undone by deleting the client namespace
    (the veth pair, its addresses and the host's route go with it).
    """
    from lab.netns import ensure_address, ensure_route, ensure_veth, set_tx_checksum
    from orchestrator import hostnet

    host_if = f"{HOST_IF_PREFIX}{topo.suffix}"
    client = topo.client
    ensure_veth(host_if, CLIENT_HOST_IF, netns=None, peer_netns=client)
    ensure_address(host_if, f"{HOST_ADDRESS}/{HOST_LINK_PREFIX}", None)
    ensure_address(CLIENT_HOST_IF, f"{CLIENT_HOST_ADDRESS}/{HOST_LINK_PREFIX}", client)
    # The host's sockets would hand this veth partial checksums; forwarded by
    # the client namespace into the relay's native XDP and redirected, they
    # would reach the transceiver wrong (the veth trap, docs/deployment.md).
    set_tx_checksum(host_if, False, None)
    toward_relay = topo.relay.client_side.ifname
    for ifname in (CLIENT_HOST_IF, toward_relay):
        hostnet.set_forwarding(ifname, client)
    # Masquerade: the relay sees the lab's own client address, so nothing on the
    # relay or transceiver side needs a route back to the host's link.
    nft = {"nftables": [
        {"add": {"table": {"family": "ip", "name": NAT_TABLE}}},
        {"add": {"chain": {"family": "ip", "table": NAT_TABLE, "name": "postrouting",
                           "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}},
        {"add": {"rule": {"family": "ip", "table": NAT_TABLE, "chain": "postrouting", "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": CLIENT_HOST_IF}},
            {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": toward_relay}},
            {"masquerade": None}]}}},
    ]}
    from orchestrator.netlink import popen_in_netns

    proc = popen_in_netns(client, ["nft", "-j", "-f", "-"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(json.dumps(nft).encode(), timeout=30)
    if proc.returncode != 0:
        raise LabCtlError(f"nft (masquerade in {client}) failed: {err.decode(errors='replace').strip()}")
    vip = topo.relay.public.address
    ensure_route(f"{vip}/32", gateway=CLIENT_HOST_ADDRESS, ifname=host_if, netns=None)
    return host_if


PUBLIC_NET_CHOICES = ("192.0.2", "198.51.100", "203.0.113")
"""The RFC 5737 documentation /24s, in order of preference, for relay 1's public side."""


def host_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks this host's namespace has addresses in or routes to (not the default)."""
    from orchestrator import netlink

    nets: list[ipaddress.IPv4Network] = []
    with netlink.iproute(None) as ipr:
        nets.extend(ipaddress.IPv4Network(f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}",
                                          strict=False)
                    for addr in ipr.get_addr(family=socket.AF_INET))
        for route in ipr.get_routes(family=socket.AF_INET, table=254):
            dst = route.get_attr("RTA_DST")
            if dst and route["dst_len"] > 0:
                nets.append(ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False))
            gateway = route.get_attr("RTA_GATEWAY")
            if gateway:
                nets.append(ipaddress.IPv4Network(f"{gateway}/32"))
    return nets


def choose_public_net(taken: list[ipaddress.IPv4Network]) -> str:
    """The first documentation /24 the host does not use: the lab routes its VIP from the
    host, which must not take the host's own gateway or neighbours away from it."""
    link = ipaddress.IPv4Network(f"{CLIENT_HOST_ADDRESS}/{HOST_LINK_PREFIX}", strict=False)
    clash = [str(n) for n in taken if n.overlaps(link)]
    if clash:
        raise LabCtlError(f"this host already uses {', '.join(clash)}, which overlaps the lab's "
                          f"host link {link}; lab up cannot join this host")
    for prefix in PUBLIC_NET_CHOICES:
        net = ipaddress.IPv4Network(f"{prefix}.0/24")
        if not any(net.overlaps(n) for n in taken):
            return prefix
    raise LabCtlError("this host uses all of 192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24; "
                      "lab up needs one of them free for the relay's VIP")


def host_links() -> list[str]:
    """Links in the host namespace that a kept-up lab made (``vxh-*``)."""
    from orchestrator import netlink

    with netlink.iproute(None) as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    return sorted(n for n in names if n and n.startswith(HOST_IF_PREFIX))


# --- the background process -------------------------------------------------------


async def keep_up(state_dir: Path) -> None:
    """Start the stack, join it to the host, record it, and hold it until cancelled."""
    from lab.stack import PrintProgress, StackOptions, start_stack
    from lab.tlsfront import make_certificate, spki_fingerprint
    from orchestrator import pins

    record = LabRecord(pid=os.getpid(), started_at=time.time())
    write_record(state_dir, record)
    try:
        # Relay 1's public address is fixed by lab.topology; the certificate names it.
        from lab.topology import Lab

        public_net = await asyncio.to_thread(lambda: choose_public_net(host_networks()))
        vip_address = f"{public_net}.1"
        cert, key = make_certificate(state_dir / "tls", vip_address)
        record.certificate = str(cert)
        record.spki = spki_fingerprint(cert)
        options = StackOptions(relays=1, workdir=state_dir / "stack", signaling_tls=(cert, key),
                               public_nets=(public_net, "198.51.100" if public_net != "198.51.100"
                                            else "203.0.113"))
        async with start_stack(options, PrintProgress(sys.stdout)) as stack:
            topo = stack.topology
            assert isinstance(topo, Lab)
            if topo.relay.public.address != vip_address:
                raise LabCtlError(f"relay 1's address is {topo.relay.public.address}, "
                                  f"not the {vip_address} the certificate names")
            record.suffix = topo.suffix
            record.namespaces = list(topo.namespaces)
            record.relay_names = topo.relay_names()
            record.pin_dirs = [str(pins.pin_dir_for(n)) for n in record.relay_names]
            record.services = {name: svc.proc.pid for name, svc in stack.services.items()
                               if svc.proc is not None}
            record.host_link = f"{HOST_IF_PREFIX}{topo.suffix}"
            write_record(state_dir, record)  # before connecting: down must find the link too
            await asyncio.to_thread(connect_host, topo)
            relay = stack.relays[0]
            record.vip = f"{relay.public_address}:{relay.public_port}"
            record.url = stack.signaling_url + "/"
            assert stack.directory_secret_file is not None
            record.api_key_file = str(stack.workdir / "api-key")
            record.state = "up"
            write_record(state_dir, record)
            print(f"lab up: {record.url}", flush=True)
            await asyncio.Event().wait()  # until SIGTERM (lab down) cancels us
    except (asyncio.CancelledError, KeyboardInterrupt):
        record.state = "stopping"
        write_record(state_dir, record)
        raise
    except BaseException as exc:
        record.state = "failed"
        record.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        write_record(state_dir, record)
        raise


def serve_main(state_dir: Path) -> int:
    from lab.demo import _run

    try:
        _run(keep_up(state_dir))
    except KeyboardInterrupt:
        print("lab stopped: the stack is torn down", flush=True)
        return 0
    return 1


# --- sweeping -------------------------------------------------------------------


def leftovers(record: LabRecord) -> list[str]:
    """What of ``record`` still exists: namespaces, the host link, pins, processes."""
    from lab.netns import link_exists, list_netns

    left = []
    present = set(list_netns())
    left += [f"namespace {n}" for n in record.namespaces if n in present]
    if record.host_link and link_exists(record.host_link, None):
        left.append(f"link {record.host_link}")
    left += [f"pin {p}" for p in record.pin_dirs if Path(p).exists()]
    if daemon_alive(record):
        left.append(f"process {record.pid} (lab.labctl serve)")
    left += [f"process {pid} ({name})" for name, pid in record.services.items() if service_alive(pid)]
    return left


def sweep(record: LabRecord) -> None:
    """Remove what a background process that died without its teardown left behind."""
    from lab.netns import delete_netns, link_exists, list_netns
    from orchestrator import netlink

    for pid in record.services.values():
        if service_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    present = set(list_netns())
    for ns in record.namespaces:
        if ns in present:
            delete_netns(ns)  # its links, XDP programs and nft tables go with it
    if record.host_link and link_exists(record.host_link, None):
        with netlink.iproute(None) as ipr:
            ipr.link("del", ifname=record.host_link)
    for pin_dir in record.pin_dirs:
        shutil.rmtree(pin_dir, ignore_errors=True)
    if record.pin_dirs:
        with contextlib.suppress(OSError):  # not empty (another relay's pins) or gone
            Path(record.pin_dirs[0]).parent.rmdir()


def stop_daemon(record: LabRecord, timeout: float) -> bool:
    """SIGTERM the background process and wait for its teardown; SIGKILL after ``timeout``.
    True when it tore down by itself."""
    if not daemon_alive(record):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while daemon_alive(record) and time.monotonic() < deadline:
        time.sleep(0.2)
    if daemon_alive(record):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGKILL)
        return False
    return True


# --- the client side: what a backend and a page do ------------------------------------


def mint_client_secret(url: str, api_key_file: Path, seconds: int = CLIENT_SECRET_SECONDS,
                       timeout: float = 10.0) -> dict[str, Any]:
    """POST /v1/realtime/client_secrets with the lab's API key, from this namespace,
    as an application backend does: ``{"value": "ek_...", "expires_at": ...}``."""
    from voxrelay.secrets import load_secrets

    api_key = load_secrets(api_key_file)[0]
    body = json.dumps({"expires_after": {"seconds": seconds}}).encode()
    request = urllib.request.Request(  # noqa: S310 - the lab's own https:// URL
        url.rstrip("/") + "/v1/realtime/client_secrets", data=body, method="POST",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})
    # The lab's certificate is self-signed: this client knows it is talking to its own lab.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            payload: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise LabCtlError(f"minting a client secret at {url}: {exc.code} "
                          f"{exc.read().decode(errors='replace')[:200]}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LabCtlError(f"this host cannot reach the lab's signaling at {url}: {reason}") from None
    return payload


# --- the commands ---------------------------------------------------------------


def _failed_log(state_dir: Path) -> Path:
    """Where ``_cleanup_failed`` keeps a failed start's log (the state directory is removed)."""
    return state_dir.parent / f"{state_dir.name}-failed.log"


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise LabCtlError(f"lab {what} needs root: it manages network namespaces and XDP")


def start_lab(state_dir: Path, timeout: float) -> tuple[LabRecord, dict[str, Any]]:
    """Start the background process, wait until the lab is up, mint a client secret."""
    _need_root("up")
    record = read_record(state_dir)
    if record is not None:
        if daemon_alive(record):
            raise LabCtlError(f"a lab is already up (pid {record.pid}, {record.url or record.state}); "
                              "see `voxrelay lab status`, stop it with `voxrelay lab down`")
        raise LabCtlError(f"{state_dir} holds a lab whose process is gone; "
                          "run `voxrelay lab down` to remove what it left")
    others = host_links()
    if others:
        raise LabCtlError(f"another kept-up lab owns the route to the lab's VIP ({', '.join(others)}); "
                          "stop it with `voxrelay lab down --state-dir DIR`, or delete the link")
    state_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("stack", "tls"):
        shutil.rmtree(state_dir / stale, ignore_errors=True)
    from lab.stack import source_root

    with open(state_dir / LOG_NAME, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lab.labctl", "serve", "--state-dir", str(state_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd="/",
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(source_root())})
    deadline = time.monotonic() + timeout
    while True:
        record = read_record(state_dir)
        if record is not None and record.state == "up":
            break
        code = proc.poll()
        if code is not None or (record is not None and record.state == "failed"):
            proc.wait(DOWN_TIMEOUT)
            reason = record.error if record is not None and record.error else f"exit status {code}"
            _cleanup_failed(state_dir)
            raise LabCtlError(f"the lab did not come up: {reason} "
                              f"(its log: {_failed_log(state_dir)})")
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(DOWN_TIMEOUT)
            _cleanup_failed(state_dir)
            raise LabCtlError(f"the lab was not up after {timeout:.0f} s; it was stopped "
                              f"(its log: {_failed_log(state_dir)})")
        time.sleep(0.25)
    try:
        secret = mint_client_secret(record.url, Path(record.api_key_file))
    except LabCtlError:
        stop_lab(state_dir, DOWN_TIMEOUT)
        raise
    return record, secret


def _cleanup_failed(state_dir: Path) -> None:
    """After a failed start: sweep by the record, keep the log (moved beside the state dir)."""
    record = read_record(state_dir)
    if record is not None:
        stop_daemon(record, DOWN_TIMEOUT)
        sweep(record)
    log = state_dir / LOG_NAME
    if log.exists():
        shutil.copy(log, _failed_log(state_dir))
    shutil.rmtree(state_dir, ignore_errors=True)


def stop_lab(state_dir: Path, timeout: float) -> list[str]:
    """Stop the lab and remove everything it made; returns what was removed (for the message)."""
    _need_root("down")
    record = read_record(state_dir)
    if record is None:
        return []
    removed = [f"{len(record.namespaces)} namespaces", f"link {record.host_link}" if record.host_link else "",
               f"{len(record.services) + 1} processes", f"pins of {', '.join(record.relay_names)}"]
    stop_daemon(record, timeout)
    sweep(record)
    left = leftovers(record)
    if left:
        raise LabCtlError(f"lab down could not remove: {', '.join(left)}")
    shutil.rmtree(state_dir, ignore_errors=True)
    return [r for r in removed if r]


def lab_status(state_dir: Path) -> dict[str, Any]:
    record = read_record(state_dir)
    if record is None:
        return {"state": "down", "state_dir": str(state_dir)}
    from lab.netns import link_exists, list_netns

    present = set(list_netns())
    alive = daemon_alive(record)
    info: dict[str, Any] = {
        "state": record.state if alive else f"{record.state} (process gone: run `voxrelay lab down`)",
        "state_dir": str(state_dir), "pid": record.pid, "pid_alive": alive,
        "url": record.url, "vip": record.vip, "host_link": record.host_link,
        "host_link_present": bool(record.host_link) and link_exists(record.host_link, None),
        "api_key_file": record.api_key_file, "certificate": record.certificate, "spki": record.spki,
        "namespaces": {n: n in present for n in record.namespaces},
        "services": {name: {"pid": pid, "alive": service_alive(pid)}
                     for name, pid in record.services.items()},
        "uptime_seconds": round(time.time() - record.started_at) if record.started_at else None,
    }
    if alive and record.relay_names:
        from lab.stack import read_relay_stats

        try:
            stats = read_relay_stats(record.relay_names[0])
            info["relay_counters"] = {k: v for k, v in stats.items() if v}
        except Exception as exc:  # noqa: BLE001 - status reports, it does not fail
            info["relay_counters"] = {"unreadable": str(exc)}
    return info


def _friendly(fn: Any) -> Any:
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LabCtlError as exc:
            raise click.ClickException(str(exc)) from None
        except PermissionError as exc:
            raise click.ClickException(f"permission denied ({exc.filename or exc}): run as root") from None
        except OSError as exc:
            raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from None
    return wrapper


STATE_OPTION = click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help=f"Where the lab keeps its record, logs, certificate and secrets "
         f"(env {STATE_DIR_ENV}; default {DEFAULT_STATE_DIR}).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def lab() -> None:
    """Keep the demo's stack running, callable from this host's browser.

    \b
      voxrelay lab up       build it in the background; print the page's URL
      voxrelay lab status   what runs (processes, namespaces, relay counters)
      voxrelay lab down     stop it and remove everything it made
    """


@lab.command(name="up")
@STATE_OPTION
@click.option("--timeout", type=click.FloatRange(min=10), default=UP_TIMEOUT, show_default=True,
              help="Seconds to wait for the stack to come up.")
@click.option("--json", "as_json", is_flag=True, help="Print the lab's record and client secret as JSON.")
@_friendly
def up_command(state_dir: Path | None, timeout: float, as_json: bool) -> None:
    """Build the lab in the background and print how to call it.

    \b
    The lab is the demo's: client, relay, transceiver and model namespaces, the
    XDP relay, the orchestrator with its embedded directory, a transceiver and
    the offline model. This host's namespace reaches relay 1's VIP
    (192.0.2.1, or 198.51.100.1 / 203.0.113.1 when this host uses
    192.0.2.0/24) through a veth vxh-<suffix>; the signaling front serves the
    call page over HTTPS with a self-signed certificate (so a browser grants
    the microphone). A client secret (ek_...) minted with the lab's API key
    is printed: paste it into the page's "API token" field, or open the
    printed ?token= URL. Needs root; stop it with `voxrelay lab down`.
    """
    directory = state_dir_of(state_dir)
    record, secret = start_lab(directory, timeout)
    if as_json:
        click.echo(json.dumps({"lab": asdict(record), "client_secret": secret}, indent=2))
        return
    token = secret.get("value", "")
    expires = secret.get("expires_at")
    minutes = f"{(float(expires) - time.time()) / 60:.0f} min" if isinstance(expires, (int, float)) else "?"
    click.echo(f"lab up (pid {record.pid}); state in {directory}\n"
               f"  call page      {record.url}\n"
               f"  relay VIP      {record.vip}/udp, routed from this host via {record.host_link}\n"
               f"  client secret  {token}  (expires in {minutes})\n"
               f"  open           {record.url}?token={token}\n"
               f"  API key        {record.api_key_file}  (the backend's credential; pages never see it)\n"
               f"  mint another   curl -sk -X POST {record.url}v1/realtime/client_secrets "
               f"-H \"Authorization: Bearer $(cat {record.api_key_file})\"\n"
               f"  certificate    {record.certificate}  (self-signed: accept it once in the browser)\n"
               f"  or trust it    chromium --ignore-certificate-errors-spki-list={record.spki}\n"
               f"  stop           voxrelay lab down")


@lab.command(name="status")
@STATE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
@_friendly
def status_command(state_dir: Path | None, as_json: bool) -> None:
    """Show what the kept-up lab runs: its process, services, namespaces, counters."""
    info = lab_status(state_dir_of(state_dir))
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    if info["state"] == "down":
        click.echo(f"no lab is up (nothing in {info['state_dir']})")
        return
    lines = [f"state        {info['state']} (pid {info['pid']}, up {info['uptime_seconds']} s)",
             f"call page    {info['url']}", (f"relay VIP    {info['vip']} via {info['host_link']}"
             f" ({'present' if info['host_link_present'] else 'MISSING'})")]
    lines += [f"namespace    {n} ({'present' if ok else 'MISSING'})" for n, ok in info["namespaces"].items()]
    lines += [f"service      {n:<16} pid {s['pid']:<8} {'running' if s['alive'] else 'EXITED'}"
              for n, s in info["services"].items()]
    counters = info.get("relay_counters") or {}
    if counters:
        lines.append("relay        " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    click.echo("\n".join(lines))


@lab.command(name="down")
@STATE_OPTION
@click.option("--timeout", type=click.FloatRange(min=1), default=DOWN_TIMEOUT, show_default=True,
              help="Seconds the background process has to tear down before it is killed.")
@_friendly
def down_command(state_dir: Path | None, timeout: float) -> None:
    """Stop the lab and remove everything it made (namespaces, links, pins, processes, state)."""
    directory = state_dir_of(state_dir)
    removed = stop_lab(directory, timeout)
    if not removed:
        click.echo(f"no lab is up (nothing in {directory})")
        return
    click.echo(f"lab down: removed {', '.join(removed)} and {directory}")


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "serve" and argv[1] == "--state-dir":
        return serve_main(Path(argv[2]))
    print("usage: python -m lab.labctl serve --state-dir DIR (started by `voxrelay lab up`)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
