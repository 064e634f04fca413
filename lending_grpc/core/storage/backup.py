"""Online backups of a SQLite database, and restoring them, with checks before anything is trusted.

`backup_sqlite` copies a live database with SQLite's online backup API:
one read transaction on the source, so the copy is one consistent moment
of the database while the server goes on writing (WAL: readers and the
writer do not block each other). `restore_sqlite` checks a backup (SQLite's
integrity check, a schema this release knows) and copies it into the
service's database file, refusing to replace an existing one unless told.

PostgreSQL has its own tools for this (pg_dump and pg_restore; see
docs/operations/backups.md).
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from pathlib import Path

from lending_grpc.core.plural import count
from lending_grpc.core.storage.migrations import LATEST_VERSION

# What a backup's summary counts: enough to compare with what the service reported.
_COUNTED = (("user", "user"), ("loan", "loan"), ("payment", "payment"), ("audit event", "audit_event"))


class BackupError(RuntimeError):
    """A backup or restore cannot be made: the message says why, and nothing was changed."""


@dataclasses.dataclass(frozen=True)
class BackupSummary:
    """What a checked database file holds."""

    path: Path
    size_bytes: int
    schema_version: int
    counts: dict[str, int]
    seconds: float = 0.0

    def describe(self) -> str:
        """One line for operators: size, schema, integrity and the row counts."""
        counts = ", ".join(count(number, name) for name, number in self.counts.items())
        return (
            f"{self.size_bytes / 1024 / 1024:.1f} MiB, schema version {self.schema_version}, "
            f"integrity ok; {counts}"
        )


def _connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    uri = f"file:{path.as_posix()}{'?mode=ro' if read_only else ''}"
    return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)


def _check(conn: sqlite3.Connection, path: Path) -> BackupSummary:
    """Integrity and schema of an open database; BackupError when it is not one to trust."""
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise BackupError(f"{path} fails SQLite's integrity check: {'; '.join(problems[:3])}")
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables:
            raise BackupError(f"{path} is not a lending-grpc database (it has no schema_version table)")
        version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
        if version > LATEST_VERSION:
            raise BackupError(
                f"{path} has schema version {version}, newer than this release's {LATEST_VERSION}: "
                "restore it with the release that made it"
            )
        counts = {
            name: conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            for name, table in _COUNTED
            if table in tables
        }
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} cannot be read as a SQLite database: {exc}") from None
    return BackupSummary(path, path.stat().st_size, version, counts)


def check_backup(path: Path) -> BackupSummary:
    """Open a backup read-only and check it; BackupError when it is missing or not to be trusted."""
    if not path.is_file():
        raise BackupError(f"{path} does not exist or is not a file")
    conn = _connect(path, read_only=True)
    try:
        return _check(conn, path)
    finally:
        conn.close()


def _private_new_file(path: Path) -> None:
    # Backups hold what the database holds (password hashes, sealed emails): the owner's only.
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except FileExistsError:
        raise BackupError(f"{path} already exists: choose a new name, or remove it first") from None
    except OSError as exc:
        raise BackupError(f"cannot create {path}: {exc.strerror}") from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_sqlite(source: Path, target: Path) -> BackupSummary:
    """Copy the live database ``source`` to the new file ``target``, consistently, then check the copy.

    The copy is written to a hidden file beside ``target`` and renamed into
    place once it is complete, synced and checked, so ``target`` never names
    a half-written backup. It is a self-contained file (rollback journal,
    not WAL): one file to keep.
    """
    if not source.is_file():
        raise BackupError(f"the database {source} does not exist")
    if target.exists():
        raise BackupError(f"{target} already exists: choose a new name, or remove it first")
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)
    _private_new_file(partial)
    started = time.monotonic()
    try:
        src = _connect(source)
        dst = _connect(partial)
        try:
            # One step (pages=-1): every page from the same read transaction, so the copy is the
            # database at one moment; writers go on meanwhile.
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")
            summary = _check(dst, partial)
        finally:
            dst.close()
            src.close()
        _fsync(partial)
        try:
            os.link(partial, target)  # never replaces a file that appeared meanwhile
        except FileExistsError:
            raise BackupError(f"{target} already exists: choose a new name, or remove it first") from None
        _fsync(target.parent)
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"cannot back up {source}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return dataclasses.replace(summary, path=target, seconds=time.monotonic() - started)


def restore_sqlite(backup: Path, target: Path, *, force: bool = False) -> BackupSummary:
    """Check ``backup``, then copy it into the database file ``target``; returns the restored summary.

    An existing ``target`` with data is replaced only with ``force``, and
    only while no server uses it (stop the service first): the copy goes
    through SQLite's backup API into the file, in one transaction, so a
    crash half-way leaves the old database, and its -wal file is reset
    rather than replayed over the restored one.
    """
    checked = check_backup(backup)
    if target.exists() and target.stat().st_size > 0:
        if not force:
            raise BackupError(
                f"{target} already exists and holds data: stop the service and pass --force to replace it"
            )
    else:
        # A -wal file without its database would be replayed over the restored one on opening.
        for leftover in (target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
            if leftover.exists():
                if not force:
                    raise BackupError(f"{leftover} is left from an old database: pass --force to remove it")
                leftover.unlink()
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not target.exists():
            _private_new_file(target)
    started = time.monotonic()
    try:
        src = _connect(backup, read_only=True)
        dst = _connect(target)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = WAL")  # as the service runs it
            restored = _check(dst, target)
        finally:
            dst.close()
            src.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"cannot restore into {target}: {exc}") from None
    if restored.counts != checked.counts or restored.schema_version != checked.schema_version:
        raise BackupError(f"{target} does not match the backup after the restore: {restored} != {checked}")
    return dataclasses.replace(restored, seconds=time.monotonic() - started)


def sealed_email_sample(path: Path, limit: int = 20) -> list[tuple[str, str]]:
    """Up to ``limit`` (user_id, sealed email) pairs of a database, to check a data key against."""
    conn = _connect(path, read_only=True)
    try:
        return conn.execute(
            'SELECT user_id, email_sealed FROM "user" WHERE email_sealed IS NOT NULL ORDER BY id LIMIT ?',
            (limit,),
        ).fetchall()
    finally:
        conn.close()
