# SPDX-License-Identifier: Apache-2.0
"""docs/deployment.md's operator tour, walked on a lab host with the doc's own commands.

Every fenced ``console`` block of docs/deployment.md preceded by a marker
``<!-- tour: HOST[, background | , retry SECONDS] -->`` is one step. HOST names
the lab namespace it runs in (relay, transceiver, model, client); its ``$ ``
lines (and the lines that follow one, such as a heredoc's body) are run, in
order, by ``bash -euo pipefail`` entered into that namespace with ``nsenter
--net`` (which is what the doc tells operators to use). ``background`` starts
the block's one command as a service and leaves it running until the end;
``retry N`` re-runs the block until it passes or N seconds are over.

Only three things differ from the doc, so that the tour cannot touch the
host: /etc/voxrelay and /var/lib/voxrelay become directories of the test,
and the relay name "edge1" becomes the lab's own relay name (so the lab's
teardown removes its pins even if the tour fails half-way). A step that
fails fails the test with its output: fix the doc (or the code), never the
test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.topology import Lab

pytestmark = [pytest.mark.netns, pytest.mark.root]

DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
MARKER = re.compile(
    r"<!-- tour: (?P<host>[a-z]+)(?:, (?P<mode>background|retry (?P<secs>\d+)))? -->\n"
    r"```console\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)
HOSTS = ("relay", "transceiver", "model", "client")


@dataclass(frozen=True)
class Step:
    host: str
    mode: str
    retry_seconds: float
    script: str
    """The block's commands with the ``$ `` prompts removed."""


def tour_steps(text: str) -> list[Step]:
    steps = []
    for m in MARKER.finditer(text):
        lines = m.group("body").splitlines()
        assert lines and lines[0].startswith("$ "), f"a tour block must start with a command:\n{m.group(0)}"
        script = "\n".join(line.removeprefix("$ ") for line in lines)
        steps.append(Step(m.group("host"), m.group("mode") or "", float(m.group("secs") or 0), script))
    return steps


def test_the_tour_is_found_in_the_doc() -> None:
    steps = tour_steps(DOC.read_text())
    assert len(steps) >= 11, [s.script for s in steps]
    assert {s.host for s in steps} == set(HOSTS)
    assert sum(s.mode == "background" for s in steps) == 3
    # The commands the operator could not get through are in it.
    scripts = "\n".join(s.script for s in steps)
    for command in ("voxrelay relay load", "voxrelay orchestrator run", "voxrelay transceiver run",
                    "voxrelay token mint --probe", "voxrelay probe --relay", "voxrelay relay unload"):
        assert command in scripts, command


def test_operator_tour_as_documented(tmp_path: Path) -> None:
    steps = tour_steps(DOC.read_text())
    etc, var = tmp_path / "etc", tmp_path / "var"
    services: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "PYTHONUNBUFFERED": "1"}
    with Lab() as lab:
        namespaces = {"relay": lab.relay.netns, "transceiver": lab.transceiver,
                      "model": lab.model, "client": lab.client}

        def localize(script: str) -> str:
            return (script.replace("/etc/voxrelay", str(etc)).replace("/var/lib/voxrelay", str(var))
                    .replace('"edge1"', f'"{lab.relay.name}"'))

        def argv(step: Step) -> list[str]:
            return ["nsenter", f"--net=/run/netns/{namespaces[step.host]}", "bash", "-euo",
                    "pipefail", "-c", localize(step.script)]

        def logs() -> str:
            return "\n".join(f"--- {name} ---\n" + log.read_text(errors="replace")[-3000:]
                             for name, _, log in services)

        try:
            for number, step in enumerate(steps, 1):
                where = f"tour step {number} on {step.host}:\n{step.script}"
                if step.mode == "background":
                    log = tmp_path / f"step-{number}.log"
                    with open(log, "wb") as out:
                        proc = subprocess.Popen(argv(step), stdout=out, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=env, cwd=tmp_path,
                                                start_new_session=True)
                    services.append((f"step {number} ({step.script.split()[1:3]})", proc, log))
                    time.sleep(0.5)
                    assert proc.poll() is None, f"{where}\nexited at once:\n{logs()}"
                    continue
                deadline = time.monotonic() + step.retry_seconds
                while True:
                    done = subprocess.run(argv(step), capture_output=True, text=True, env=env,
                                          cwd=tmp_path, timeout=180, check=False)
                    if done.returncode == 0 or time.monotonic() >= deadline:
                        break
                    time.sleep(1)
                assert done.returncode == 0, (f"{where}\nexit {done.returncode}\n{done.stdout}\n"
                                              f"{done.stderr}\n{logs()}")
                assert "Traceback" not in done.stderr, f"{where}\n{done.stderr}"
            # The tour's last step unloaded the relay: nothing of it is pinned.
            assert not Path(f"/sys/fs/bpf/voxrelay/{lab.relay.name}").exists()
        finally:
            for _, proc, _ in reversed(services):
                if proc.poll() is None:
                    with _suppress():
                        os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        with _suppress():
                            os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait(5)


def _suppress():  # type: ignore[no-untyped-def]
    import contextlib

    return contextlib.suppress(ProcessLookupError, PermissionError)
