# SPDX-License-Identifier: Apache-2.0
"""A stand-in for one transceiver worker (``voxrelay transceiver run --worker I/N``),
for tests/unit/test_transceiver_workers.py: the same ready line and the same
HTTP surface the front uses, without aiortc, so that the front's placement,
routing, restarts and drain are tested in a second.

Calls answer 201 with Location /v1/calls/w<I>-<n>; GET and DELETE of a call
answer which worker holds it; SIGTERM drains (health says so) and exits."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys

from aiohttp import web


async def main(index: int) -> None:
    calls: set[str] = set()
    counter = itertools.count()
    draining = asyncio.Event()

    async def create(request: web.Request) -> web.Response:
        if draining.is_set():
            return web.json_response({"error": {"code": "unavailable"}}, status=503)
        await request.read()
        call_id = f"w{index}-{next(counter)}"
        calls.add(call_id)
        return web.Response(status=201, text="answer", content_type="application/sdp",
                            headers={"Location": f"/v1/calls/{call_id}"})

    async def call(request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        if call_id not in calls:
            return web.json_response({"error": {"code": "not_found"}}, status=404)
        if request.method == "DELETE":
            calls.discard(call_id)
            return web.Response(status=204)
        return web.json_response({"id": call_id, "worker": index,
                                  "auth": request.headers.get("Authorization", "")})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"calls": len(calls), "draining": draining.is_set()})

    async def secrets(request: web.Request) -> web.Response:
        return web.json_response({"value": f"ek_from_worker_{index}"})

    app = web.Application()
    app.router.add_post("/v1/calls", create)
    app.router.add_route("*", "/v1/calls/{call_id}", call)
    app.router.add_get("/healthz", health)
    app.router.add_post("/v1/realtime/client_secrets", secrets)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"event": "ready", "url": f"http://127.0.0.1:{port}"}), flush=True)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, draining.set)
    await draining.wait()
    await asyncio.sleep(0.5)  # a drain takes a while; the front must refuse meanwhile
    await runner.cleanup()


if __name__ == "__main__":
    worker = sys.argv[sys.argv.index("--worker") + 1]
    if "--fail" in sys.argv:
        sys.exit("stub worker: failing at start as asked")
    asyncio.run(main(int(worker.split("/")[0])))
