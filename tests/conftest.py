# SPDX-License-Identifier: Apache-2.0
"""Shared by every tier: the Redis fixture, and the tier rule (root tests live in
tests/bpf or tests/netns). Plain helper functions are in tests/support.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.redis_server import MISSING, RedisServer

UNIT = Path(__file__).parent / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The fast tier runs tests/unit whole, without -m: a root test there would
    # fail (or pass by accident) as an ordinary user, so it belongs in tests/bpf.
    misplaced = [item.nodeid for item in items
                 if item.get_closest_marker("root") and UNIT in Path(item.path).parents]
    if misplaced:
        raise pytest.UsageError("tests marked root belong in tests/bpf, not tests/unit: "
                                + ", ".join(misplaced))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for the test, always stopped, also when the test fails."""
    if not RedisServer.available():
        pytest.skip(MISSING)
    with RedisServer(tmp_path) as server:
        yield server
