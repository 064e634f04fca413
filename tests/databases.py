"""Fresh test databases on both backends: a SQLite file, or a PostgreSQL database made for one test.

Each PostgreSQL test database is a copy of a template migrated once per
session (CREATE DATABASE ... TEMPLATE) and is dropped when its test ends.
Creating and dropping a database costs the server a few hundred
milliseconds of disk work, so one background thread does both ahead of
time: the next databases are already made while a test runs.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import sys
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from lending_grpc.core.storage.database import close_database, open_database, redact_url
from lending_grpc.core.storage.migrations import migrate

# Not LENDING_*: child servers drop the developer's LENDING_ variables.
ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ("sqlite", "postgresql")
PREPARED_AHEAD = 2
_TEST_DATABASE = re.compile(r"lending_t(?:pl)?_(\d+)_[0-9a-f]+")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _with_dbname(url: str, dbname: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + dbname


class PostgresDatabases:
    """Creates and drops test databases on the PostgreSQL server at ADMIN_URL."""

    def __init__(self) -> None:
        import psycopg

        self._psycopg = psycopg
        self._admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
        self._sweep_leftovers()
        self._template = f"lending_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self._execute(f'CREATE DATABASE "{self._template}"')
        try:
            db = open_database(self.url(self._template))
            try:
                migrate(db)
            finally:
                close_database(db)
        except BaseException:
            self._execute(f'DROP DATABASE IF EXISTS "{self._template}" WITH (FORCE)')
            raise
        self._background = ThreadPoolExecutor(1, thread_name_prefix="test-databases")
        self._prepared: collections.deque[Future] = collections.deque()

    def _execute(self, sql: str) -> None:
        self._admin.execute(sql)

    def _sweep_leftovers(self) -> None:
        """Drop databases of earlier test runs whose process is gone (killed runs never drop theirs)."""
        names = [row[0] for row in self._admin.execute("SELECT datname FROM pg_database").fetchall()]
        for name in names:
            match = _TEST_DATABASE.fullmatch(name)
            if match and not _alive(int(match.group(1))):
                self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _drop_now(self, name: str) -> None:
        try:
            self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception as exc:  # reported, not raised: a background thread has no caller
            print(f"warning: could not drop test database {name}: {exc}", file=sys.stderr)

    def _create_now(self, template: str) -> str:
        name = f"lending_t_{os.getpid()}_{uuid.uuid4().hex[:12]}"
        self._execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def url(self, dbname: str) -> str:
        """The URL of database ``dbname`` on the test server."""
        return _with_dbname(ADMIN_URL, dbname)

    def create(self, *, migrated: bool = True) -> str:
        """A new, empty database (with the current schema unless ``migrated`` is False); its URL."""
        if not migrated:
            return self._background.submit(self._create_now, "template0").result()
        while len(self._prepared) <= PREPARED_AHEAD:
            self._prepared.append(self._background.submit(self._create_now, self._template))
        return self._prepared.popleft().result()

    def drop(self, url: str) -> None:
        """Drop a database made by ``create`` (in the background), disconnecting whoever still uses it."""
        self._background.submit(self._drop_now, url.rsplit("/", 1)[1])

    def close(self) -> None:
        try:
            for prepared in self._prepared:
                with contextlib.suppress(Exception):
                    self.drop(prepared.result())
            self._background.shutdown(wait=True)
            self._drop_now(self._template)
        finally:
            self._admin.close()


def connect_or_skip() -> PostgresDatabases:
    """PostgresDatabases, or a skip naming the reason; in CI (CI=true) a loud failure instead."""
    try:
        return PostgresDatabases()
    except Exception as exc:  # driver missing, server down, no permission
        message = f"PostgreSQL at {redact_url(ADMIN_URL)} is not usable ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI requires the PostgreSQL half of the suite", pytrace=False)
        pytest.skip(f"{message}; set TEST_POSTGRES_URL or start PostgreSQL to run these tests")


def sqlite_url(directory: Path, name: str = "lending.db") -> str:
    """The URL of a SQLite file in ``directory``."""
    return f"sqlite:///{directory / name}"
