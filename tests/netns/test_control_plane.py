# SPDX-License-Identifier: Apache-2.0
"""The control plane, probed from where an attacker would stand (#10).

Against the lab's running stack (relay 1's orchestrator serves the embedded
directory on its private address):

* from the client namespace, the directory port cannot be reached, neither on
  the private address (routed through the relay's public interface, which
  Linux would accept) nor on the public one; the drops are counted by the
  input filter ``relay load`` installed, while the signaling front's port,
  the one listed in ``public_tcp_ports``, still answers;
* from the private side, a request without the directory secret, or with a
  wrong one, is refused with 401 and changes nothing;
* an operator's drain, and a remove, survive ``kill -9`` of the orchestrator
  and the transceiver's re-announce to the restarted, empty store: a new flow
  to the transceiver is still dropped by the relay (counted by reason), and
  signaling answers 503 with Retry-After, until ``undrain``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
import pytest_asyncio

from orchestrator import hostnet
from orchestrator.netlink import popen_in_netns, run_in_netns
from tests.support import until

pytestmark = [pytest.mark.netns, pytest.mark.root]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab():
    from lab.stack import StackOptions, start_stack

    async with start_stack(StackOptions(relays=1)) as running:
        yield running


def _connects(host: str, port: int, timeout: float = 1.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((host, port))
        except OSError:
            return False
        return True


def _ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True, timeout=10)


@pytest.mark.asyncio(loop_scope="module")
async def test_directory_is_unreachable_from_the_client_side(lab) -> None:
    from lab.stack import DIRECTORY_PORT, SIGNALING_PORT

    relay = lab.relays[0]
    # An attacker routes the relay's private address through its public one.
    _ip(lab.client_ns, "route", "add", f"{relay.private_address}/32", "via",
        relay.public_address)
    try:
        dropped = hostnet.input_drop_count(relay.name, relay.netns)
        for host in (relay.private_address, relay.public_address):
            assert not run_in_netns(lab.client_ns, _connects, host, DIRECTORY_PORT), host
        # The SYNs (and their retries) were dropped by the input filter, counted.
        assert hostnet.input_drop_count(relay.name, relay.netns) >= dropped + 2
        # The one public TCP port the lab lists is open: the filter is not a blanket drop.
        assert run_in_netns(lab.client_ns, _connects, relay.public_address, SIGNALING_PORT)
        # The private side still reaches the directory.
        assert run_in_netns(lab.transceiver_ns, _connects, relay.private_address, DIRECTORY_PORT)
    finally:
        _ip(lab.client_ns, "route", "del", f"{relay.private_address}/32")


def _http(method: str, url: str, body: object = None, headers: dict[str, str] | None = None
          ) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.mark.asyncio(loop_scope="module")
async def test_private_side_without_the_secret_gets_401_and_changes_nothing(lab) -> None:
    url = lab.directory_url
    good = {"Authorization": f"Bearer {lab.directory_secret}"}
    _, before = run_in_netns(lab.transceiver_ns, _http, "GET", url + "/v1/transceivers", None,
                             good)
    fake = {"id": 77, "address": "198.51.100.77", "probe_port": 3479}
    for headers in ({}, {"Authorization": "Bearer not-the-directory-secret-0123"},
                    {"Authorization": f"Basic {lab.directory_secret}"}):
        for method, path, body in (("POST", "/v1/transceivers", fake),
                                   ("GET", "/v1/keys", None),
                                   ("PUT", "/v1/intents/1", {"intent": None}),
                                   ("POST", "/v1/keys/rotate", None)):
            status, payload = run_in_netns(lab.transceiver_ns, _http, method, url + path, body,
                                           headers)
            assert status == 401, (method, path, headers, payload)
            assert "keys" not in payload and "transceivers" not in payload
    _, after = run_in_netns(lab.transceiver_ns, _http, "GET", url + "/v1/transceivers", None, good)
    assert [t["id"] for t in after["transceivers"]] == [t["id"] for t in before["transceivers"]]
    assert 77 not in lab.relay_transceivers(0)


def _cli(lab, *args: str) -> str:
    from lab.stack import python_argv

    proc = popen_in_netns(
        lab.relays[0].netns, [*python_argv(*args), "--directory", lab.directory_url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "VOXRELAY_DIRECTORY_SECRET": lab.directory_secret})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return str(out)


async def _kill_and_restart_orchestrator(lab) -> None:
    from lab.stack import DIRECTORY_PORT, tcp_open

    svc = lab.services["orchestrator-1"]
    assert svc.proc is not None
    os.killpg(svc.proc.pid, signal.SIGKILL)
    await asyncio.to_thread(svc.proc.wait, 10)
    svc.start()
    relay = lab.relays[0]
    await svc.wait_ready(lambda: tcp_open(relay.netns, relay.private_address, DIRECTORY_PORT), 60)


def _new_flow_ok(lab) -> bool:
    """A STUN probe from the client namespace, on a new flow to the transceiver."""
    return bool(lab.probe_new_flow(0, timeout=0.5).ok)


def _post_call_status(lab) -> tuple[int, dict, str]:
    def post() -> tuple[int, dict, str]:
        request = urllib.request.Request(
            lab.signaling_url + "/v1/calls", data=b"v=0\r\n", method="POST",
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {lab.api_key}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, {}, ""
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read()), exc.headers.get("Retry-After", "")

    return run_in_netns(lab.client_ns, post)


@pytest.mark.parametrize(("verb", "reason"), [("drain", "drop_transceiver_draining"),
                                              ("remove", "drop_transceiver_unknown")])
@pytest.mark.asyncio(loop_scope="module")
async def test_operator_intent_survives_orchestrator_kill(lab, verb: str, reason: str) -> None:
    txr = lab.transceiver_id
    assert _new_flow_ok(lab)
    _cli(lab, "transceivers", verb, str(txr))

    def in_effect() -> bool:
        entry = lab.relay_transceivers(0).get(txr)
        return entry is None if verb == "remove" else entry == "draining"

    until(in_effect, timeout=5, what=f"the relay's map to show the {verb}")
    await _kill_and_restart_orchestrator(lab)
    # The restarted store is empty: the transceiver re-announces itself (as
    # active) within a heartbeat or two; the intent must win.
    until(lab.transceiver_announced, timeout=15, interval=0.2,
          what="the transceiver to re-announce to the restarted orchestrator")
    await asyncio.sleep(2.5)  # more heartbeats and sync rounds: nothing may undo the intent
    assert in_effect(), lab.relay_transceivers(0)
    dropped = lab.relay_stats(0).get(reason, 0)
    assert not _new_flow_ok(lab)
    assert lab.relay_stats(0).get(reason, 0) > dropped
    status, payload, retry_after = _post_call_status(lab)
    assert status == 503 and retry_after, (status, payload)
    expected = "draining" if verb == "drain" else "removed"
    assert f"transceiver is {expected} by the operator" in payload["error"]["message"]
    _cli(lab, "transceivers", "undrain", str(txr))
    until(lambda: lab.relay_transceivers(0).get(txr) == "active", timeout=5,
          what="the relay's map to re-admit the transceiver")
    until(lambda: _new_flow_ok(lab), timeout=10, interval=0.2,
          what="a new flow to reach the transceiver again")
    until(lambda: _post_call_status(lab)[0] == 400, timeout=10, interval=0.2,
          what="signaling to take calls again (400: the test's offer is empty)")
