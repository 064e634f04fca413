"""Opening the database from a URL, with safe SQLite settings, and versioned migrations.

The models are bound to one process-wide database (a Peewee DatabaseProxy),
so a process serves exactly one database: `open_database` refuses a second
one until `close_database` released the first.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from peewee import (
    BigIntegerField,
    Database,
    IntegerField,
    IntegrityError,
    Model,
    OperationalError,
    SqliteDatabase,
    fn,
)
from peewee import (
    DatabaseError as PeeweeDatabaseError,
)

from lending_grpc.core.errors import Unavailable
from lending_grpc.core.models import ALL_MODELS, database

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"
T = TypeVar("T")


class DatabaseError(RuntimeError):
    """The database cannot be used: bad URL, unreadable file, or a schema from a newer release."""


def sqlite_path(url: str) -> Path | None:
    """The file path of a ``sqlite:///path`` URL (relative unless it has four slashes), else None."""
    if url.startswith(SQLITE_PREFIX):
        return Path(url[len(SQLITE_PREFIX) :])
    return None


def database_file(url: str) -> Path:
    """The SQLite file a URL names, or DatabaseError for anything this release cannot serve."""
    path = sqlite_path(url)
    if path is None or not path.name or path.name == ":memory:":
        # ":memory:" would give every thread its own empty database.
        raise DatabaseError("the database URL must be sqlite:///path/to/file.db (a file, not :memory:)")
    return path


def _create_private_file(path: Path) -> None:
    # The file holds password hashes and emails: readable by its owner only.
    # SQLite gives the -wal and -shm files the same mode.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except FileExistsError:
        pass


def open_database(url: str, *, busy_timeout_ms: int = 10_000) -> Database:
    """Open the database named by ``url`` and bind the models to it.

    SQLite runs in WAL mode with ``synchronous=FULL`` (an acknowledged commit
    survives power loss), enforced foreign keys and a busy timeout, so that
    writers queue for the lock instead of failing.
    """
    path = database_file(url)
    if database.obj is not None:
        raise DatabaseError("this process already serves a database; close it first")
    try:
        _create_private_file(path)
    except OSError as exc:
        raise DatabaseError(f"cannot create the database file {path}: {exc.strerror}") from None
    db = SqliteDatabase(
        str(path),
        timeout=busy_timeout_ms / 1000,
        pragmas={
            "journal_mode": "wal",
            "synchronous": "full",
            "foreign_keys": 1,
            "busy_timeout": busy_timeout_ms,
        },
    )
    try:
        db.connect()
    except PeeweeDatabaseError as exc:
        raise DatabaseError(f"cannot open the database {path}: {exc}") from None
    database.initialize(db)
    return db


def close_database(db: Database) -> None:
    """Close this thread's connection to ``db`` and unbind the models.

    Other threads' connections close when those threads end: stop the
    threads that used ``db`` first (the server shuts its executor down).
    """
    try:
        db.close()
    finally:
        if database.obj is db:
            database.initialize(None)


def write_lock(db: Database):
    """A transaction that takes the write lock up front (BEGIN IMMEDIATE on SQLite)."""
    return db.atomic("IMMEDIATE") if isinstance(db, SqliteDatabase) else db.atomic()


class SchemaVersion(Model):
    """One row per applied migration."""

    version = IntegerField(primary_key=True)
    applied_time_us = BigIntegerField()

    class Meta:
        database = database
        table_name = "schema_version"


def _create_initial_tables(db: Database) -> None:
    db.create_tables(ALL_MODELS)


# Append only: a released migration never changes. Version 1 is the baseline
# built from the models; once a later version alters a table, the baseline
# must be frozen (explicit DDL) so fresh and upgraded databases stay identical.
MIGRATIONS: tuple[tuple[int, Callable[[Database], None]], ...] = ((1, _create_initial_tables),)
LATEST_VERSION = MIGRATIONS[-1][0]


def migrate(db: Database) -> list[int]:
    """Apply pending migrations, each in its own write transaction; returns the versions applied.

    Refuses a database whose schema is newer than this release knows, rather
    than serving it with rules that may no longer match. Any database failure
    (a locked or corrupt file) becomes DatabaseError.
    """
    try:
        return _apply_migrations(db)
    except PeeweeDatabaseError as exc:
        raise DatabaseError(f"cannot migrate the database: {exc}") from None


def _apply_migrations(db: Database) -> list[int]:
    db.create_tables([SchemaVersion], safe=True)
    newest = SchemaVersion.select(fn.MAX(SchemaVersion.version)).scalar() or 0
    if newest > LATEST_VERSION:
        raise DatabaseError(
            f"the database schema is version {newest}, newer than this release's {LATEST_VERSION}"
        )
    applied: list[int] = []
    for version, step in MIGRATIONS:
        with write_lock(db):
            if SchemaVersion.get_or_none(SchemaVersion.version == version) is not None:
                continue
            step(db)
            SchemaVersion.create(version=version, applied_time_us=time.time_ns() // 1000)
            applied.append(version)
            log.info("applied schema migration %d", version)
    return applied


def _is_unique_violation(exc: IntegrityError) -> bool:
    text = str(exc).lower()
    return "unique" in text or "duplicate key" in text


def _is_busy(exc: OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def run_in_write_transaction(db: Database, work: Callable[[], T], *, attempts: int = 3) -> T:
    """Run ``work`` in one write transaction, serialized against other writers.

    On SQLite the transaction starts with BEGIN IMMEDIATE, so a read-then-write
    waits for the write lock (up to the busy timeout) instead of failing later,
    and no other writer can interleave. Where a backend lets two writers race
    to insert the same unique key, the loser is retried so that ``work`` sees
    the winner's row. A lock still held after the busy timeout becomes
    Unavailable, which clients may retry.
    """
    for attempt in range(1, attempts + 1):
        try:
            with write_lock(db):
                return work()
        except IntegrityError as exc:
            if attempt == attempts or not _is_unique_violation(exc):
                raise
            log.info("unique-key race, retrying (attempt %d of %d)", attempt, attempts)
        except OperationalError as exc:
            if not _is_busy(exc):
                raise
            raise Unavailable("the database is busy; retry the request") from exc
    raise AssertionError("unreachable")
