"""Where `lending-grpc login` keeps tokens: one private JSON file, one entry per server.

$XDG_CONFIG_HOME/lending-grpc/tokens.json (default ~/.config/lending-grpc/),
directory mode 0700 and file mode 0600, because a refresh token is a
password for a week. Writes go through a private temporary file and a rename,
so a crash never leaves half a file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

from lending_grpc.client import Tokens

APP_DIR = "lending-grpc"
FILE_NAME = "tokens.json"


class TokenCacheError(OSError):
    """The token file cannot be read or written; the message says which file and why."""


def config_dir(environ: dict[str, str] | os._Environ = os.environ) -> Path:
    """$XDG_CONFIG_HOME/lending-grpc, or ~/.config/lending-grpc when it is unset or relative."""
    base = environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / APP_DIR


@dataclasses.dataclass(frozen=True)
class CachedLogin:
    """A cached login: who, and the token pair."""

    username: str
    tokens: Tokens


class TokenCache:
    """Read and write the cached sessions of one user."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or config_dir()
        self.path = self.directory / FILE_NAME

    def load(self, server: str) -> CachedLogin | None:
        """The session cached for ``server``, or None."""
        entry = self._read().get(server)
        if not isinstance(entry, dict):
            return None
        try:
            return CachedLogin(entry["username"], Tokens(**entry["tokens"]))
        except (KeyError, TypeError):
            return None  # written by an incompatible version: log in again

    def save(self, server: str, session: CachedLogin) -> None:
        """Cache ``session`` for ``server``, keeping the other servers' entries."""
        entries = self._read()
        entries[server] = {"username": session.username, "tokens": dataclasses.asdict(session.tokens)}
        self._write(entries)

    def forget(self, server: str) -> bool:
        """Drop the session of ``server``; False when there was none."""
        entries = self._read()
        if entries.pop(server, None) is None:
            return False
        self._write(entries)
        return True

    def _read(self) -> dict:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise TokenCacheError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except ValueError:
            return {}  # a corrupt cache only costs a new login
        servers = data.get("servers") if isinstance(data, dict) else None
        return servers if isinstance(servers, dict) else {}

    def _write(self, entries: dict) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # An existing directory keeps its mode on mkdir: tighten it if it is ours.
            info = self.directory.stat()
            if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != 0o700:
                self.directory.chmod(0o700)
            tmp = self.path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"servers": entries}, handle, indent=2, sort_keys=True)
                handle.write("\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise TokenCacheError(f"cannot write {self.path}: {exc.strerror}") from None
