"""The voxrelay XDP relay as a bench candidate.

Loads bpf/relay.c with the kernel helper's orchestrator.bpfprog, writes the
config/key/transceiver maps through orchestrator.maps, attaches with
orchestrator.loader. Until those modules exist on this branch the candidate
fails with a clear message and the report says so.
"""

from __future__ import annotations

import importlib
from typing import Any

from bench.candidates import Candidate


def _need(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeError(f"voxrelay XDP relay not available on this branch yet ({exc})") from None


class VoxRelay(Candidate):
    def start(self) -> None:
        _need("orchestrator.bpfprog")
        _need("orchestrator.maps")
        raise RuntimeError("voxrelay candidate not wired yet")


def prog_test_run_costs() -> dict[str, float]:
    _need("orchestrator.bpfprog")
    raise RuntimeError("prog_test_run not wired yet")
