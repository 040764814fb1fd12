"""Call setup through the XDP relay: POST offer -> ICE/DTLS connected -> first audio.

    python -m bench.callsetup [--calls 20] [--json]

Starts the whole voice stack once (voxrelay.lab.start_lab: topology, one
relay, orchestrator, transceiver, model; torn down on exit), then places
``calls`` calls one after another from the client namespace with
transceiver.client.CallClient and times each:

- ``connected_ms``: POST /v1/calls sent -> the client's peer connection is
  "connected" (ICE through the relay, then DTLS), CallClient.connect_ms;
- ``first_audio_ms``: POST sent -> the first audio chunk from the
  transceiver arrives at the client (through the relay).

The direct path (client to transceiver without a relay) does not exist in
the lab on purpose (the transceiver is unreachable from the client
namespace), so there is no "direct" column. Needs root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from bench.report import percentile


async def _one_call(url: str, timeout: float) -> dict[str, float]:
    from transceiver.client import CallClient

    started = time.monotonic()
    async with CallClient(url, "", timeout) as client:
        connected = client.connect_ms
        await client.wait_for(lambda: len(client.reply) > 0, "first audio", poll=True,
                              timeout=timeout)
        first_audio = (time.monotonic() - started) * 1000
    return {"connected_ms": connected, "first_audio_ms": first_audio}


async def measure(calls: int = 20, timeout: float = 15.0) -> dict[str, Any]:
    from voxrelay.lab import LabOptions, start_lab

    t0 = time.monotonic()
    async with start_lab(LabOptions(relays=1)) as lab:
        ready_s = time.monotonic() - t0
        runs = []
        for _ in range(calls):
            runs.append(await lab.client_call(_one_call, lab.signaling_url, timeout))
    out: dict[str, Any] = {"calls": len(runs), "lab_start_s": ready_s, "runs": runs}
    for key in ("connected_ms", "first_audio_ms"):
        xs = [r[key] for r in runs]
        out[key] = {"p50": percentile(xs, 50), "p95": percentile(xs, 95)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.calls < 1:
        print("callsetup: --calls must be at least 1", file=sys.stderr)
        return 2
    res = asyncio.run(measure(args.calls))
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        for key in ("connected_ms", "first_audio_ms"):
            print(f"{key}: p50 {res[key]['p50']:.1f} ms, p95 {res[key]['p95']:.1f} ms "
                  f"over {res['calls']} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
