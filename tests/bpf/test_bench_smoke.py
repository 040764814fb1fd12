# SPDX-License-Identifier: Apache-2.0
"""Every section that `make bench` runs, once, with tiny counts
(``python -m bench.run --smoke``): a missing dependency or a broken section
fails this tier instead of rotting until someone runs the bench (issue #18).
No figures are asserted, only that each section ran and produced rows.

The bench is run as a program (bench/ and tests/ never import each other), in
a temp dir, so that the committed BENCHMARKS.md, bench/results/ and
docs/bench/ are left as they are. A new section in bench/run.py is a new entry
in SECTIONS with what its rows look like.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SMOKE_TOTAL_S = 420  # --total: bench.run holds itself to it (asserted below)
# The module's smoke run is set up inside the first test: give it its bound.
pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(SMOKE_TOTAL_S + 120)]

ROOT = Path(__file__).resolve().parents[2]
CANDIDATES = ("gen_only", "ceiling", "ceiling_threaded", "voxrelay", "voxrelay_threaded",
              "direct", "nftables", "userspace", "coturn")
COMMITTED = [ROOT / "BENCHMARKS.md", ROOT / "bench/results/voice.md",
             ROOT / "bench/results/sync.md", *sorted((ROOT / "docs/bench").glob("*.png"))]


def _relay_rows(cand: str) -> Callable[[dict[str, Any], str], None]:
    def check(res: dict[str, Any], md: str) -> None:
        for key in ("throughput", "throughput_xdp"):
            runs = res[key][cand]
            assert sorted(runs) == sorted(str(f) for f in res["flows"]), (key, runs)
            assert all(r["delivered"] > 0 for rs in runs.values() for r in rs), (key, runs)
        assert res["labels"][cand] in md
    return check


def _md_rows(key: str, first_line: str) -> Callable[[dict[str, Any], str], None]:
    def check(res: dict[str, Any], md: str) -> None:
        assert not res[key].startswith("not measured"), res[key][:500]
        assert first_line in res[key]
        assert res[key] in md
    return check


def _prog_test_run(res: dict[str, Any], md: str) -> None:
    assert res["prog_test_run"], res["notes"].get("prog_test_run")
    assert all(v["median"] > 0 for v in res["prog_test_run"].values())
    assert "### The program alone (BPF_PROG_TEST_RUN)" in md


# (section as bench/run.py names it in results.json "sections", what its rows look like)
SECTIONS: list[tuple[str, Callable[[dict[str, Any], str], None]]] = [
    ("prog_test_run", _prog_test_run),
    *[(f"relay.{c}", _relay_rows(c)) for c in CANDIDATES],
    ("bench.asr_wer", _md_rows("asr_wer_md", "| engine | clips | WER |")),
    ("bench.voice", _md_rows("voice_md", "### Call setup")),
    ("bench.bench_sync", _md_rows("sync_md", "**Announce -> routable**")),
    ("bench.tcpfront", _md_rows("tcpfront_md", "| path | frames forwarded |")),
]


def smoke_command(tmp: Path) -> list[str]:
    return [sys.executable, "-m", "bench.run", "--smoke", "--total", str(SMOKE_TOTAL_S),
            "--results-dir", str(tmp), "--out", str(tmp / "BENCHMARKS.md")]


def _state() -> set[str]:
    """Namespaces and voxrelay pins: whatever the run adds must be gone after it."""
    pins = Path("/sys/fs/bpf/voxrelay")
    found = {f"netns:{p.name}" for p in Path("/run/netns").glob("*")}
    if pins.is_dir():
        found |= {f"pin:{p}" for p in pins.rglob("*")}
    return found


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("bench-smoke")
    before = _state()
    committed = {p: p.stat().st_mtime_ns for p in COMMITTED if p.exists()}
    t0 = time.monotonic()
    out = subprocess.run(smoke_command(tmp), capture_output=True, text=True, cwd=ROOT,
                         timeout=SMOKE_TOTAL_S + 60, check=False)
    elapsed = time.monotonic() - t0
    (tmp / "stderr.log").write_text(out.stderr)
    return {"rc": out.returncode, "stderr": out.stderr, "elapsed": elapsed, "dir": tmp,
            "left": _state() - before,
            "touched": [p for p, m in committed.items() if p.stat().st_mtime_ns != m]}


def _results(smoke: dict[str, Any]) -> tuple[dict[str, Any], str]:
    d = smoke["dir"]
    assert (d / "results.json").is_file(), smoke["stderr"][-3000:]
    return json.loads((d / "results.json").read_text()), (d / "BENCHMARKS.md").read_text()


def test_smoke_run_exits_0_within_its_bound_and_leaves_nothing(smoke: dict[str, Any]) -> None:
    assert smoke["rc"] == 0, smoke["stderr"][-3000:]
    assert smoke["elapsed"] < SMOKE_TOTAL_S + 10  # the bound bench.run enforces, + start-up
    assert smoke["left"] == set()
    assert smoke["touched"] == []  # the committed report and figures are not the smoke's


@pytest.mark.parametrize(("section", "rows"), SECTIONS, ids=[s for s, _ in SECTIONS])
def test_section_ran_and_produced_rows(smoke: dict[str, Any], section: str,
                                       rows: Callable[[dict[str, Any], str], None]) -> None:
    res, md = _results(smoke)
    assert res["sections"].get(section) == "ok", (res["sections"], res.get("notes"))
    rows(res, md)


def test_every_section_is_listed_here(smoke: dict[str, Any]) -> None:
    res, _ = _results(smoke)
    assert sorted(res["sections"]) == sorted(s for s, _ in SECTIONS)


def test_report_and_plots_written(smoke: dict[str, Any]) -> None:
    _, md = _results(smoke)
    assert md.startswith("# Benchmarks")
    assert "(1 round, no range)" in md  # the headline ratios, with their spread
    for name in ("throughput", "throughput_xdp", "latency"):
        png = smoke["dir"] / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name}.png)" in md


def test_smoke_fails_at_once_naming_a_missing_dependency(tmp_path: Path) -> None:
    """matplotlib (only the report needs it) blocked for the whole interpreter,
    as on a machine without the [bench] extra: the run stops before it builds
    anything, saying what is missing, instead of after minutes of load."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'matplotlib' or name.startswith('matplotlib.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (blocked)', name=name)\n"
        "sys.meta_path.insert(0, Block())\n")
    before = _state()
    t0 = time.monotonic()
    out = subprocess.run(smoke_command(tmp_path), capture_output=True, text=True, cwd=ROOT,
                         timeout=120, check=False,
                         env=dict(os.environ, PYTHONPATH=f"{block}:{ROOT}"))
    assert out.returncode == 2, out.stderr[-2000:]
    assert "bench: missing dependencies" in out.stderr
    assert "Python module matplotlib (the plots: the [bench] extra" in out.stderr
    assert "building" not in out.stderr  # no tools, no topology, no load
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "results.json").exists()
    assert _state() - before == set()


def test_the_time_bound_is_enforced(tmp_path: Path) -> None:
    """--total 45 is less than the smoke needs (~70 s): the relay phase is
    stopped hard (SIGALRM) 20 s before the end, the later sections are skipped
    for want of time, and the report is still written, saying so, in time."""
    total = 45
    before = _state()
    t0 = time.monotonic()
    cmd = smoke_command(tmp_path)
    cmd[cmd.index("--total") + 1] = str(total)
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=total + 60,
                         check=False)
    elapsed = time.monotonic() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    assert elapsed < total + 10, out.stderr[-3000:]  # + interpreter start-up and the imports
    assert "time is up" in out.stderr
    res = json.loads((tmp_path / "results.json").read_text())
    assert "stopped after" in res["notes"]["time bound"]
    assert {res["sections"][m] for m in ("bench.asr_wer", "bench.voice", "bench.bench_sync")} == {
        "skipped: time bound"}
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "- **time bound**: the relay phase was stopped after" in md
    assert _state() - before == set()
