# SPDX-License-Identifier: Apache-2.0
"""ruff and mypy over the Python tree, as ``make lint`` runs them.

Fast tier: a finding fails the suite here, with the linter's own output, rather
than waiting for someone to run ``make lint``. Both read their settings from
pyproject.toml, so they run from the repository root.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Keep in step with the Makefile's lint target.
RUFF_PATHS = ("voxrelay", "orchestrator", "transceiver", "lab", "tests", "bench")
# The product packages pass `mypy --strict`; the lab, below the tests and the
# bench, is checked without --strict (its fixtures wrap untyped pyroute2/bcc).
PRODUCT = ("voxrelay", "orchestrator", "transceiver")
LAB = ("lab",)


def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_ruff_is_clean() -> None:
    result = run_tool("ruff", "check", "--no-cache", *RUFF_PATHS)
    assert result.returncode == 0, f"ruff check found problems:\n{result.stdout}{result.stderr}"


def test_mypy_strict_is_clean_on_the_product() -> None:
    result = run_tool("mypy", "--strict", *PRODUCT)
    assert result.returncode == 0, f"mypy --strict found problems:\n{result.stdout}{result.stderr}"


def test_mypy_is_clean_on_the_lab() -> None:
    result = run_tool("mypy", *LAB)
    assert result.returncode == 0, f"mypy found problems:\n{result.stdout}{result.stderr}"
