# SPDX-License-Identifier: Apache-2.0
"""The orchestrator across namespaces: restart under a live flow, and the probe.

client ns --> relay ns (XDP, loaded once for the module) --> transceiver ns.
`voxrelay orchestrator run` runs as a real process in the test's namespace
(it only needs the pins, which are global), with the embedded directory on
loopback. The transceiver's part is played by the test: it announces over
HTTP, runs a UDP echo server (the call) and a probe responder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns.udp import UdpResponder
from tests.support import until
from voxrelay import token as tk
from voxrelay.directory.records import parse_keyring
from voxrelay.probe import build_answer

ROOT = Path(__file__).resolve().parents[2]
ECHO_PORT = 40000
PROBE_PORT = 3479
TXR_ID = 7


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


class Orchestrator:
    """`voxrelay orchestrator run` as a process; kill -9 and start again at will."""

    def __init__(self, lab: Any, tmp: Path) -> None:
        self.lab = lab
        self.api = free_port()
        self.metrics = free_port()
        self.config = tmp / "voxrelay.toml"
        self.config.write_text(
            f'[relay]\nname = "{lab.relay.name}"\n'
            f'[orchestrator]\nlisten = "127.0.0.1:{self.api}"\n'
            f'metrics_listen = "127.0.0.1:{self.metrics}"\nheartbeat_grace_seconds = 30.0\n'
            # The test's own secret and state, not the host's /var/lib/voxrelay.
            f'directory_secret_file = "{tmp / "directory.secret"}"\nstate_dir = "{tmp / "state"}"\n'
        )
        self.log = tmp / "orchestrator.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = self.lab.popen(
                None, [sys.executable, "-m", "voxrelay.cli", "orchestrator", "run",
                       "--config", str(self.config), "-v", "--upkeep-interval", "0.5"],
                stdout=log, stderr=log, env=env())
        deadline = time.monotonic() + 60
        while True:
            try:
                self.call("GET", "/v1/keys")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("orchestrator did not start:\n" + self.log.read_text()) from None
                time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        secret = (self.config.parent / "directory.secret").read_text().strip()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {secret}"})
        with urllib.request.urlopen(req, timeout=2) as resp:
            return json.loads(resp.read())

    def announce(self, address: str, txr_id: int = TXR_ID) -> None:
        self.call("POST", "/v1/transceivers",
                  {"id": txr_id, "address": address, "probe_port": PROBE_PORT})

    def keyring(self):
        return parse_keyring(self.call("GET", "/v1/keys"))


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Iterator[dict[str, Any]]:
    if os.geteuid() != 0:
        pytest.fail("tests/netns needs root (CI runs it as root)")
    from lab.topology import Lab
    from orchestrator.bccview import open_relay as open_pinned_relay

    tmp = tmp_path_factory.mktemp("orch")
    with Lab() as lab:
        lab.load_relay()
        orch = Orchestrator(lab, tmp)
        responders: list[UdpResponder] = []
        view = None
        try:
            orch.start()
            txr_addr = lab.transceiver_lan.address
            orch.announce(txr_addr)
            echo_sock = lab.socket(lab.transceiver)
            echo_sock.bind((txr_addr, ECHO_PORT))
            responders.append(UdpResponder(echo_sock))
            probe_sock = lab.socket(lab.transceiver)
            probe_sock.bind((txr_addr, PROBE_PORT))
            prober = UdpResponder(probe_sock, build_answer)
            responders.append(prober)
            view = open_pinned_relay(lab.relay.name)
            until(lambda: TXR_ID in view.transceivers() and view.keys(), timeout=10,
                  interval=0.05, what="the announce to reach the map")
            yield {"lab": lab, "orch": orch, "view": view, "prober": prober, "txr_addr": txr_addr}
        finally:
            for r in responders:
                r.close()
            orch.stop()
            if view is not None:
                view.close()


def mint(orch: Orchestrator, port: int) -> str:
    ring = orch.keyring()
    return tk.mint(ring.keys[ring.current], key_id=ring.current, transceiver_id=TXR_ID, port=port)


def test_restart_under_a_live_flow_loses_nothing(chain: dict[str, Any]) -> None:
    lab, orch, view = chain["lab"], chain["orch"], chain["view"]
    from voxrelay.probe import build_request

    client = lab.socket(lab.client)
    client.settimeout(1.0)
    vip = lab.relay.vip
    try:
        hello = bytes(build_request(mint(orch, ECHO_PORT)))
        client.sendto(hello, vip)
        assert client.recvfrom(4096) == (hello, vip)
        before = (view.transceivers(), view.keys(), [(f.client, f.relay_port) for f in view.flows()])

        sent = lost = 0
        errors: list[str] = []
        flowing = threading.Event()
        done = threading.Event()

        def talk() -> None:
            nonlocal sent, lost
            deadline = time.monotonic() + 60  # bounded, whatever happens
            while not done.is_set() and time.monotonic() < deadline:
                payload = sent.to_bytes(4, "big") + b"voice" * 20
                client.sendto(payload, vip)
                sent += 1
                try:
                    reply, source = client.recvfrom(4096)
                    if (reply, source) != (payload, vip):
                        errors.append(f"datagram {sent}: got {reply[:4]!r} from {source}")
                except TimeoutError:
                    lost += 1
                if sent == 50:
                    flowing.set()
                time.sleep(0.002)

        talker = threading.Thread(target=talk, daemon=True)
        talker.start()
        assert flowing.wait(10)
        orch.kill()
        time.sleep(0.5)  # packets keep flowing with no orchestrator at all
        sent_while_down = sent
        orch.start()
        orch.announce(chain["txr_addr"])  # the transceiver's next heartbeat re-announces
        time.sleep(1.5)  # a few sync rounds with the new orchestrator
        done.set()
        talker.join(10)

        after = (view.transceivers(), view.keys(), [(f.client, f.relay_port) for f in view.flows()])
        assert errors == []
        assert lost == 0, f"{lost} of {sent} datagrams lost across the restart"
        assert sent > sent_while_down > 50
        assert after == before
    finally:
        client.close()


def run_probe(lab: Any, *args: str) -> subprocess.CompletedProcess[str]:
    proc = lab.popen(lab.client, [sys.executable, "-m", "voxrelay.cli", "probe", *args],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_probe_passes_then_fails_with_a_reason(chain: dict[str, Any]) -> None:
    lab, orch, view = chain["lab"], chain["orch"], chain["view"]
    relay = "{}:{}".format(*lab.relay.vip)
    ok = run_probe(lab, "--relay", relay, "--token", mint(orch, PROBE_PORT), "--json")
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert result["ok"] is True and result["transceiver_id"] == TXR_ID
    # The responder saw the relay's private address, never the client's.
    assert result["mapped_address"].startswith(lab.relay.private.address + ":")

    # The transceiver is removed: the relay drops the probe, and says why in its counters.
    drops = view.stats()["drop_transceiver_unknown"]
    orch.call("DELETE", f"/v1/transceivers/{TXR_ID}")
    until(lambda: TXR_ID not in view.transceivers(), timeout=10, interval=0.05,
          what="the removal to reach the map")
    gone = run_probe(lab, "--relay", relay, "--token", mint(orch, PROBE_PORT),
                     "--timeout", "0.3", "--attempts", "2")
    assert gone.returncode == 1
    assert gone.stderr.startswith(f"probe failed: no answer from transceiver {TXR_ID} through {relay}")
    assert "Traceback" not in gone.stderr
    assert view.stats()["drop_transceiver_unknown"] == drops + 2

    # Back in the directory but its probe responder is down: also a clear failure.
    orch.announce(chain["txr_addr"])
    until(lambda: TXR_ID in view.transceivers(), timeout=10, interval=0.05,
          what="the announce to reach the map")
    chain["prober"].close()
    down = run_probe(lab, "--relay", relay, "--token", mint(orch, PROBE_PORT),
                     "--timeout", "0.3", "--attempts", "1")
    assert down.returncode == 1 and "probe failed: no answer" in down.stderr


def neighbour_of(lab: Any, address: str) -> Any:
    """The relay namespace's neighbour entry for ``address`` on priv, or None."""
    from orchestrator import netlink

    with netlink.iproute(lab.relay.netns) as ipr:
        index = netlink.link_info("priv", lab.relay.netns).ifindex
        for entry in ipr.get_neighbours(family=socket.AF_INET, ifindex=index):
            if entry.get_attr("NDA_DST") == address:
                return entry
    return None


