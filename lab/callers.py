# SPDX-License-Identifier: Apache-2.0
"""Callers in processes of their own: many calls from one namespace, on every core.

A lab call (``lab.call.TimedCallClient``) is a full-duplex aiortc endpoint:
Opus both ways, SRTP, ICE consent, about a tenth of a core. One Python event
loop that carries ten of them next to the lab's other work falls behind real
time; its sockets' receive queues then fill and every packet, the STUN ones
too, waits seconds in them. Consent checks (RFC 7675) have half a second for
their answer, so every call of that loop ends 30 s after it connected, although
the relays forwarded all along (what the scale-out lab with six calls met).
Real callers are separate machines; here they are separate processes.

``CallerPool(netns, processes=3)`` starts that many ``python -m lab.callers``
children, each inside ``netns`` (None: where the parent is) with its own event loop, and places calls on
them in turn. The pool talks to them in JSON lines over their stdin/stdout;
``RemoteCall`` is the parent's handle of one call: its answer, its counters
(reply frames received, the peer connection's state, the transceiver's view
from ``GET /v1/calls/{id}``), its hangup. A child that dies fails every
request to it with ``CallerGone`` (and its stderr tail), never a hang: every
request has a timeout. Leaving the pool ends every child (its calls close).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import sys
from collections import deque
from dataclasses import dataclass
from typing import Any, Self

REQUEST_TIMEOUT = 60.0
"""Seconds a request to a child may take (placing a call is the longest)."""


class CallerGone(RuntimeError):
    """A caller process ended, or did not answer a request in time."""


class CallerError(RuntimeError):
    """A request failed inside the caller process (its message says why)."""


# ------------------------------------------------------------------ parent side


class _Child:
    def __init__(self, index: int, proc: asyncio.subprocess.Process) -> None:
        self.index = index
        self.proc = proc
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.stderr: deque[str] = deque(maxlen=20)
        self.readers = [asyncio.create_task(self._read_stdout()),
                        asyncio.create_task(self._read_stderr())]

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                reply = json.loads(line)
            except ValueError:
                self.stderr.append(f"(not JSON on stdout) {line[:200]!r}")
                continue
            future = self.waiting.pop(reply.get("id"), None)
            if future is None or future.done():
                continue
            if reply.get("ok"):
                future.set_result(reply.get("result"))
            else:
                future.set_exception(CallerError(f"caller {self.index}: {reply.get('error')}"))
        gone = CallerGone(f"caller {self.index} ended (exit {await self.proc.wait()}): "
                          + " | ".join(self.stderr))
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(gone)
        self.waiting.clear()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr.append(line.decode(errors="replace").rstrip())

    async def request(self, op: str, timeout: float = REQUEST_TIMEOUT, **args: Any) -> Any:
        if self.proc.returncode is not None or self.proc.stdin is None:
            raise CallerGone(f"caller {self.index} has ended: " + " | ".join(self.stderr))
        rid = next(self.ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting[rid] = future
        self.proc.stdin.write(json.dumps({"id": rid, "op": op, **args}).encode() + b"\n")
        try:
            await self.proc.stdin.drain()
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise CallerGone(f"caller {self.index}: {op} took over {timeout} s") from None
        except (BrokenPipeError, ConnectionResetError):
            raise CallerGone(f"caller {self.index} has ended: " + " | ".join(self.stderr)) from None
        finally:
            self.waiting.pop(rid, None)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(CallerGone, CallerError):
                await self.request("exit", timeout=15)
        with contextlib.suppress(ProcessLookupError):
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)


@dataclass
class RemoteCall:
    """The parent's handle of one call in a caller process."""

    child: _Child
    ref: int
    call_id: str
    location: str
    answer_sdp: str

    async def counters(self) -> dict[str, Any]:
        """``{"frames_received": reply frames so far, "state": peer connection state}``."""
        result: dict[str, Any] = await self.child.request("counters", call=self.ref)
        return result

    async def status(self) -> dict[str, Any]:
        """The transceiver's ``GET /v1/calls/{id}`` body (its status must be 200)."""
        result: dict[str, Any] = await self.child.request("status", call=self.ref)
        return result

    async def hangup(self) -> int:
        """``DELETE`` the call; its HTTP status (204: it was still there)."""
        status: int = await self.child.request("hangup", call=self.ref)
        return status

    async def close(self) -> None:
        """Close the peer connection (its media stops)."""
        await self.child.request("close", call=self.ref)


