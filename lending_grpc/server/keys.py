"""Key rotation while serving: re-read the key files on SIGHUP (or when they change) and swap atomically.

Only the ``*_FILE`` settings are re-read: an inline ``LENDING_SECRET_KEY`` or
``LENDING_DATA_KEY`` (and a key generated beside a SQLite file) is fixed for
the life of the process, since the environment of a running process cannot
change. A file that cannot be used (unreadable, unsafe permissions, a short
or repeated key, a data key that some stored email still needs dropped)
changes nothing: the keys in use stay and an error says why.

What a swap changes: new tokens (and page tokens) are signed with the first
JWT key; tokens signed with any listed key keep verifying until they expire.
New emails are sealed with the first data key; re-sealing the stored ones
under it stays the job of the next start (``prepare_database``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

from lending_grpc.config import ConfigError, Settings, read_data_key_file, read_secret_key_file
from lending_grpc.core.admin import emails_sealed_with
from lending_grpc.core.crypto import Sealer
from lending_grpc.core.errors import LendingError
from lending_grpc.core.pagination import PageTokens
from lending_grpc.core.storage.database import LendingDatabase
from lending_grpc.core.tokens import TokenSigner, WeakSecretKey

log = logging.getLogger("lending_grpc.keys")


def describe_jwt_keys(ids: tuple[str, ...]) -> str:
    """``signing kid 3f2a9c1b, also verifying 77aa0e12`` for logs (ids, never keys)."""
    also = f", also verifying {' '.join(ids[1:])}" if len(ids) > 1 else ""
    return f"signing kid {ids[0]}{also}"


def describe_data_keys(versions: tuple[int, ...]) -> str:
    """``sealing with version 2, also opening 1`` for logs."""
    also = f", also opening {' '.join(map(str, versions[1:]))}" if len(versions) > 1 else ""
    return f"sealing with version {versions[0]}{also}"


def _fingerprint(path: str) -> str:
    """A digest of the file's bytes ("" when unreadable), to notice a change without keeping a copy."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


class KeyReloader:
    """Owns the swap of a server's keys; one background thread does the reading.

    ``request()`` is safe to call from a signal handler: it only wakes the
    thread. With ``poll_s`` > 0 the thread also wakes that often and reloads a
    file whose bytes changed since it was last looked at.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        signer: TokenSigner,
        page_tokens: PageTokens,
        sealer: Sealer,
        db: LendingDatabase,
    ) -> None:
        self._secret_key_file = settings.secret_key_file
        self._data_key_file = settings.data_key_file
        self._poll_s = settings.key_poll_seconds or None
        self._signer = signer
        self._page_tokens = page_tokens
        self._sealer = sealer
        self._db = db
        self._seen = {path: _fingerprint(path) for path in self._files()}
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()  # one reload at a time (the thread, or a test calling reload())
        self._thread: threading.Thread | None = None

    def _files(self) -> list[str]:
        return [path for path in (self._secret_key_file, self._data_key_file) if path]

    def start(self) -> None:
        """Start the thread that waits for requests (and polls, if asked to)."""
        self._thread = threading.Thread(target=self._run, name="key-reloader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def request(self) -> None:
        """Ask for a reload of every key file (what SIGHUP does); returns at once."""
        self._wake.set()

    def _run(self) -> None:
        while True:
            requested = self._wake.wait(self._poll_s)
            self._wake.clear()
            if self._stopping:
                return
            try:
                if requested:
                    self.reload()
                else:
                    self._reload_changed()
            except Exception:  # never let the thread die: the next request should still work
                log.exception("reloading the keys failed; the keys in use stay")

    def _reload_changed(self) -> None:
        changed = [path for path in self._files() if _fingerprint(path) != self._seen.get(path)]
        if changed:
            self.reload(only=changed)

    def reload(self, only: list[str] | None = None) -> bool:
        """Re-read the key files (or ``only`` these); True when every file read was usable.

        Each file stands alone: a broken data key file does not stop a good JWT
        key file from taking effect, and the other way round.
        """
        files = self._files()
        if not files:
            log.warning(
                "SIGHUP: no key file to re-read: LENDING_SECRET_KEY and LENDING_DATA_KEY are set inline "
                "(or generated); set LENDING_SECRET_KEY_FILE / LENDING_DATA_KEY_FILE to rotate without "
                "a restart (pid %d)",
                os.getpid(),
            )
            return True
        with self._lock:
            ok = True
            if self._secret_key_file and (only is None or self._secret_key_file in only):
                ok = self._reload_jwt_keys(self._secret_key_file) and ok
            if self._data_key_file and (only is None or self._data_key_file in only):
                ok = self._reload_data_keys(self._data_key_file) and ok
            return ok

    def _reload_jwt_keys(self, path: str) -> bool:
        self._seen[path] = _fingerprint(path)
        before = self._signer.key_ids
        try:
            keys = read_secret_key_file(path)
            self._signer.use_keys(keys)
        except (ConfigError, WeakSecretKey) as exc:
            log.error(
                "LENDING_SECRET_KEY_FILE not reloaded, keeping the JWT keys in use (%s): %s (pid %d)",
                describe_jwt_keys(before),
                exc,
                os.getpid(),
            )
            return False
        self._page_tokens.use_keys(keys)
        log.info(
            "JWT keys read from %s: %s (pid %d)", path, describe_jwt_keys(self._signer.key_ids), os.getpid()
        )
        return True

    def _reload_data_keys(self, path: str) -> bool:
        self._seen[path] = _fingerprint(path)
        before = self._sealer.versions
        try:
            sealer = read_data_key_file(path)
            dropped = set(before) - set(sealer.versions)
            if dropped and emails_sealed_with(self._db, dropped):
                raise ConfigError(
                    f"it drops data key {'version' if len(dropped) == 1 else 'versions'} "
                    f"{' '.join(map(str, sorted(dropped)))}, which stored "
                    "emails are still sealed with; keep them listed until a restart has re-sealed "
                    "every email under the first key"
                )
        except (ConfigError, LendingError) as exc:
            log.error(
                "LENDING_DATA_KEY_FILE not reloaded, keeping the data keys in use (%s): %s (pid %d)",
                describe_data_keys(before),
                exc,
                os.getpid(),
            )
            return False
        self._sealer.use_keys(sealer)
        log.info(
            "data keys read from %s: %s (pid %d)",
            path,
            describe_data_keys(self._sealer.versions),
            os.getpid(),
        )
        return True
