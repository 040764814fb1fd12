# SPDX-License-Identifier: Apache-2.0
"""Helpers that tests call as plain functions (fixtures are in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.02,
          what: str = "the condition") -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(timeout, what))
        time.sleep(interval)


async def until_async(predicate: Callable[[], object], timeout: float = 5.0,
                      interval: float = 0.02, what: str = "the condition") -> None:
    """``until`` for coroutines: it sleeps on the event loop, so that the tasks
    the predicate waits for keep running."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(_timed_out(timeout, what))
        await asyncio.sleep(interval)


def _timed_out(timeout: float, what: str) -> str:
    return f"timed out after {timeout:g} s waiting for {what}"


DIRECTORY_SECRET = "unit-test-directory-secret-0123456789"  # noqa: S105 - a test's secret
"""What tests/unit/conftest.py puts in $VOXRELAY_DIRECTORY_SECRET for every unit test."""