class CallerPool:
    """``processes`` caller processes in ``netns``; ``place`` spreads calls over them."""

    def __init__(self, netns: str | None, processes: int = 3) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, not {processes}")
        self.netns = netns
        self.processes = processes
        self.children: list[_Child] = []
        self._next = itertools.cycle(range(processes))

    async def __aenter__(self) -> Self:
        try:
            for i in range(self.processes):
                where = ["--netns", self.netns] if self.netns else []
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "lab.callers", *where,
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
                self.children.append(_Child(i, proc))
            # Each child says it is up (aiortc imported, namespace entered).
            await asyncio.gather(*(c.request("ping") for c in self.children))
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.children), return_exceptions=True)

    async def place(self, url: str, token: str, timeout: float = 30.0,
                    wait_model: float = 20.0) -> RemoteCall:
        """Place a call on the next caller process; returns once the call's
        model stream is connected (its ``model`` event)."""
        child = self.children[next(self._next)]
        r = await child.request("place", timeout=timeout + wait_model + 10, url=url, token=token,
                                call_timeout=timeout, wait_model=wait_model)
        return RemoteCall(child, r["ref"], r["call_id"], r["location"], r["answer_sdp"])


# ------------------------------------------------------------------ child side


async def _serve() -> None:
    from lab.call import TimedCallClient

    class CountingClient(TimedCallClient):
        """Counts reply frames and decodes nothing further: the counter is all
        the lab asks of it, and the resampling would be most of a caller's CPU."""

        frames_received = 0

        def _on_frame(self, arrived_at: float) -> bool:
            self.frames_received += 1
            return False

    calls: dict[int, CountingClient] = {}
    refs = itertools.count(1)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout

    def reply(rid: Any, ok: bool, value: Any) -> None:
        out.write(json.dumps({"id": rid, "ok": ok, ("result" if ok else "error"): value}) + "\n")
        out.flush()

    async def handle(req: dict[str, Any]) -> Any:
        op = req.get("op")
        if op == "ping":
            return os.getpid()
        if op == "place":
            client = CountingClient(req["url"], req["token"], timeout=req["call_timeout"])
            await client.__aenter__()
            try:
                await client.wait_event("model", state="connected", timeout=req["wait_model"])
            except BaseException:
                await client.close()
                raise
            ref = next(refs)
            calls[ref] = client
            return {"ref": ref, "call_id": client.call_id, "location": client.location,
                    "answer_sdp": client.answer_sdp}
        if op not in ("counters", "status", "hangup", "close"):
            raise ValueError(f"unknown request {op!r}")
        placed = calls.get(req.get("call", -1))
        if placed is None:
            raise ValueError(f"no call {req.get('call')!r} in this caller")
        client = placed
        if op == "counters":
            return {"frames_received": client.frames_received, "state": client.pc.connectionState}
        if op == "status":
            return await client.status()
        if op == "hangup":
            return await client.hangup()
        await client.close()  # "close"
        return None

    async def run(req: dict[str, Any]) -> None:
        try:
            reply(req.get("id"), True, await handle(req))
        except Exception as exc:  # noqa: BLE001 - the parent gets it as CallerError
            reply(req.get("id"), False, f"{type(exc).__name__}: {exc}")

    tasks: set[asyncio.Task[None]] = set()
    try:
        while line := await reader.readline():
            try:
                req = json.loads(line)
            except ValueError:
                reply(None, False, f"not a JSON request: {line[:200]!r}")
                continue
            if req.get("op") == "exit":
                reply(req.get("id"), True, None)
                break
            task = asyncio.create_task(run(req))  # requests of different calls overlap
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in calls.values()), return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.callers",
        description="A caller process of lab.callers.CallerPool: places calls from inside "
                    "--netns on JSON-line requests on stdin, answers on stdout.")
    parser.add_argument("--netns", help="the network namespace the calls come from "
                                        "(default: the one this process starts in)")
    args = parser.parse_args(argv)
    if args.netns:
        from orchestrator.netlink import enter_netns

        enter_netns(args.netns)  # this whole process is a caller in that namespace
    asyncio.run(_serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
