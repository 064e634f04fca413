"""Run `lending-grpc serve` as a real child process, for tests that signal or kill it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from conftest import TEST_DATA_KEY, TEST_SECRET_KEY

_SERVING = re.compile(r"serving on [^\s]+:(\d+)")


def child_env(**settings: str) -> dict[str, str]:
    """The environment for a child server: the caller's, minus any LENDING_* of the developer's own."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("LENDING_")}
    env.update(
        LENDING_SECRET_KEY=TEST_SECRET_KEY,
        LENDING_DATA_KEY=TEST_DATA_KEY,
        LENDING_INSECURE_FAST_PASSWORD_HASH="true",
        LENDING_DRAIN_DELAY_SECONDS="0.2",
    )
    env.update(settings)
    return env


def run_cli(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess:
    """Run `python -m lending_grpc ARGS` to completion in ``cwd`` with a clean test environment."""
    return subprocess.run(
        [sys.executable, "-m", "lending_grpc", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(**settings),
        cwd=cwd,
    )


class ServerProcess:
    """A `python -m lending_grpc serve` child on an ephemeral port; its log is collected."""

    def __init__(self, database: Path | str, *extra_args: str, env: dict[str, str] | None = None) -> None:
        """Serve ``database``: a SQLite file path or any database URL."""
        url = database if isinstance(database, str) else f"sqlite:///{database}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lending_grpc",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                url,
                *extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(**(env or {})),
            cwd=tempfile.mkdtemp(),  # an empty directory: no stray .env from the developer's checkout
        )
        self.log: list[str] = []
        self._port: int | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._ready.wait(30) or self._port is None:
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        self.port = self._port
        self.target = f"127.0.0.1:{self.port}"

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            match = _SERVING.search(line)
            if match:
                self._port = int(match.group(1))
                self._ready.set()
        self._ready.set()

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, like a power cut of the process."""
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 20) -> int | None:
        """SIGTERM and wait for the graceful exit; returns the exit code (None if it had to be killed)."""
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def wait_gone(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
