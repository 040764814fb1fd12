# SPDX-License-Identifier: Apache-2.0
"""A stand-in section for bench/tests/test_run_bounds.py:
``python -m bench.tests.section_stub --markdown MODE MARKER``.

MODE ok prints a table; fail exits 1 with a message; hang sleeps until
SIGINT, then writes "cleaned" to MARKER as a lab's cleanup would, and counts
how many SIGINTs it saw."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path


def main() -> int:
    _, mode, marker = sys.argv[1:4]
    if mode == "ok":
        print("| a | b |\n|---|---|\n| 1 | 2 |")
        return 0
    if mode == "fail":
        print("section_stub: the lab would not come up", file=sys.stderr)
        return 1
    seen = []
    signal.signal(signal.SIGINT, lambda *_: seen.append(1))
    Path(marker).write_text("started")
    deadline = time.monotonic() + 60
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the cleanup takes a moment; a second SIGINT would land here
    Path(marker).write_text(f"cleaned after {len(seen)} SIGINT")
    return 130


if __name__ == "__main__":
    sys.exit(main())
