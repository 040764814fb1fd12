# SPDX-License-Identifier: Apache-2.0
"""Unit tests' environment: the directory secret comes from the environment,
so that no test reads or creates /var/lib/voxrelay/directory.secret."""

from __future__ import annotations

import pytest

from tests.support import DIRECTORY_SECRET


@pytest.fixture(autouse=True)
def _directory_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXRELAY_DIRECTORY_SECRET", DIRECTORY_SECRET)
