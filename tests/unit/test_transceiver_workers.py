# SPDX-License-Identifier: Apache-2.0
"""transceiver/workers.py: the plan that makes each worker a transceiver of its
own, and the front's placement, routing, restart and drain, driven against
stub workers (tests/unit/worker_stub.py) that speak the same HTTP.

The whole chain with real workers, a relay and kill -9 is
tests/netns/test_workers.py."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from click.testing import CliRunner

from transceiver.workers import Front, plan_workers, share, worker_config
from voxrelay.cli import cli
from voxrelay.config import TransceiverConfig

STUB = Path(__file__).with_name("worker_stub.py")


def test_plan_splits_ids_ports_and_probe_ports() -> None:
    cfg = TransceiverConfig(id=10, port_min=40000, port_max=40004, probe_port=3479)
    plans = plan_workers(cfg, 2)
    assert [(p.transceiver_id, p.port_min, p.port_max, p.probe_port) for p in plans] == [
        (10, 40000, 40002, 3479), (11, 40003, 40004, 3480)]
    assert plan_workers(TransceiverConfig(probe_port=0), 3)[2].probe_port == 0


def test_plan_refuses_what_cannot_be_split() -> None:
    with pytest.raises(ValueError, match=r"has 2 port\(s\), fewer than the 3 workers"):
        plan_workers(TransceiverConfig(port_min=40000, port_max=40001), 3)
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        plan_workers(TransceiverConfig(), 0)
    with pytest.raises(ValueError, match="leave 0..4294967295"):
        plan_workers(TransceiverConfig(id=0xFFFFFFFF), 2)


def test_worker_config_keeps_the_hosts_limits() -> None:
    cfg = TransceiverConfig(id=5, max_calls=5, model_streams=16, listen="0.0.0.0:8080")
    configs = [worker_config(cfg, p) for p in plan_workers(cfg, 2)]
    assert [c.max_calls for c in configs] == [3, 2]
    assert [c.model_streams for c in configs] == [8, 8]
    assert {c.listen for c in configs} == {"127.0.0.1:0"}  # only the front reaches them
    assert [c.id for c in configs] == [5, 6]
    assert share(1, 2, 1) == 1  # never a worker that may take no call


def test_cli_refuses_more_workers_than_ports(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text("[transceiver]\nport_min = 40000\nport_max = 40001\n")
    result = CliRunner().invoke(cli, ["transceiver", "run", "--config", str(path),
                                      "--workers", "3", "--directory", "memory"])
    assert result.exit_code == 1
    assert ("[transceiver] workers: port_min..port_max (40000..40001) has 2 port(s), "
            "fewer than the 3 workers") in result.output


def test_help_explains_workers() -> None:
    result = CliRunner().invoke(cli, ["transceiver", "run", "--help"])
    assert "--workers" in result.output and "one per core" in result.output


@pytest_asyncio.fixture
async def front() -> AsyncIterator[Front]:
    running = Front(TransceiverConfig(id=1), 2, worker_argv=[sys.executable, str(STUB)],
                    directory_spec="memory", restart_seconds=0.3)
    running.start()
    try:
        assert await running.wait_ready(20), "stub workers did not come up"
        await running.listen("127.0.0.1", 0)
        yield running
    finally:
        await running.stop(1.0)


async def _post(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.post(f"{url}/v1/calls", data="v=0\r\n",
                            headers={"Content-Type": "application/sdp",
                                     "Authorization": "Bearer ek_x"}) as r:
        return r.status, r.headers.get("Location", "")


async def _until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_calls_go_to_the_least_loaded_worker_and_follow_ups_to_their_own(
        front: Front) -> None:
    url = f"http://127.0.0.1:{front.port}"
    async with aiohttp.ClientSession() as session:
        placed = [await _post(session, url) for _ in range(4)]
        assert [status for status, _ in placed] == [201] * 4
        workers = sorted(loc.rsplit("/", 1)[1][:2] for _, loc in placed)
        assert workers == ["w0", "w0", "w1", "w1"]  # two each: least loaded first
        location = placed[1][1]
        async with session.get(url + location, headers={"Authorization": "Bearer k"}) as r:
            body = await r.json()
        # The worker that holds the call answers, and the credential reaches it.
        assert body["worker"] == int(location.rsplit("/", 1)[1][1])
        assert body["auth"] == "Bearer k"
        async with session.delete(url + location) as r:
            assert r.status == 204
        async with session.get(url + location) as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "not_found"
        async with session.post(f"{url}/v1/realtime/client_secrets") as r:
            assert (await r.json())["value"].startswith("ek_from_worker_")


@pytest.mark.asyncio
async def test_a_killed_worker_loses_only_its_calls_and_comes_back(front: Front) -> None:
    url = f"http://127.0.0.1:{front.port}"
    async with aiohttp.ClientSession() as session:
        first = [await _post(session, url) for _ in range(2)]
        by_worker = {loc.rsplit("/", 1)[1][:2]: loc for _, loc in first}
        victim = front.workers[1]
        assert victim.proc is not None
        old_pid = victim.proc.pid
        os.kill(old_pid, signal.SIGKILL)
        await _until(lambda: not victim.up)
        async with session.get(url + by_worker["w1"]) as r:
            assert r.status == 404  # gone with its worker
        async with session.get(url + by_worker["w0"]) as r:
            assert r.status == 200  # the other worker's call goes on
        # While it is down, every new call goes to the one that is up.
        while_down = [await _post(session, url) for _ in range(3)]
        assert {loc.rsplit("/", 1)[1][:2] for _, loc in while_down} == {"w0"}
        await _until(lambda: victim.up)
        assert victim.proc is not None and victim.proc.pid != old_pid
        assert victim.restarts == 1
        await asyncio.sleep(0.6)  # a health poll: the loads are the workers' own again
        status, location = await _post(session, url)
        assert status == 201 and location.rsplit("/", 1)[1].startswith("w1")
        async with session.get(f"{url}/healthz") as r:
            health = await r.json()
        assert [w["restarts"] for w in health["workers"]] == [0, 1]
        assert all(w["up"] for w in health["workers"])


@pytest.mark.asyncio
async def test_draining_the_host_refuses_new_calls_and_stops_every_worker() -> None:
    running = Front(TransceiverConfig(id=1), 2, worker_argv=[sys.executable, str(STUB)],
                    directory_spec="memory")
    running.start()
    try:
        assert await running.wait_ready(20)
        await running.listen("127.0.0.1", 0)
        url = f"http://127.0.0.1:{running.port}"
        procs = [w.proc for w in running.workers]
        stopping = asyncio.ensure_future(running.stop(1.0))
        await _until(lambda: running.draining)
        async with aiohttp.ClientSession() as session:
            with_draining = await _post(session, url)
        assert with_draining[0] == 503
        await stopping
        assert all(p is not None and p.returncode is not None for p in procs)
    finally:
        await running.stop(0)


@pytest.mark.asyncio
async def test_a_worker_that_cannot_start_fails_the_front_with_a_reason() -> None:
    running = Front(TransceiverConfig(id=1), 2,
                    worker_argv=[sys.executable, str(STUB), "--fail"], directory_spec="memory")
    running.start()
    try:
        assert not await running.wait_ready(20)
        assert "failed to start (exit status 1)" in running.start_failure
    finally:
        await running.stop(0)
