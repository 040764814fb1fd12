# SPDX-License-Identifier: Apache-2.0
"""Every source file says its licence in an SPDX line near its top.

The Python (and the userland C of the bench) is Apache-2.0; the C that is
loaded into the kernel (bpf/, bench/xdp/) is GPL-2.0-only, since the kernel
requires a GPL-compatible licence of a program that calls GPL-only helpers
such as bpf_fib_lookup. protoc's output is left as protoc writes it (a test
regenerates it byte for byte).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOC_OUTPUT = {"transceiver/model/voice_pb2.py", "transceiver/model/voice_pb2_grpc.py",
                 "transceiver/model/voice_pb2.pyi"}
SOURCE_SUFFIXES = (".py", ".sh", ".c", ".h", ".proto")


def expected_licence(path: str) -> str:
    kernel_c = path.endswith((".c", ".h")) and path.startswith(("bpf/", "bench/xdp/"))
    return "GPL-2.0-only" if kernel_c else "Apache-2.0"


def tracked_sources() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                            check=True, timeout=30).stdout.split()
    return [p for p in listed
            if (p.endswith(SOURCE_SUFFIXES) or p == ".ci/run") and p not in PROTOC_OUTPUT]


def test_every_source_file_has_its_spdx_line() -> None:
    wrong = []
    for path in tracked_sources():
        head = (ROOT / path).read_text().splitlines()[:3]
        want = f"SPDX-License-Identifier: {expected_licence(path)}"
        if not any(want in line for line in head):
            wrong.append(f"{path}: wants '{want}' in its first three lines")
    assert not wrong, "\n".join(wrong)


def test_the_rules_cover_both_licences() -> None:
    sources = tracked_sources()
    assert "bpf/relay.c" in sources
    assert expected_licence("bpf/relay.c") == "GPL-2.0-only"
    assert expected_licence("bench/gen/udpgen.c") == "Apache-2.0"
    assert expected_licence("orchestrator/abi.py") == "Apache-2.0"
