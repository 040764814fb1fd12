# SPDX-License-Identifier: Apache-2.0
"""bench/run.py before and around the load: the dependency check that stops a
run at once, and the time bound every step is held to. No root needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import run

ROOT = Path(__file__).resolve().parents[2]


def test_missing_dependencies_names_each_one_and_where_it_comes_from() -> None:
    def no_matplotlib(name: str) -> object:
        if name.startswith("matplotlib"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return object()

    missing = run.missing_dependencies(import_module=no_matplotlib,
                                       which=lambda exe: None if exe == "turnserver" else "/x")
    assert missing == [
        ("Python module matplotlib (the plots: the [bench] extra, pip install -e '.[bench]'): "
        "No module named 'matplotlib'"),
        "program turnserver (apt-get install coturn)",
    ]
    assert run.missing_dependencies(python_only=True, import_module=no_matplotlib,
                                    which=lambda exe: None)[0].startswith(
        "Python module matplotlib")
    assert len(run.missing_dependencies(python_only=True, import_module=no_matplotlib,
                                        which=lambda exe: None)) == 1


def test_missing_agg_backend_counts_as_missing_matplotlib() -> None:
    def no_agg(name: str) -> object:
        if name == "matplotlib.backends.backend_agg":
            raise ImportError("libpng is gone")
        return object()

    assert run.missing_dependencies(import_module=no_agg, which=lambda exe: "/x") == [
        ("Python module matplotlib (the plots: the [bench] extra, pip install -e '.[bench]'): "
        "libpng is gone")]


def test_render_only_stops_before_anything_when_matplotlib_cannot_import(tmp_path: Path) -> None:
    # As a user without the [bench] extra would run it: the import is blocked
    # for the whole interpreter, and the run stops at the check with exit 2.
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'matplotlib' or name.startswith('matplotlib.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (blocked)', name=name)\n"
        "sys.meta_path.insert(0, Block())\n")
    (tmp_path / "results.json").write_text("{}")
    out = subprocess.run(
        [sys.executable, "-m", "bench.run", "--render-only", "--results-dir", str(tmp_path),
         "--out", str(tmp_path / "BENCHMARKS.md")],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{ROOT}"},
    )
    assert out.returncode == 2, out.stderr
    assert "bench: missing dependencies" in out.stderr
    assert "Python module matplotlib (the plots: the [bench] extra" in out.stderr
    assert not (tmp_path / "BENCHMARKS.md").exists()


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_deadline_cuts_each_section_to_what_is_left() -> None:
    clock = FakeClock()
    d = run.Deadline(575, clock)
    assert d.section_timeout(120) == 120
    clock.t += 500  # 75 s left: the report and the kill grace come off first
    assert d.left() == 75
    assert d.section_timeout(120) == 75 - run.KILL_GRACE_S - run.REPORT_S
    clock.t += 40   # 35 s left: less than MIN_SECTION_S after those: skipped
    assert d.section_timeout(120) is None


def test_relay_phase_hard_stop_leaves_the_report_its_time() -> None:
    clock = FakeClock()
    d = run.Deadline(575, clock)
    assert d.relay_stop(360) == 360 + run.RELAY_GRACE_S
    # a budget as long as the whole run still stops in time for the report
    assert d.relay_stop(575) == 575 - run.REPORT_S
    clock.t += 600
    assert d.relay_stop(360) == 1.0  # already late: at once


def test_the_bounds_add_up_to_under_ten_minutes() -> None:
    # The relay phase is stopped by BUDGET_S + RELAY_GRACE_S, every later section
    # ends (with its kill grace) by TOTAL_S - REPORT_S, and 25 s are left for
    # start-up, teardown and the report: make bench stays under 600 s.
    assert run.TOTAL_S + 25 <= 600
    assert run.BUDGET_S + run.RELAY_GRACE_S < run.TOTAL_S - run.REPORT_S
    makefile = (ROOT / "Makefile").read_text()
    assert "\t$(PY) -m bench.run $(ARGS)" in makefile  # with its default --total


def test_alarm_raises_time_up_and_is_cancelled_on_exit() -> None:
    import time

    with pytest.raises(run.TimeUp, match="stopped after 0 s"), run.alarm(0.05):
        time.sleep(5)
    with run.alarm(0.05):
        pass
    time.sleep(0.1)  # no alarm left armed: this would raise


def test_alarm_gives_an_earlier_timer_back() -> None:
    import signal

    fired = []
    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30)
        with run.alarm(10):
            pass
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25 < left <= 30
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert fired == []


STUB = "bench.tests.section_stub"


def test_section_ok_and_failed(tmp_path: Path) -> None:
    assert run._section(STUB, "stub", 30, ["ok", str(tmp_path / "m")]) == (
        "ok", "| a | b |\n|---|---|\n| 1 | 2 |")
    status, md = run._section(STUB, "stub", 30, ["fail", str(tmp_path / "m")])
    assert status == f"failed: {STUB} failed: section_stub: the lab would not come up"
    assert md == f"not measured: {STUB} failed: section_stub: the lab would not come up"
    assert run._section(STUB, "stub", None, ["ok", "x"]) == (
        "skipped: time bound", "not measured: skipped, the run's time bound was near")


def test_section_over_its_time_gets_one_sigint_and_cleans_up(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    status, md = run._section(STUB, "stub", 1.0, ["hang", str(marker)])
    assert status == "skipped: over its time"
    assert md == f"not measured: {STUB} took more than 1 s and was stopped"
    assert marker.read_text() == "cleaned after 1 SIGINT"
