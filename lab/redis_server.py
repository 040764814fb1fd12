# SPDX-License-Identifier: Apache-2.0
"""A private redis-server (Debian's package) for tests and the bench.

Listens on a unix socket in a given directory (no TCP port to collide on)
with append-only persistence, so that a restart keeps the data as a
production Redis would. Use as a context manager, or start/stop/restart by
hand; ``stop`` is idempotent, so a ``finally`` can always call it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Self

MISSING = "redis-server is not installed (scripts/setup.sh installs it)"


class RedisServer:
    def __init__(self, workdir: Path, *, appendfsync: str = "always",
                 password: str = "") -> None:
        """``appendfsync`` "always" makes every acknowledged write survive a
        restart (what the tests check); the bench passes "everysec", Redis's
        own default, so that an fsync per write is not in its latencies.
        ``password``: the server requires it (``requirepass``)."""
        self.workdir = workdir
        self.password = password
        self.socket = workdir / "redis.sock"
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError(MISSING)
        self.proc = subprocess.Popen(
            [exe, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
             "--dir", str(self.workdir), "--appendonly", "yes",
             "--appendfsync", self.appendfsync,
             "--save", "", "--daemonize", "no", "--loglevel", "warning",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        self.socket.unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
