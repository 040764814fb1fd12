# SPDX-License-Identifier: Apache-2.0
"""orchestrator/abi.py is what genabi makes of bpf/ now (needs bcc and root)."""

from __future__ import annotations

import pytest

from orchestrator import genabi

pytestmark = pytest.mark.root


def test_committed_abi_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    # A C change without `python -m orchestrator.genabi` fails here, with the diff.
    # genabi compiles relay.c once and asks the kernel for the maps' layouts.
    status = genabi.main(["--check"])
    out, err = capsys.readouterr()
    assert status == 0, out + err
