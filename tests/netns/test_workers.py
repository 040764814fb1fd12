# SPDX-License-Identifier: Apache-2.0
"""Whole chain with ``[transceiver] workers = 2``: kill -9 of one worker mid-call.

The lab's transceiver host runs the front (transceiver/workers.py) and two
workers, transceivers 1 and 2, each with half of the port range. Two calls
through the relay land one on each (least-loaded placement). Worker 2 is
then killed with SIGKILL:

* the call on worker 1 goes on: its reply audio keeps arriving at the client
  and the client's audio keeps arriving at the transceiver (both counted);
* worker 2's record leaves the directory and the relay's transceivers map
  within the directory's TTL (the front withdraws it at once), and its
  flows leave the relay's flows map (the orchestrator deletes the flows of a
  transceiver that left the directory by itself), worker 1's stay;
* the front stops sending it calls: a call placed while it is down lands on
  worker 1;
* it comes back (a new process, restarts = 1), is announced and in the map
  again, and takes the next call, whose audio flows.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import pytest
import pytest_asyncio

pytestmark = [pytest.mark.netns, pytest.mark.root]

RESTART_SECONDS = 4.0
"""The front's worker_restart_seconds here: long enough to see the dead worker gone."""
TTL_SECONDS = 10.0
"""The embedded directory's heartbeat grace ([orchestrator] heartbeat_grace_seconds)."""
FLOW_SECONDS = 1.5
"""How long each "the audio keeps flowing" window is watched."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab():
    from lab.stack import StackOptions, start_stack

    options = StackOptions(relays=1, transceiver_workers=2,
                           transceiver_settings={"worker_restart_seconds": RESTART_SECONDS})
    async with start_stack(options) as running:
        yield running


def _directory_ids(lab: Any) -> set[int]:
    """The ids of the live records in the lab's embedded directory (a plain GET:
    unlike a heartbeat, reading does not keep a record alive)."""
    from orchestrator.netlink import run_in_netns

    def ask() -> set[int]:
        import urllib.request

        request = urllib.request.Request(
            f"{lab.directory_url}/v1/transceivers",
            headers={"Authorization": f"Bearer {lab.directory_secret}"})
        with urllib.request.urlopen(request, timeout=2) as response:
            return {int(r["id"]) for r in json.loads(response.read())["transceivers"]}

    return run_in_netns(lab.relays[0].netns, ask)


def _flow_ids(lab: Any) -> list[int]:
    """The transceiver id of every flow in relay 1's flows map."""
    from orchestrator.pinview import open_pinview

    with open_pinview(lab.relays[0].name) as view:
        return [f.transceiver_id for f in view.flows()]


