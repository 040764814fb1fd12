# SPDX-License-Identifier: Apache-2.0
"""The scale-out lab: N relays x M transceiver hosts on one Redis directory.

Issue #14's scale-out part. Unlike ``lab.topology.Lab`` (1-2 relays, one
transceiver namespace) every relay and every transceiver host here is a
namespace of its own, and hosts of either kind come and go at run time::

    client (vxc-S0)  r<i> 198.18.<i>.2 <--> pub 198.18.<i>.1 = VIP   relay i (vxr-S<i>)
                     lb   203.0.113.2 <--+  priv 10.77.0.<10+i> <--+
                                         |                          |  bridge "lan" in the
    switch (vxs-S0): lb 203.0.113.1 -----+  (the load balancer:     |  switch namespace
                     lan 10.77.0.250        one lab.tcpfront per    |
                                            transceiver host)       |
    transceiver host j (vxt-S<j>): eth 10.77.0.<20+j> <-------------+
    model (vxm-S0): eth 10.77.0.4 <---------------------------------+

* One ``redis-server`` (``lab.redis_server``) on a unix socket in the
  workdir is the directory of every orchestrator and transceiver (the socket
  is a file: every namespace reaches it). Its password is the directory secret.
* The client reaches the transceivers' HTTP only through the switch's
  signaling fronts (port 8080 + j on 203.0.113.1, no IP forwarding), and
  their media only through the relays: it has no route to 10.77.0.0/24.
* Placement (``place``) is the load balancer's: the live host, active in the
  directory, with the fewest calls the lab placed on it.
* Relays reuse ``orchestrator.loader`` and the relay limits of ``lab.relaylab``;
  services reuse ``lab.stack.Service``; the neighbours, XDP_PASS peers and
  checksum settings follow ``lab.topology``'s reasons.
* Draining a relay adds every source to its ``blocked_source_prefixes``
  (``loader.replace``): the flows it has keep going, new ones are refused,
  so a new call's ICE takes another relay candidate of the answer.

Every namespace, pin and process is recorded before it is made, and
``close`` (also on a failure half-way, and at interpreter exit) removes all of
it. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

from lab.netns import (
    create_netns,
    delete_netns,
    ensure_address,
    ensure_bridge,
    ensure_neighbour,
    ensure_veth,
    set_link_up,
    set_tx_checksum,
)
from lab.redis_server import RedisServer
from lab.relaylab import LAB_LIMITS
from lab.stack import Service, StackError, _write_toml, python_argv, source_root, tcp_open
from orchestrator import hostnet, loader, netlink, pins
from voxrelay.config import RelayConfig

PUBLIC_PORT = 3478
SIGNALING_PORT = 8080
FRONT_BASE_PORT = 8080
"""Host j's signaling front listens on 203.0.113.1:(FRONT_BASE_PORT + j)."""
MODEL_PORT = 50051
PROBE_PORT = 3479
LAN_BRIDGE = "lan"
LAN_ADDRESS = "10.77.0.250"
MODEL_ADDRESS = "10.77.0.4"
LB_ADDRESS = "203.0.113.1"
LB_CLIENT_ADDRESS = "203.0.113.2"
DRAIN_PREFIXES = ("0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1")
"""Every source address: a drained relay's ``blocked_source_prefixes`` add them.
Not just the client's side of that relay: a client socket bound to another
address of the client (its other interfaces) reaches the relay's VIP too."""
MAX_HOSTS = 9
"""Per kind: one hex digit of the namespace name, one octet block of the LAN."""


class ScaleOutError(RuntimeError):
    """A step of the scale-out lab failed; the message names it."""


@dataclass
class RelayNode:
    index: int
    name: str
    netns: str
    public_address: str
    private_address: str
    client_address: str
    client_if: str
    public_mac: str = ""
    private_mac: str = ""
    client_mac: str = ""
    orchestrator: Service | None = None
    draining: bool = False

    @property
    def vip(self) -> tuple[str, int]:
        return self.public_address, PUBLIC_PORT

    def relay_config(self, **overrides: Any) -> RelayConfig:
        base = RelayConfig(name=self.name, public_interface="pub", private_interface="priv",
                           public_address=self.public_address,
                           private_address=self.private_address, public_port=PUBLIC_PORT,
                           public_tcp_ports=[])
        return replace(base, **overrides)


