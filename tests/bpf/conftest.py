# SPDX-License-Identifier: Apache-2.0
"""The root tier: BPF_PROG_TEST_RUN packet tables, pinned maps, and a real
Ansible apply. Every test here needs root (and bcc); CI runs this tier as
root, so where that is missing the tier fails saying why: a skip is not a pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.relaylab import ProgTestRelay, root_and_bpf_available


@pytest.fixture(autouse=True, scope="session")
def root_and_bpf() -> None:
    reason = root_and_bpf_available()
    if reason is not None:
        pytest.fail(f"tests/bpf {reason}; CI runs this tier as root with bcc", pytrace=False)


@pytest.fixture(scope="module")
def lab() -> Iterator[ProgTestRelay]:
    """The relay loaded in its own namespace, once per module (ProgTestRelay.reset between tests)."""
    with ProgTestRelay() as relay_lab:
        yield relay_lab
