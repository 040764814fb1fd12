# SPDX-License-Identifier: Apache-2.0
"""Build the bench's C tools (bench/gen/*.c) with gcc into a build dir, once
per run, and wrap their invocations."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

GEN_DIR = Path(__file__).parent / "gen"
TOOLS = ("udpgen", "udpecho", "udpping")


def build(out_dir: Path) -> dict[str, Path]:
    """Compile every tool into ``out_dir``; raise with gcc's message on failure."""
    if shutil.which("gcc") is None:
        raise RuntimeError("gcc is needed to build the bench's generator (apt-get install gcc)")
    out_dir.mkdir(parents=True, exist_ok=True)
    built = {}
    for name in TOOLS:
        exe = out_dir / name
        proc = subprocess.run(
            ["gcc", "-O2", "-Wall", "-o", str(exe), str(GEN_DIR / f"{name}.c")],
            capture_output=True, text=True, timeout=120, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"gcc failed for {name}.c:\n{proc.stderr}")
        built[name] = exe
    return built


@dataclass(frozen=True)
class GenResult:
    sent: int
    errors: int
    elapsed: float
    pps: float


def parse_gen_output(text: str) -> GenResult:
    """The generator's one JSON line -> GenResult (ValueError if absent)."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            d = json.loads(line)
            return GenResult(int(d["sent"]), int(d["errors"]), float(d["elapsed"]),
                             float(d["pps"]))
    raise ValueError(f"no JSON result in generator output: {text!r}")
