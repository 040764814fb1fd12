# SPDX-License-Identifier: Apache-2.0
"""CLI output with fake maps and a real embedded directory: tables, --json, errors."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading

import pytest
from click.testing import CliRunner

from orchestrator.cli import common as ocli
from orchestrator.media import ConsentRtt, FlowMedia, MediaStats
from orchestrator.relay import FlowEntry, RelayUnavailable
from orchestrator.sync import MapTransceiver
from tests.support import DIRECTORY_SECRET
from tests.unit.orch_fakes import FakeRelayView
from voxrelay import token as tk
from voxrelay.cli import cli
from voxrelay.directory import TransceiverRecord

K1, K2 = bytes(range(16)), bytes(range(16, 32))


@pytest.fixture
def view(monkeypatch):
    v = FakeRelayView()
    v.txrs = {2: MapTransceiver("10.0.1.2", "draining"), 1: MapTransceiver("10.0.1.1", "active")}
    v.key_slots = {4: K1, 5: K2}
    v.counters = {"rx_total": 10, "fwd_new_flow": 2, "fwd_to_client": 5, "drop_token_bad_mac": 3,
                  "drop_truncated": 0}
    v.flow_rows = [
        FlowEntry("198.51.100.7:5000", 1, "10.0.1.1:40000", 20001, 3.0, 0.5),
        FlowEntry("198.51.100.8:6000", 2, "10.0.1.2:40002", 20002, 9.0, 1.5),
        FlowEntry("198.51.100.7:5001", 2, "10.0.1.2:40004", 20003, 1.0, 0.1),
    ]
    monkeypatch.setattr(ocli, "open_relay", lambda name: v)
    return v


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_maps_transceivers_table_and_json(view):
    out = run("maps", "transceivers")
    assert out.exit_code == 0
    assert out.output.splitlines() == [
        "ID  ADDRESS   STATUS", "1   10.0.1.1  active", "2   10.0.1.2  draining"]
    data = json.loads(run("maps", "transceivers", "--json").output)
    assert data == [{"id": 1, "address": "10.0.1.1", "status": "active"},
                    {"id": 2, "address": "10.0.1.2", "status": "draining"}]


def test_maps_keys_never_prints_the_key(view):
    out = run("maps", "keys")
    assert K1.hex() not in out.output and K2.hex() not in out.output
    data = json.loads(run("maps", "keys", "--json").output)
    assert [(r["key_id"], r["current"]) for r in data] == [(4, False), (5, True)]
    assert data[0]["fingerprint"] == ocli.key_fingerprint(K1)


def test_maps_stats(view):
    out = run("maps", "stats")
    lines = out.output.splitlines()
    assert "drop_token_bad_mac  3" in lines and "rx_total            10" in lines
    assert not any(line.startswith("drop_truncated") for line in lines)
    assert lines[-1] == "flows 3 / 1024"
    data = json.loads(run("maps", "stats", "--json").output)
    assert data["counters"] == view.counters and data["flows"] == 3


def test_maps_flows_filters(view):
    data = json.loads(run("maps", "flows", "--json", "--transceiver", "2").output)
    assert [r["client"] for r in data] == ["198.51.100.7:5001", "198.51.100.8:6000"]
    data = json.loads(run("maps", "flows", "--json", "--client", "198.51.100.7").output)
    assert [r["relay_port"] for r in data] == [20001, 20003]
    data = json.loads(run("maps", "flows", "--json", "--client", "198.51.100.7:5001").output)
    assert [r["relay_port"] for r in data] == [20003]
    out = run("maps", "flows", "--limit", "1")
    assert out.output.splitlines()[0].split() == [
        "CLIENT", "TRANSCEIVER", "TXR_ADDRESS", "RELAY_PORT", "AGE_S", "IDLE_S", "STATE",
        "LOSS_UP", "LOSS_DOWN", "JITTER_UP_MS", "JITTER_DOWN_MS", "RTT_CLIENT_MS"]
    assert out.output.splitlines()[-1] == "... 2 more (--limit 0 for all)"


def test_maps_flows_state_hides_expired_unless_all(view):
    view.flow_rows = [
        FlowEntry("198.51.100.7:5000", 1, "10.0.1.1:40000", 20001, 30.0, 0.5, 120.0),
        FlowEntry("198.51.100.8:6000", 1, "10.0.1.1:40002", 20002, 90.0, 60.0, 120.0),
        FlowEntry("198.51.100.9:7000", 1, "10.0.1.1:40004", 20003, 400.0, 300.0, 120.0),
        FlowEntry("198.51.100.10:7000", 1, "10.0.1.1:40006", 20004, 400.0, 300.0, 0.0),
    ]
    data = json.loads(run("maps", "flows", "--json").output)
    assert [(r["relay_port"], r["state"]) for r in data] == [
        (20004, "idle"), (20001, "active"), (20002, "idle")]
    data = json.loads(run("maps", "flows", "--json", "--all").output)
    assert sorted((r["relay_port"], r["state"]) for r in data) == [
        (20001, "active"), (20002, "idle"), (20003, "expired"), (20004, "idle")]
    out = run("maps", "flows")
    lines = out.output.splitlines()
    assert lines[1].split()[6] == "idle" and lines[2].split()[6] == "active"
    assert lines[-1] == "(1 expired not shown; --all shows them)"
    assert "expired" in run("maps", "flows", "--all").output


def test_relay_unavailable_is_one_line(monkeypatch):
    def fail(name):
        raise RelayUnavailable("no relay 'x' is loaded: run `voxrelay relay load` first")

    monkeypatch.setattr(ocli, "open_relay", fail)
    out = CliRunner().invoke(cli, ["maps", "stats"])
    assert out.exit_code == 1
    assert out.output == "Error: no relay 'x' is loaded: run `voxrelay relay load` first\n"


def test_token_mint_and_inspect_with_maps(view):
    ufrag = run("token", "mint", "--transceiver", "7", "--port", "40000").output.strip()
    got = tk.verify(ufrag, {5: K2})
    assert (got.key_id, got.transceiver_id, got.port) == (5, 7, 40000)
    data = json.loads(run("token", "inspect", ufrag, "--verify", "--json").output)
    assert data["verdict"] == "valid: the relay would create a flow"
    assert data["transceiver_id"] == 7
    # Retire key 5 from the map: the relay would drop it, and inspect says why.
    del view.key_slots[5]
    out = CliRunner().invoke(cli, ["token", "inspect", ufrag + ":remote", "--verify"])
    assert out.exit_code == 1
    assert "token_unknown_key: token key id 5 is not active" in out.output


def test_token_inspect_without_keys_and_malformed():
    ufrag = tk.mint(K1, key_id=1, transceiver_id=3, port=999)
    data = json.loads(run("token", "inspect", ufrag, "--json").output)
    assert data["verdict"].startswith("not checked") and data["port"] == 999
    out = CliRunner().invoke(cli, ["token", "inspect", "abc"])
    assert out.exit_code == 1
    assert out.output == "Error: token_malformed: token must be 32 characters, got 3\n"
    out = CliRunner().invoke(cli, ["token", "mint", "--transceiver", "1", "--port", "1",
                                   "--key-hex", "abcd"])
    assert out.output == "Error: --key-hex must be 16 bytes (32 hex digits), got 2\n"
    bad = run("token", "inspect", ufrag, "--key-hex", K2.hex())
    assert bad.exit_code == 1 and "token_bad_mac" in bad.output


@pytest.fixture
def embedded():
    """A real embedded directory served on loopback from a background loop."""
    from aiohttp import web

    from voxrelay.directory.http import make_app
    from voxrelay.directory.memory import MemoryDirectory

    store = MemoryDirectory()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder = {}

    async def start():
        runner = web.AppRunner(make_app(store, [DIRECTORY_SECRET]))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"] = runner
        holder["port"] = site._server.sockets[0].getsockname()[1]
        await store.ensure_keyring()
        await store.announce(TransceiverRecord(7, "10.0.1.7", 3479))

    def serve():
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait(5)
    try:
        yield store, f"http://127.0.0.1:{holder['port']}"
    finally:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_transceivers_drain_undrain_remove(embedded):
    store, url = embedded
    out = run("transceivers", "drain", "7", "--directory", url)
    assert out.output == "transceiver 7 draining: no new flows, its calls continue\n"
    assert store._intents == {7: "draining"}
    assert asyncio.run(store.get_transceiver(7)).status == "draining"
    listed = json.loads(run("transceivers", "list", "--directory", url, "--json").output)
    assert listed["intents"] == {"7": "draining"}
    assert [t["status"] for t in listed["transceivers"]] == ["draining"]
    undrained = json.loads(run("transceivers", "undrain", "7", "--directory", url, "--json").output)
    assert undrained["record"]["status"] == "active" and store._intents == {}
    out = run("transceivers", "remove", "7", "--directory", url)
    assert out.output == ("transceiver 7 removed: out of the maps until "
                          "`voxrelay transceivers undrain 7`\n")
    assert store._intents == {7: "removed"} and 7 not in store._transceivers
    # An intent waits for a transceiver that is not announced.
    out = run("transceivers", "drain", "8", "--directory", url)
    assert out.output.endswith("(it is not announced right now; the intent waits for it)\n")
    out = CliRunner().invoke(cli, ["transceivers", "drain", "0", "--directory", url])
    assert out.exit_code == 2 and "0 is not in the range 1<=x<=4294967295" in out.output


def test_directory_commands_without_the_secret_fail_in_one_line(embedded, monkeypatch):
    _, url = embedded
    monkeypatch.setenv("VOXRELAY_DIRECTORY_SECRET", "a-wrong-secret-of-enough-length")
    out = CliRunner().invoke(cli, ["transceivers", "drain", "7", "--directory", url])
    assert out.exit_code == 1
    assert out.output.startswith(f"Error: directory {url} refused us: wrong directory secret")


def test_keys_rotate(embedded):
    store, url = embedded
    before = store._keyring
    data = json.loads(run("keys", "rotate", "--directory", url, "--json").output)
    assert data["current"] != before.current and before.current in data["active"]
    assert store._keyring.current == data["current"]


def test_directory_down_is_one_line():
    out = CliRunner().invoke(cli, ["keys", "rotate", "--directory", "http://127.0.0.1:9"])
    assert out.exit_code == 1
    assert out.output.startswith("Error: directory http://127.0.0.1:9 is unreachable")
    assert "Traceback" not in out.output


def test_probe_by_transceiver_uses_directory_keys_and_port(embedded):
    from voxrelay.probe import ProbeResponder

    _store, url = embedded
    # No relay here: point --relay straight at a responder, as if the relay forwarded.
    async def go():
        transport, _ = await ProbeResponder.serve("127.0.0.1", 0)
        port = transport.get_extra_info("sockname")[1]
        return transport, port

    loop = asyncio.new_event_loop()
    transport, port = loop.run_until_complete(go())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        out = CliRunner().invoke(cli, ["probe", "--relay", f"127.0.0.1:{port}", "--transceiver", "7",
                                       "--directory", url, "--json"])
        assert out.exit_code == 0, out.output
        assert json.loads(out.output)["ok"] is True
        out = CliRunner().invoke(cli, ["probe", "--relay", "127.0.0.1:9", "--transceiver", "99",
                                       "--directory", url])
        assert out.exit_code == 1
        assert out.output == "Error: transceiver 99 is not in the directory (gone or expired)\n"
    finally:
        loop.call_soon_threadsafe(transport.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_every_command_has_help():
    for args in ([], ["relay"], ["relay", "load"], ["relay", "unload"], ["relay", "status"],
                 ["maps"], ["maps", "transceivers"], ["maps", "flows"], ["maps", "keys"],
                 ["maps", "stats"], ["transceivers"], ["transceivers", "drain"],
                 ["transceivers", "undrain"], ["transceivers", "remove"], ["keys"],
                 ["keys", "rotate"], ["token"], ["token", "mint"], ["token", "inspect"],
                 ["probe"], ["orchestrator"], ["orchestrator", "run"]):
        out = run(*args, "--help")
        assert out.exit_code == 0 and "Usage:" in out.output
        assert len(out.output.splitlines()) > 3


BPF_COMMANDS = (["relay", "status"], ["relay", "load"], ["relay", "unload"], ["maps", "stats"],
                ["maps", "flows"], ["token", "mint", "--transceiver", "1", "--port", "5"],
                ["orchestrator", "run"])


def test_not_root_is_one_line_for_every_bpf_command(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for args in BPF_COMMANDS:
        out = CliRunner().invoke(cli, [*args, "--name", "vxnope"])
        assert out.exit_code == 1, args
        assert out.output.endswith("needs root: run this with sudo\n"), (args, out.output)
        assert len(out.output.splitlines()) == 1 and "Traceback" not in out.output


# Loading and the orchestrator compile relay.c (bcc); the readers read the pins straight.
BCC_COMMANDS = (["relay", "status"], ["relay", "load"], ["relay", "load", "--replace"],
                ["relay", "unload"], ["orchestrator", "run"])
PIN_READERS = (["maps", "stats"], ["maps", "flows"], ["maps", "keys"], ["maps", "transceivers"],
               ["token", "mint", "--transceiver", "1", "--port", "5"])


def test_the_bpf_commands_are_the_bcc_ones_and_the_pin_readers():
    assert {tuple(a) for a in BPF_COMMANDS} <= {tuple(a) for a in BCC_COMMANDS + PIN_READERS}


def test_bcc_missing_is_one_line_for_every_bpf_command(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setitem(sys.modules, "bcc", None)  # import bcc -> ImportError
    for args in BCC_COMMANDS:
        out = CliRunner().invoke(cli, [*args, "--name", "vxnope"])
        assert out.exit_code == 1, args
        assert out.output == ("Error: bcc is not importable from this Python: run scripts/setup.sh "
                              "(it links Debian's python3-bpfcc into the venv)\n"), (args, out.output)


def test_pin_readers_need_root_and_a_loaded_relay_but_not_bcc(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setitem(sys.modules, "bcc", None)  # import bcc -> ImportError
    name = f"vxnope-{os.getpid()}"
    for args in PIN_READERS:
        out = CliRunner().invoke(cli, [*args, "--name", name])
        assert out.exit_code == 1, args
        assert out.output == (f"Error: no relay {name!r} is loaded (nothing pinned under "
                              f"/sys/fs/bpf/voxrelay/{name}): run `voxrelay relay load` first\n"
                              ), (args, out.output)
        assert "bcc" not in out.output
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for args in PIN_READERS:
        out = CliRunner().invoke(cli, [*args, "--name", name])
        assert out.exit_code == 1, args
        assert out.output == ("Error: reading the relay's BPF maps needs root: run this with "
                              "sudo\n"), (args, out.output)


def test_token_mint_probe_routes_to_the_probe_port(view):
    from voxrelay.probe import DEFAULT_PROBE_PORT

    ufrag = run("token", "mint", "--transceiver", "7", "--probe").output.strip()
    got = tk.verify(ufrag, {5: K2})
    assert (got.transceiver_id, got.port) == (7, DEFAULT_PROBE_PORT)
    both = CliRunner().invoke(cli, ["token", "mint", "--transceiver", "7", "--probe", "--port", "9"])
    assert both.exit_code == 2 and "give exactly one of --port PORT or --probe" in both.output
    neither = CliRunner().invoke(cli, ["token", "mint", "--transceiver", "7"])
    assert neither.exit_code == 2 and "give exactly one of --port PORT or --probe" in neither.output


def test_load_replace_loads_a_relay_that_is_not_loaded(monkeypatch):
    # The DaemonSet's one command (deploy/k8s) is `relay load --replace`, on a
    # fresh node as after a restart: with nothing to swap it loads.
    from orchestrator import loader
    from orchestrator.cli import relay as relay_cli

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(relay_cli, "require_bpf", lambda what: None)
    calls = []

    def not_loaded(relay, **kwargs):
        calls.append("replace")
        raise loader.NotLoadedError(f"relay {relay.name!r} is not loaded; load it first")

    def load(relay, **kwargs):
        calls.append("load")
        return loader.RelayStatus(relay.name, "/sys/fs/bpf/voxrelay/x", None, True, 7, "xdp_relay",
                                  "t", "native")

    monkeypatch.setattr(loader, "replace", not_loaded)
    monkeypatch.setattr(loader, "load", load)
    out = CliRunner().invoke(cli, ["relay", "load", "--replace", "--name", "vxfresh", "--json"])
    assert out.exit_code == 0, out.output
    assert calls == ["replace", "load"]
    assert json.loads(out.output)["loaded"] is True
    # A replace that fails for another reason is not papered over with a load.
    calls.clear()

    def refused(relay, **kwargs):
        calls.append("replace")
        raise loader.LoaderError("relay 'vxfresh' is attached to eth9, the config names pub, priv")

    monkeypatch.setattr(loader, "replace", refused)
    out = CliRunner().invoke(cli, ["relay", "load", "--replace", "--name", "vxfresh"])
    assert out.exit_code == 1 and calls == ["replace"]
    assert out.output == "Error: relay 'vxfresh' is attached to eth9, the config names pub, priv\n"


def test_maps_flows_shows_media_telemetry(view):
    """What the relay saw of a flow's media: loss and jitter each way, the
    client leg's consent RTT; "-" where nothing was seen; --json has it all."""
    media = FlowMedia(
        to_transceiver=MediaStats(packets=990, expected=1000, reordered=3, duplicates=1,
                                  resyncs=0, jitter_ms=2.25),
        client_rtt=ConsentRtt(samples=4, last_ms=41.5, mean_ms=40.0, max_ms=44.0),
    )
    view.flow_rows = [FlowEntry("198.51.100.7:5000", 1, "10.0.1.1:40000", 20001, 3.0, 0.5,
                                media=media)]
    row = run("maps", "flows").output.splitlines()[1].split()
    assert row[7:] == ["1.0%", "-", "2.2", "-", "41.5"]
    [data] = json.loads(run("maps", "flows", "--json").output)
    up = data["media"]["to_transceiver"]
    assert (up["lost"], up["loss_ratio"], up["reordered"]) == (10, 0.01, 3)
    assert data["media"]["to_client"] is None
    assert data["media"]["client_rtt"]["mean_ms"] == 40.0


def test_media_stats_never_report_negative_loss():
    """Duplicates of late packets can make received pass expected: 0 lost, not -1."""
    m = MediaStats(packets=11, expected=10, reordered=1, duplicates=0, resyncs=0, jitter_ms=0)
    assert (m.lost, m.loss_ratio) == (0, 0.0)
    assert MediaStats(0, 0, 0, 0, 0, 0.0).loss_ratio == 0.0
