"""Opening the database from a URL, with safe SQLite settings, and versioned migrations."""

from __future__ import annotations

import logging
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
)

from lending_grpc.core.errors import Unavailable
from lending_grpc.core.models import ALL_MODELS, database

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"
T = TypeVar("T")


class DatabaseConfigError(ValueError):
    """The database URL cannot be used."""


def sqlite_path(url: str) -> Path | None:
    """The file path of a ``sqlite:///path`` URL (relative unless it has four slashes), else None."""
    if url.startswith(SQLITE_PREFIX):
        return Path(url[len(SQLITE_PREFIX) :])
    return None


def open_database(url: str, *, busy_timeout_ms: int = 10_000) -> Database:
    """Open the database named by ``url`` and bind the models to it.

    SQLite runs in WAL mode with ``synchronous=FULL`` (an acknowledged commit
    survives power loss), enforced foreign keys and a busy timeout, so that
    writers queue for the lock instead of failing.
    """
    path = sqlite_path(url)
    if path is None:
        raise DatabaseConfigError(
            f"unsupported database URL {url.split(':', 1)[0]!r}: use sqlite:///path/to/file.db"
        )
    if str(path) != ":memory:":
        path.parent.mkdir(parents=True, exist_ok=True)
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
    database.initialize(db)
    return db


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


def migrate(db: Database) -> list[int]:
    """Apply pending migrations, each in its own write transaction; returns the versions applied."""
    db.create_tables([SchemaVersion], safe=True)
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


def schema_is_current(db: Database) -> bool:
    """Whether every migration has been applied."""
    if not db.table_exists(SchemaVersion._meta.table_name):
        return False
    latest = MIGRATIONS[-1][0]
    return SchemaVersion.get_or_none(SchemaVersion.version == latest) is not None


def run_in_write_transaction(db: Database, work: Callable[[], T], *, attempts: int = 3) -> T:
    """Run ``work`` in one write transaction, serialized against other writers.

    On SQLite the transaction starts with BEGIN IMMEDIATE, so a read-then-write
    waits for the write lock (up to the busy timeout) instead of failing later.
    A unique-constraint race (another writer inserted the same key first) is
    retried so that ``work`` sees the winner's row. A lock still held after the
    busy timeout becomes Unavailable, which clients may retry.
    """
    for attempt in range(1, attempts + 1):
        try:
            with write_lock(db):
                return work()
        except IntegrityError:
            if attempt == attempts:
                raise
            log.info("write conflict, retrying (attempt %d of %d)", attempt, attempts)
        except OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            raise Unavailable("the database is busy; retry the request") from exc
    raise AssertionError("unreachable")