@dataclass
class TransceiverHost:
    index: int
    """Also its transceiver id."""
    netns: str
    address: str
    mac: str = ""
    relays: list[str] = field(default_factory=list)
    """The relay VIPs it advertises, nearest first."""
    service: Service | None = None
    front: Service | None = None
    calls: int = 0
    """Calls the lab's load balancer placed here and that are not hung up."""
    draining: bool = False

    @property
    def id(self) -> int:
        return self.index

    @property
    def front_port(self) -> int:
        return FRONT_BASE_PORT + self.index


@dataclass
class ScaleOutLab:
    """``async with ScaleOutLab() as lab:`` builds ``relays`` x ``hosts`` and starts everything."""

    relays: int = 3
    hosts: int = 3
    xdp_mode: str = "native"
    start_timeout: float = 60.0
    model_streams: int = 16
    heartbeat_grace_seconds: float = 4.0
    suffix: str = field(default_factory=lambda: secrets.token_hex(3)[:5])

    workdir: Path = field(init=False)
    relay_nodes: dict[int, RelayNode] = field(init=False, default_factory=dict)
    host_nodes: dict[int, TransceiverHost] = field(init=False, default_factory=dict)
    redis: RedisServer | None = field(init=False, default=None)
    secret: str = field(init=False, default="")
    api_key: str = field(init=False, default="")
    _namespaces: list[str] = field(init=False, default_factory=list)
    _relay_names: list[tuple[str, str]] = field(init=False, default_factory=list)
    _made: dict[str, int] = field(init=False, default_factory=lambda: {"relay": 0, "host": 0})
    _services: list[Service] = field(init=False, default_factory=list)
    _closed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if not (1 <= self.relays <= MAX_HOSTS and 1 <= self.hosts <= MAX_HOSTS):
            raise ValueError(f"relays and hosts must be 1..{MAX_HOSTS}")
        s = self.suffix
        self.client = f"vxc-{s}0"
        self.switch = f"vxs-{s}0"
        self.model = f"vxm-{s}0"
        self.workdir = Path(tempfile.mkdtemp(prefix="voxrelay-lab-scaleout-"))

    # --- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> Self:
        atexit.register(self.close_sync)
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            # The workdir goes with the lab: what each service said, before it does.
            sys.stderr.write("\n".join(svc.log_tail(30) for svc in self._services) + "\n")
        await self.close()

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    @property
    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(source_root())}

    def _netns(self, name: str) -> str:
        self._namespaces.append(name)  # recorded first: close removes it even half-made
        create_netns(name)
        return name

    def _service(self, name: str, netns: str | None, argv: list[str]) -> Service:
        svc = Service(name, netns, argv, self.workdir / f"{name}.log", env=self.env)
        self._services.append(svc)
        return svc

    async def start(self) -> None:
        from voxrelay.secrets import write_secret_file

        secret_file = self.workdir / "directory.secret"
        self.secret = write_secret_file(secret_file)
        self.api_key = write_secret_file(self.workdir / "api-key")
        self.redis = RedisServer(self.workdir, appendfsync="everysec", password=self.secret)
        await asyncio.to_thread(self.redis.start)
        await asyncio.to_thread(self._build_core)
        model = self._service("model", self.model, python_argv(
            "model", "serve", "--listen", f"{MODEL_ADDRESS}:{MODEL_PORT}", "--reply", "echo",
            "--max-streams", str(self.model_streams)))
        model.start()
        await model.wait_ready(lambda: tcp_open(self.model, MODEL_ADDRESS, MODEL_PORT),
                               self.start_timeout)
        for _ in range(self.relays):
            await self.add_relay(probe=False)
        for _ in range(self.hosts):
            await self.add_transceiver_host()

    def _build_core(self) -> None:
        for ns in (self.client, self.switch, self.model):
            self._netns(ns)
        ensure_bridge(LAN_BRIDGE, self.switch)
        ensure_address(LAN_BRIDGE, f"{LAN_ADDRESS}/24", self.switch)
        set_tx_checksum(LAN_BRIDGE, False, self.switch)
        ensure_veth("lb", "lb", netns=self.switch, peer_netns=self.client)
        ensure_address("lb", f"{LB_ADDRESS}/24", self.switch)
        ensure_address("lb", f"{LB_CLIENT_ADDRESS}/24", self.client)
        ensure_veth("eth", "m", netns=self.model, peer_netns=self.switch)
        set_link_up("m", self.switch, master=LAN_BRIDGE)
        ensure_address("eth", f"{MODEL_ADDRESS}/24", self.model)
        set_tx_checksum("eth", False, self.model)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for svc in reversed(self._services):
            with contextlib.suppress(Exception):
                await svc.stop(grace=3.0)
        await asyncio.to_thread(self._teardown)

    def close_sync(self) -> None:
        """Last resort at interpreter exit: kill what is left, remove the rest."""
        if self._closed:
            return
        self._closed = True
        for svc in self._services:
            if svc.proc is not None and svc.proc.poll() is None:
                svc.proc.kill()
        self._teardown()

    def _teardown(self) -> None:
        errors: list[str] = []
        for name, ns in self._relay_names:
            try:
                loader.unload(name, netns=ns if netlink.netns_exists(ns) else None)
            except Exception as exc:  # noqa: BLE001 - keep tearing down; report at the end
                errors.append(f"unload {name}: {exc}")
            shutil.rmtree(pins.pin_dir_for(name), ignore_errors=True)
        with contextlib.suppress(OSError):  # not empty: another relay's pins
            pins.pin_dir_for("x").parent.rmdir()
        for ns in reversed(self._namespaces):
            try:
                delete_netns(ns)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"delete netns {ns}: {exc}")
        if self.redis is not None:
            self.redis.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close_sync)
        if errors:
            raise ScaleOutError("scale-out lab teardown left things behind: " + "; ".join(errors))

    # --- relays ---------------------------------------------------------------

    def _next_index(self, kind: str) -> int:
        """Indexes are never reused: a removed host's name and addresses stay retired."""
        self._made[kind] += 1
        if self._made[kind] > MAX_HOSTS:
            raise ScaleOutError(f"at most {MAX_HOSTS} of each kind per lab")
        return self._made[kind]

    def _build_relay(self, node: RelayNode) -> None:
        ns = self._netns(node.netns)
        pub, client_if = ensure_veth("pub", node.client_if, netns=ns, peer_netns=self.client)
        priv, _ = ensure_veth("priv", f"r{node.index}", netns=ns, peer_netns=self.switch)
        set_link_up(f"r{node.index}", self.switch, master=LAN_BRIDGE)
        ensure_address("pub", f"{node.public_address}/24", ns)
        ensure_address(node.client_if, f"{node.client_address}/24", self.client)
        ensure_address("priv", f"{node.private_address}/24", ns)
        node.public_mac, node.private_mac, node.client_mac = pub.mac, priv.mac, client_if.mac
        ensure_neighbour("pub", node.client_address, client_if.mac, netns=ns)
        ensure_neighbour(node.client_if, node.public_address, pub.mac, netns=self.client)
        for host in self.host_nodes.values():
            self._link_neighbours(node, host)
        for ifname in ("pub", "priv"):
            hostnet.set_forwarding(ifname, ns)
        # The peers that receive the relay's XDP_REDIRECT (lab/topology.py).
        hostnet.attach_xdp_pass(node.client_if, self.client, self.xdp_mode)
        hostnet.attach_xdp_pass(f"r{node.index}", self.switch, self.xdp_mode)
        set_tx_checksum(node.client_if, False, self.client)
        set_tx_checksum("priv", False, ns)
        self._relay_names.append((node.name, ns))
        loader.load(node.relay_config(), netns=ns, limits=LAB_LIMITS, mode=self.xdp_mode)

    def _link_neighbours(self, relay: RelayNode, host: TransceiverHost) -> None:
        ensure_neighbour("priv", host.address, host.mac, netns=relay.netns)
        ensure_neighbour("eth", relay.private_address, relay.private_mac, netns=host.netns)

    async def add_relay(self, *, probe: bool = True) -> RelayNode:
        """A new relay: namespace, links, the XDP relay and its orchestrator on the
        Redis directory; ready when a probe through it reaches every live host."""
        i = self._next_index("relay")
        node = RelayNode(index=i, name=f"lab-{self.suffix}0-{i}", netns=f"vxr-{self.suffix}{i:x}",
                         public_address=f"198.18.{i}.1", private_address=f"10.77.0.{10 + i}",
                         client_address=f"198.18.{i}.2", client_if=f"r{i}")
        self.relay_nodes[i] = node
        await asyncio.to_thread(self._build_relay, node)
        config = _write_toml(self.workdir / f"orchestrator-{i}.toml", {
            "relay": {"name": node.name},
            "orchestrator": {"directory": self.redis_url, "listen": "127.0.0.1:7480",
                             "metrics_listen": "127.0.0.1:9478",
                             "directory_secret_file": str(self.workdir / "directory.secret"),
                             "state_dir": str(self.workdir / f"state-{i}"),
                             "heartbeat_grace_seconds": self.heartbeat_grace_seconds}})
        node.orchestrator = self._service(f"orchestrator-{i}", node.netns, python_argv(
            "orchestrator", "run", "-v", "--config", str(config)))
        node.orchestrator.start()
        if probe:
            for host in self.live_hosts():
                await self.wait_probe(node, host)
        return node

    def live_relays(self) -> list[RelayNode]:
        return [r for r in self.relay_nodes.values() if not r.draining]

    async def drain_relay(self, node: RelayNode) -> None:
        """No new flows through ``node``: every source is blocked for a new flow
        (the check runs only when a flow is created), so its flows go on."""
        blocked = [*RelayConfig().blocked_source_prefixes, *DRAIN_PREFIXES]
        await asyncio.to_thread(loader.replace, node.relay_config(blocked_source_prefixes=blocked),
                                netns=node.netns, limits=LAB_LIMITS)
        node.draining = True

    async def drain_and_remove_relay(self, node: RelayNode, *, quiet_seconds: float = 1.0,
                                     timeout: float = 60.0,
                                     before_remove: Callable[[], Awaitable[None]] | None = None
                                     ) -> None:
        """Drain ``node``, wait (at most ``timeout``) until it forwards nothing for
        ``quiet_seconds`` (its calls ended), then unload it and remove it."""
        if not node.draining:
            await self.drain_relay(node)
        if before_remove is not None:
            await before_remove()
        deadline = time.monotonic() + timeout
        last = self.forwarded(node)
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < quiet_seconds:
            if time.monotonic() > deadline:
                raise ScaleOutError(f"relay {node.name} still forwards after {timeout} s")
            await asyncio.sleep(0.2)
            now = self.forwarded(node)
            if now != last:
                last, quiet_since = now, time.monotonic()
        if node.orchestrator is not None:
            await node.orchestrator.stop()
        await asyncio.to_thread(self._remove_relay, node)
        del self.relay_nodes[node.index]

    def _remove_relay(self, node: RelayNode) -> None:
        loader.unload(node.name, netns=node.netns)
        shutil.rmtree(pins.pin_dir_for(node.name), ignore_errors=True)
        delete_netns(node.netns)  # its veths go with it
        self._relay_names.remove((node.name, node.netns))
        self._namespaces.remove(node.netns)

    def forwarded(self, node: RelayNode) -> int:
        from lab.stack import read_relay_stats

        stats = read_relay_stats(node.name)
        return sum(v for k, v in stats.items() if k.startswith("fwd_"))

    def relay_transceivers(self, node: RelayNode) -> dict[int, str]:
        from orchestrator.pinview import open_pinview

        with open_pinview(node.name) as view:
            return {i: t.status for i, t in view.transceivers().items()}

    def relay_flow_ids(self, node: RelayNode) -> list[int]:
        """The transceiver id of every live (not idle) flow of ``node``."""
        from orchestrator.pinview import open_pinview

        with open_pinview(node.name) as view:
            return [f.transceiver_id for f in view.flows() if f.idle_s < 2.0]

    # --- transceiver hosts ------------------------------------------------------

    def live_hosts(self) -> list[TransceiverHost]:
        return [h for h in self.host_nodes.values() if not h.draining]

    def _build_host(self, host: TransceiverHost) -> None:
        ns = self._netns(host.netns)
        eth, _ = ensure_veth("eth", f"t{host.index}", netns=ns, peer_netns=self.switch)
        set_link_up(f"t{host.index}", self.switch, master=LAN_BRIDGE)
        ensure_address("eth", f"{host.address}/24", ns)
        set_tx_checksum("eth", False, ns)
        host.mac = eth.mac
        for relay in self.relay_nodes.values():
            self._link_neighbours(relay, host)

    async def add_transceiver_host(self) -> TransceiverHost:
        """A new host: namespace, link, a transceiver on the Redis directory that
        advertises the live relays (the newest first), and its signaling front;
        ready when a probe through every live relay reaches it."""
        i = self._next_index("host")
        host = TransceiverHost(index=i, netns=f"vxt-{self.suffix}{i:x}", address=f"10.77.0.{20 + i}")
        self.host_nodes[i] = host
        await asyncio.to_thread(self._build_host, host)
        relays = sorted(self.live_relays(), key=lambda r: -r.index)
        if len(self.host_nodes) <= self.hosts:
            # The first hosts spread over the first relays: host i's nearest is relay i.
            relays = sorted(relays, key=lambda r: (r.index - i) % MAX_HOSTS)
        host.relays = [f"{r.public_address}:{PUBLIC_PORT}" for r in relays]
        config = _write_toml(self.workdir / f"transceiver-{i}.toml", {"transceiver": {
            "id": host.id, "listen": f"{host.address}:{SIGNALING_PORT}",
            "private_address": host.address, "relays": host.relays,
            "directory": self.redis_url, "model": f"{MODEL_ADDRESS}:{MODEL_PORT}",
            "drain_grace_seconds": 1.0, "workers": 1, "probe_port": PROBE_PORT,
            "directory_secret_file": str(self.workdir / "directory.secret"),
            "api_key_file": str(self.workdir / "api-key"), "model_streams": self.model_streams}})
        host.service = self._service(f"transceiver-{i}", host.netns, python_argv(
            "transceiver", "run", "-v", "--config", str(config)))
        host.service.start()
        await host.service.wait_ready(lambda: tcp_open(host.netns, host.address, SIGNALING_PORT),
                                      self.start_timeout)
        host.front = self._service(f"front-{i}", self.switch, [
            sys.executable, "-m", "lab.tcpfront", f"{LB_ADDRESS}:{host.front_port}",
            f"{host.address}:{SIGNALING_PORT}"])
        host.front.start()
        await host.front.wait_ready(lambda: tcp_open(self.client, LB_ADDRESS, host.front_port),
                                    self.start_timeout)
        for relay in self.live_relays():
            await self.wait_probe(relay, host)
        return host

    def signaling_url(self, host: TransceiverHost) -> str:
        return f"http://{LB_ADDRESS}:{host.front_port}"

    async def place(self, prefer: TransceiverHost | None = None) -> TransceiverHost:
        """The load balancer's pick: a host that is active in the directory (not
        draining, not removed), with the fewest calls placed on it (ties: the
        newest). ``prefer``: that host if it is such a host (a sticky route)."""
        records = await self.directory_records()
        candidates = [h for h in self.host_nodes.values()
                      if records.get(h.id) == "active" and not h.draining]
        if not candidates:
            raise ScaleOutError(f"no active transceiver host in the directory: {records}")
        if prefer is not None and prefer not in candidates:
            raise ScaleOutError(f"host {prefer.index} takes no calls: {records}")
        host = prefer or min(candidates, key=lambda h: (h.calls, -h.index))
        host.calls += 1
        return host

    async def drain_and_remove_transceiver_host(
            self, host: TransceiverHost, *, timeout: float = 60.0,
            before_remove: Callable[[], Awaitable[None]] | None = None) -> None:
        """Drain ``host`` in the directory (no new calls; its calls go on), run
        ``before_remove`` (the caller ends its calls), wait until it has no call
        (at most ``timeout``), then stop it, evict its record and remove it."""
        await self._directory(lambda d: d.drain(host.id))
        host.draining = True
        if before_remove is not None:
            await before_remove()
        deadline = time.monotonic() + timeout
        while (await self.host_health(host))["calls"] > 0:
            if time.monotonic() > deadline:
                raise ScaleOutError(f"host {host.index} still has calls after {timeout} s")
            await asyncio.sleep(0.2)
        for svc in (host.front, host.service):
            if svc is not None:
                await svc.stop()
        await self._directory(lambda d: d.evict(host.id))
        await asyncio.to_thread(delete_netns, host.netns)
        self._namespaces.remove(host.netns)
        del self.host_nodes[host.index]

    async def host_health(self, host: TransceiverHost) -> dict[str, Any]:
        def ask() -> dict[str, Any]:
            import urllib.request

            with urllib.request.urlopen(
                    f"http://{host.address}:{SIGNALING_PORT}/healthz", timeout=2) as response:
                body: dict[str, Any] = json.loads(response.read())
                return body

        return await asyncio.to_thread(netlink.run_in_netns, host.netns, ask)

    # --- the directory ------------------------------------------------------------

    async def _directory(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        from voxrelay.directory import connect

        directory = connect(self.redis_url, secret=self.secret)
        try:
            return await asyncio.wait_for(fn(directory), 10)
        finally:
            await directory.close()

    async def directory_records(self) -> dict[int, str]:
        """Live records of the directory, id -> status with the operator's intent applied."""
        async def read(directory: Any) -> dict[int, str]:
            ids = set((await directory.snapshot()).transceivers) | set(self.host_nodes)
            records = {i: await directory.get_transceiver(i) for i in sorted(ids)}
            return {i: str(r.status) for i, r in records.items() if r is not None}

        result: dict[int, str] = await self._directory(read)
        return result

    async def wait_probe(self, relay: RelayNode, host: TransceiverHost) -> None:
        """Until a STUN probe from the client through ``relay`` reaches ``host``'s
        probe responder (keys and the host are in the relay's maps)."""
        from orchestrator.probe import probe
        from voxrelay.probe import mint_probe_token

        deadline = time.monotonic() + self.start_timeout
        reason = "no probe sent"
        while time.monotonic() < deadline:
            for svc in self._services:
                if svc.proc is not None and not svc.running():
                    raise StackError(f"{svc.name} exited\n{svc.log_tail()}")
            ring = await self._directory(lambda d: d.keyring())
            if ring.current is not None:
                ufrag = mint_probe_token(ring.keys, ring.current, host.id, PROBE_PORT)
                result = await asyncio.to_thread(
                    netlink.run_in_netns, self.client, probe, relay.vip, ufrag,
                    timeout=0.3, attempts=1, transceiver_id=host.id)
                if result.ok:
                    return
                reason = result.reason
            else:
                reason = "the directory has no token key yet"
            await asyncio.sleep(0.2)
        logs = "\n".join(s.log_tail() for s in self._services if s.name.endswith(
            (f"-{relay.index}", f"-{host.index}")))
        raise ScaleOutError(f"probe through relay {relay.index} to host {host.index}: {reason}\n{logs}")