def test_neighbour_change_invalidates_cached_next_hops(chain: dict[str, Any]) -> None:
    from lab.netns import ensure_neighbour
    from orchestrator import netlink

    lab, view = chain["lab"], chain["view"]
    # A neighbour beside the transceiver's, so that the call path is not disturbed.
    other = "10.77.0.60"
    ensure_neighbour("priv", other, "02:00:00:00:60:01", netns=lab.relay.netns)
    try:
        time.sleep(0.3)  # a new entry is not a change: no bump for it
        before = view.maps.read_config().nh_generation
        ensure_neighbour("priv", other, "02:00:00:00:60:02", netns=lab.relay.netns)
        until(lambda: view.maps.read_config().nh_generation != before, timeout=10,
              interval=0.05, what="nh_generation to move on a MAC change")
        after_mac = view.maps.read_config().nh_generation
        assert after_mac == (before + 1) & 0xFFFFFFFF
    finally:
        with netlink.iproute(lab.relay.netns) as ipr:
            ipr.neigh("del", dst=other, ifindex=netlink.link_info("priv", lab.relay.netns).ifindex)
    until(lambda: view.maps.read_config().nh_generation != after_mac, timeout=10,
          interval=0.05, what="nh_generation to move on a deletion")


def test_added_transceiver_gets_its_next_hop_primed(chain: dict[str, Any]) -> None:
    lab, orch, view = chain["lab"], chain["orch"], chain["view"]
    address, txr_id = "10.77.0.77", 8  # nobody there: only the orchestrator asks for it
    assert neighbour_of(lab, address) is None
    orch.announce(address, txr_id)
    try:
        until(lambda: txr_id in view.transceivers(), timeout=10, interval=0.05,
              what="the announce to reach the map")
        until(lambda: neighbour_of(lab, address) is not None, timeout=10, interval=0.05,
              what="a neighbour entry for the new transceiver")
    finally:
        orch.call("DELETE", f"/v1/transceivers/{txr_id}")
        until(lambda: txr_id not in view.transceivers(), timeout=10, interval=0.05,
              what="the removal to reach the map")


