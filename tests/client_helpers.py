"""Helpers for the client tests of servicing and events: people with a role, the CLI as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lending_grpc.client import LendingClient
from lending_grpc.core.admin import AccountAdmin
from lending_grpc.core.clock import Clock
from lending_grpc.core.storage.database import LendingDatabase
from lending_grpc.core.views import Actor

PASSWORD = "correct horse battery"
_GRANTOR = Actor(name="cli:test", rpc="lending-grpc users grant")


def sign_up(target: str, username: str) -> tuple[LendingClient, str]:
    """Register ``username``; a client that logs itself in, and the user's public id."""
    with LendingClient(target) as bootstrap:
        user = bootstrap.register(username, PASSWORD, f"{username}@example.com")
    return LendingClient(target, username=username, password=PASSWORD), user.user_id


def grant_operator(database: LendingDatabase, username: str) -> None:
    """What `lending-grpc users grant USERNAME operator` does on the server host."""
    AccountAdmin(database, Clock()).set_role(_GRANTOR, username, "operator", granted=True)


class Cli:
    """`python -m lending_grpc ...` as a person types it: their own token cache, LENDING_SERVER set."""

    def __init__(self, server: str, home: Path) -> None:
        self.server = server
        self.home = home
        home.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("LENDING_")}
        environ.update(XDG_CONFIG_HOME=str(self.home / "config"), LENDING_SERVER=self.server)
        return environ

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "lending_grpc", *args]

    def __call__(self, *args: str, stdin: str | None = None, ok: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self.command(*args),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env(),
            cwd=self.home,
        )
        if ok:
            assert (result.returncode, result.stderr) == (0, ""), result.stderr
        else:
            assert result.returncode != 0, result.stdout
            assert "Traceback" not in result.stderr, result.stderr
        return result

    def log_in(self, username: str) -> Cli:
        """Log in as an existing user (tokens cached under this person's home)."""
        self("login", username, "--password-stdin", stdin=PASSWORD + "\n")
        return self