async def _until(what: str, predicate: Any, timeout: float) -> float:
    """Seconds until ``predicate()`` (sync) holds; fails naming ``what`` after ``timeout``."""
    started = time.monotonic()
    while not await asyncio.to_thread(predicate):
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.asyncio(loop_scope="module")
async def test_kill_9_of_one_worker_keeps_the_other_workers_calls(lab) -> None:
    from lab.call import TimedCallClient

    async def health(client: TimedCallClient) -> dict[str, Any]:
        assert client._session is not None
        async with client._session.get("healthz") as response:
            body: dict[str, Any] = await response.json()
            return body

    async def status(client: TimedCallClient) -> dict[str, Any]:
        assert client._session is not None
        async with client._session.get(client.location.lstrip("/")) as response:
            assert response.status == 200, await response.text()
            body: dict[str, Any] = await response.json()
            return body

    def worker_of(port: int, workers: list[dict[str, Any]]) -> int:
        return next(w["id"] for w in workers if w["ports"][0] <= port <= w["ports"][1])

    async def flowing(client: TimedCallClient) -> tuple[int, int]:
        """Reply chunks the client received and chunks the transceiver received
        from it during FLOW_SECONDS."""
        before_out, before_in = client.chunks_received, (await status(client))["chunks_in"]
        await asyncio.sleep(FLOW_SECONDS)
        return (client.chunks_received - before_out,
                (await status(client))["chunks_in"] - before_in)

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        url, key = lab.signaling_url, lab.api_key
        async with TimedCallClient(url, key, timeout=30) as a, \
                TimedCallClient(url, key, timeout=30) as b:
            for c in (a, b):
                await c.wait_event("model", state="connected", timeout=15)
            first = await health(a)
            out["workers_before"] = first["workers"]
            placed = {worker_of((await status(c))["port"], first["workers"]): c for c in (a, b)}
            out["placed"] = sorted(placed)
            survivor, victim_call = placed[1], placed[2]
            out["both_flowing"] = [await flowing(c) for c in (survivor, victim_call)]
            out["flows_before"] = _flow_ids(lab)
            victim = next(w for w in first["workers"] if w["id"] == 2)
            killed_at = time.monotonic()
            os.kill(victim["pid"], signal.SIGKILL)
            # The other worker's call goes on while its sibling is dead...
            out["survivor_while_down"] = await flowing(survivor)
            victim_before = victim_call.chunks_received
            await asyncio.sleep(0.5)
            out["victim_chunks_after_kill"] = victim_call.chunks_received - victim_before
            # ...its record leaves the directory and the relay's map...
            out["gone_from_directory_s"] = await _until(
                "worker 2's record leaves the directory", lambda: 2 not in _directory_ids(lab),
                TTL_SECONDS) + (time.monotonic() - killed_at)
            out["gone_from_map_s"] = await _until(
                "worker 2 leaves the relay's transceivers map",
                lambda: 2 not in lab.relay_transceivers(0), TTL_SECONDS)
            out["map_while_down"] = lab.relay_transceivers(0)
            out["flows_gone_s"] = await _until(
                "worker 2's flows leave the relay", lambda: 2 not in _flow_ids(lab), TTL_SECONDS)
            out["flows_while_down"] = _flow_ids(lab)
            down = await health(a)
            out["down_workers"] = down["workers"]
            # ...and the front sends new calls only to the worker that is up.
            async with TimedCallClient(url, key, timeout=30) as c:
                await c.wait_event("model", state="connected", timeout=15)
                out["placed_while_down"] = worker_of((await status(c))["port"], first["workers"])
            out["survivor_still"] = await flowing(survivor)
            # It comes back: a new process, announced and in the map again.
            deadline = time.monotonic() + RESTART_SECONDS + 30
            while True:
                now = await health(a)
                back = next(w for w in now["workers"] if w["id"] == 2)
                if back["up"]:
                    break
                assert time.monotonic() < deadline, f"worker 2 did not come back: {now}"
                await asyncio.sleep(0.2)
            out["back"] = back
            await _until("worker 2 is in the directory again", lambda: 2 in _directory_ids(lab),
                         TTL_SECONDS)
            await _until("worker 2 is in the relay's map again",
                         lambda: 2 in lab.relay_transceivers(0), TTL_SECONDS)
            await asyncio.sleep(0.6)  # one health poll: the front knows its load is 0
            async with TimedCallClient(url, key, timeout=30) as d:
                await d.wait_event("model", state="connected", timeout=15)
                out["placed_after"] = worker_of((await status(d))["port"], first["workers"])
                out["new_call_flowing"] = await flowing(d)
            out["survivor_end"] = await flowing(survivor)
            out["victim_hangup"] = await victim_call.hangup()
        return out

    out = await lab.client_call(scenario)
    frames = FLOW_SECONDS / 0.020
    assert out["placed"] == [1, 2], f"the two calls were not spread over the workers: {out}"
    for name in ("both_flowing", ):
        for sent, received in out[name]:
            assert sent > frames / 2 and received > frames / 2, out
    # The survivor's audio, both ways, in every window around the kill.
    for name in ("survivor_while_down", "survivor_still", "survivor_end"):
        sent, received = out[name]
        assert sent > frames / 2, f"{name}: {sent} reply chunks in {FLOW_SECONDS} s: {out}"
        assert received > frames / 2, f"{name}: {received} chunks reached the transceiver: {out}"
    assert out["victim_chunks_after_kill"] <= 2, "the killed worker's call kept sending"
    assert out["gone_from_directory_s"] < TTL_SECONDS
    assert 2 not in out["map_while_down"] and out["map_while_down"].get(1) == "active"
    assert 1 in out["flows_before"] and 2 in out["flows_before"], out
    assert 1 in out["flows_while_down"], "the surviving call's flow went too"
    down = {w["id"]: w for w in out["down_workers"]}
    assert not down[2]["up"] and down[1]["up"]
    assert out["placed_while_down"] == 1
    assert out["back"]["restarts"] == 1
    assert out["back"]["pid"] != next(w["pid"] for w in out["workers_before"] if w["id"] == 2)
    assert out["placed_after"] == 2, "the restarted worker took no new call"
    sent, received = out["new_call_flowing"]
    assert sent > frames / 2 and received > frames / 2, out
    # The killed call is unknown to the front now (it went with its worker).
    assert out["victim_hangup"] == 404