def test_clock_offset_is_kept_to_realtime(chain: dict[str, Any]) -> None:
    from orchestrator.bccmaps import monotonic_to_realtime_offset_ns

    view = chain["view"]
    wrong = monotonic_to_realtime_offset_ns() - 3600 * 10**9  # as if NTP stepped an hour
    assert view.maps.set_clock_offset(wrong) == wrong
    until(lambda: abs(view.maps.read_config().clock_offset_ns
                      - monotonic_to_realtime_offset_ns()) < 10**9,
          timeout=10, interval=0.05, what="the orchestrator to rewrite clock_offset_ns")


RESYNC_WITHIN_S = 1.0
"""Issue #16: a relay loaded anew under a running orchestrator has its maps
back within a second (the service checks every 0.2 s; the reopen compiles nothing)."""


def test_unload_and_load_again_is_resynced_within_a_second(chain: dict[str, Any]) -> None:
    """Last in the module: it replaces the relay the other tests share."""
    from orchestrator.pintables import pinned_map_ids
    from orchestrator.pinview import open_pinview
    from voxrelay.probe import build_request

    lab, orch, view = chain["lab"], chain["orch"], chain["view"]
    name = lab.relay.name
    until(lambda: TXR_ID in view.transceivers(), timeout=10, interval=0.05,
          what="the transceiver in the map")
    ring = orch.keyring()
    want_keys = {i: ring.keys[i] for i in ring.active}
    ids_before = pinned_map_ids(name)
    assert ids_before is not None

    assert lab.unload_relay()
    assert pinned_map_ids(name) is None
    lab.load_relay()
    loaded_at = time.monotonic()
    ids_after = pinned_map_ids(name)
    assert ids_after is not None
    # New maps under every pin: nothing carried over but what the loader wrote.
    assert not set(ids_after.items()) & set(ids_before.items())

    def resynced() -> bool:
        with open_pinview(name) as fresh:
            return TXR_ID in fresh.transceivers() and fresh.keys() == want_keys

    until(resynced, timeout=10, interval=0.02, what="the orchestrator to resync the new maps")
    took = time.monotonic() - loaded_at
    assert took < RESYNC_WITHIN_S, f"resynced {took:.2f} s after the load"

    # The reloaded relay takes a new call with the directory's current key.
    client = lab.socket(lab.client)
    client.settimeout(2.0)
    try:
        hello = bytes(build_request(mint(orch, ECHO_PORT)))
        client.sendto(hello, lab.relay.vip)
        assert client.recvfrom(4096) == (hello, lab.relay.vip)
    finally:
        client.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{orch.metrics}/metrics", timeout=2) as resp:
        metrics = resp.read().decode()
    assert "voxrelay_relay_reloads_total 1.0" in metrics
    assert "voxrelay_maps_in_sync 1.0" in metrics
    view.reopen()  # the module's own view follows too, so its close closes the new fds
    assert view.map_ids == ids_after
