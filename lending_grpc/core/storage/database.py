"""The database: SQLite or PostgreSQL from a URL, with what the service adds to Peewee's classes.

`open_database(url)` returns a `LendingSqliteDatabase` or a
`LendingPostgresqlDatabase` and binds the models to it. Both carry the
`LendingDatabase` mixin (the way Peewee's playhouse attaches behaviour to
its Database classes), which is the only way the rest of the service
touches the database:

- ``write_transaction(work)``: one serialized write transaction, retried
  on a lost race;
- ``unit_of_work(deadline)``: the scope of one request or command: database
  failures become the core's retryable errors (in this one place), waits for
  locks and connections end at the caller's deadline, and a pooled
  connection goes back to the pool afterwards;
- ``add_failure_listener(listener)``: told the kind of every infrastructure
  failure (a full disk, an unreachable server), for metrics and health;
- ``lock_rows(query)``: SELECT ... FOR UPDATE where the backend has row locks;
- ``run``/``first``/``all``: prepared statements (``prepared.py``) whose SQL
  is built once per database.

A process serves one database at a time: the models are bound to it, so
`open_database` refuses a second until `close_database` released the first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from peewee import (
    Database,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SqliteDatabase,
    __exception_wrapper__,
)
from peewee import (
    DatabaseError as PeeweeDatabaseError,
)
from playhouse.pool import MaxConnectionsExceeded, PooledDatabase, PooledPostgresqlDatabase

from lending_grpc.core.errors import (
    Aborted,
    DatabaseUnreachable,
    DeadlineExceeded,
    LendingError,
    StorageFull,
    Unavailable,
)
from lending_grpc.core.storage.models import ALL_MODELS
from lending_grpc.core.storage.prepared import Built, Select, Statement

log = logging.getLogger(__name__)
_statements_log = logging.getLogger("peewee")  # where Peewee logs each statement it runs

SQLITE_PREFIX = "sqlite:///"
SQLITE_MMAP_BYTES = 1 << 30  # address space only: the OS decides what stays in memory
SQLITE_CACHE_KIB = 16 * 1024  # per connection
POSTGRESQL_SCHEMES = ("postgresql", "postgres")
T = TypeVar("T")

# PostgreSQL SQLSTATEs: a lost serialization race or deadlock is safe to retry;
# a lock wait beyond lock_timeout means "busy"; class 08 is a broken connection.
_RETRYABLE_STATES = {"40001", "40P01"}
_BUSY_STATES = {"55P03", "57014"}
_INSUFFICIENT_RESOURCES = "53"  # class 53: disk full, out of memory, too many connections
_STORAGE_KINDS = {"53100": "disk_full", "53200": "out_of_memory", "53300": "out_of_connections"}
_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full" (also PRAGMA max_page_count reached)
# A refused connection carries no SQLSTATE (libpq reports it as text): PostgreSQL's
# FATAL messages for 53300 (too_many_connections), as its English locale words them.
_NO_CONNECTION_SLOT = ("too many connections", "too many clients", "connection slots are reserved")
# A failure of one kind is logged at most once per this many seconds: a full
# disk fails every write, and a line (let alone a traceback) per call would
# bury the one line that matters.
FAILURE_REPORT_INTERVAL_S = 10.0
# A wait that fails this close to the caller's deadline failed because of it.
_DEADLINE_SLACK_S = 0.05
# A pooled PostgreSQL connection given back this recently is handed out again without the
# `SELECT 1` that checks an older one (HikariCP's aliveBypassWindowMs, 500 ms by default too).
ALIVE_BYPASS_S = 0.5


class DatabaseError(RuntimeError):
    """The database cannot be used: bad URL, unreachable, or a schema from a newer release."""


# -- URLs ----------------------------------------------------------------------


def sqlite_path(url: str) -> Path | None:
    """The file path of a ``sqlite:///path`` URL (relative unless it has four slashes), else None."""
    if url.startswith(SQLITE_PREFIX):
        return Path(url[len(SQLITE_PREFIX) :])
    return None


def is_postgresql_url(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database (postgresql://user@host:port/dbname)."""
    return urlsplit(url).scheme in POSTGRESQL_SCHEMES


def database_file(url: str) -> Path:
    """The SQLite file a URL names, or DatabaseError when it names none."""
    path = sqlite_path(url)
    if path is None or not path.name or path.name == ":memory:":
        # ":memory:" would give every thread its own empty database.
        raise DatabaseError(
            "the database URL must be sqlite:///path/to/file.db (a file, not :memory:) "
            "or postgresql://user@host:port/dbname"
        )
    return path


def check_database_url(url: str) -> None:
    """Raise DatabaseError unless ``url`` is a usable SQLite file or PostgreSQL URL."""
    if not is_postgresql_url(url):
        database_file(url)
        return
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise DatabaseError(f"malformed PostgreSQL URL: {exc}") from None
    if not parts.path.strip("/"):
        raise DatabaseError("the PostgreSQL URL must name a database: postgresql://user@host:port/dbname")


_SECRET_PARAMETERS = {"password", "sslpassword"}


def redact_url(url: str) -> str:
    """``url`` without its passwords (user info and query parameters), for logs and messages."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
        query = urlencode(
            [
                (name, "***" if name.lower() in _SECRET_PARAMETERS else value)
                for name, value in parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="*",
        )
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "(an unparsable URL)"


# -- recognising failures ------------------------------------------------------


def is_database_failure(exc: BaseException) -> bool:
    """Whether ``exc`` came from the database: a Peewee or pool error, or an unwrapped psycopg one.

    Peewee does not wrap psycopg's TransactionRollback family (serialization
    failures, deadlocks): those are recognised by their SQLSTATE.
    """
    return isinstance(exc, (PeeweeDatabaseError, MaxConnectionsExceeded)) or _sqlstate(exc) is not None


def _sqlstate(exc: BaseException) -> str | None:
    # Peewee keeps the driver's exception (psycopg's carry the SQLSTATE) as ``orig``.
    for candidate in (exc, getattr(exc, "orig", None), exc.__cause__, exc.__context__):
        state = getattr(candidate, "sqlstate", None)
        if state:
            return state
    return None


def _sqlite_code(exc: BaseException) -> int | None:
    # Python 3.11+ gives sqlite3 errors their (extended) result code; the low byte is the primary one.
    for candidate in (exc, getattr(exc, "orig", None)):
        code = getattr(candidate, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF
    return None


def _storage_kind(exc: BaseException) -> str | None:
    """``disk_full``, ``out_of_memory``, ... when the database refused for want of room, else None."""
    state = _sqlstate(exc)
    if state is not None:
        if state.startswith(_INSUFFICIENT_RESOURCES):
            return _STORAGE_KINDS.get(state, "resources")
        return None
    text = str(exc).lower()
    if _sqlite_code(exc) == _SQLITE_FULL or "database or disk is full" in text:
        return "disk_full"
    if any(words in text for words in _NO_CONNECTION_SLOT):
        return "out_of_connections"
    return None


def _is_unique_violation(exc: BaseException) -> bool:
    if _sqlstate(exc) == "23505":
        return True
    text = str(exc).lower()
    return "unique" in text or "duplicate key" in text


def _is_busy(exc: BaseException) -> bool:
    if _sqlstate(exc) in _BUSY_STATES:
        return True
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text


def _is_connection_failure(exc: BaseException) -> bool:
    state = _sqlstate(exc) or ""
    return (
        isinstance(exc, InterfaceError)
        or state.startswith("08")
        or state in {"57P01", "57P02", "57P03"}  # the server is shutting down or starting
        or (isinstance(exc, OperationalError) and not state and "connect" in str(exc).lower())
    )


def translate(exc: BaseException) -> LendingError | None:
    """The core error a database failure stands for, or None when ``exc`` is not one we expect.

    The one translation of database failures: a full disk (or PostgreSQL
    out of memory or connection slots, SQLSTATE class 53) is StorageFull, a
    busy lock or an exhausted pool is Unavailable, a lost conflict Aborted,
    an unreachable server DatabaseUnreachable. Anything else (a constraint
    the code should never break, a syntax error) is a bug, not weather, and
    stays as it is.
    """
    if not is_database_failure(exc):
        return None
    kind = _storage_kind(exc)
    if kind is not None:
        return StorageFull(kind)
    if _is_busy(exc) or isinstance(exc, MaxConnectionsExceeded):
        # MaxConnectionsExceeded: every pooled connection stayed busy for the busy timeout.
        return Unavailable("the database is busy; retry the request")
    if _sqlstate(exc) in _RETRYABLE_STATES:
        return Aborted("the transaction conflicted with a concurrent one; retry the request")
    if _is_connection_failure(exc):
        return DatabaseUnreachable(
            "the database connection failed; a write may or may not have been applied: "
            "retry with the same request_id (payments) or loan_id (loans), which never applies twice"
        )
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- the mixin -------------------------------------------------------------------


UNREACHABLE = "unreachable"  # the failure kind of DatabaseUnreachable; StorageFull has its own kinds


class _FailureReports:
    """The listeners told of infrastructure failures, and the rate-limited WARNING line about them."""

    def __init__(self) -> None:
        self.listeners: list[Callable[[str], None]] = []
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}  # kind -> (time of its last line, not logged since)

    def report(self, kind: str, exc: BaseException) -> None:
        """Tell the listeners; log one line for ``kind`` unless one was logged in the last interval."""
        for listener in self.listeners:
            listener(kind)
        now = time.monotonic()
        with self._lock:
            last, unlogged = self._last.get(kind, (-FAILURE_REPORT_INTERVAL_S, 0))
            if now - last < FAILURE_REPORT_INTERVAL_S:
                self._last[kind] = (last, unlogged + 1)
                return
            self._last[kind] = (now, 0)
        since = f" ({unlogged} more since the last report)" if unlogged else ""
        if kind == UNREACHABLE:
            log.warning("database unreachable: %s%s", _first_line(exc), since)
        else:
            log.warning(
                "database refused work for want of room (%s): %s; writes fail with UNAVAILABLE "
                "until it has room again%s",
                kind,
                _first_line(exc),
                since,
            )


class _UnitOfWork:
    """``with db.unit_of_work(deadline):`` translate database failures, then give the connection back."""

    __slots__ = ("_db", "_deadline", "_outer")

    def __init__(self, db: LendingDatabase, deadline: float | None) -> None:
        self._db = db
        self._deadline = deadline
        self._outer: float | None = None

    def __enter__(self) -> None:
        call = self._db._call
        self._outer = getattr(call, "deadline", None)
        call.deadline = self._deadline

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if exc is not None:
                translated = translate(exc)
                if translated is not None:
                    if isinstance(translated, StorageFull):
                        self._db._failures.report(translated.kind, exc)
                    elif isinstance(translated, DatabaseUnreachable):
                        self._db._failures.report(UNREACHABLE, exc)
                        self._db.drop_idle_connections()
                    elif type(translated) is Unavailable and self._deadline_ran_out():
                        # The wait for a lock or a connection was cut short by the caller's deadline.
                        translated = DeadlineExceeded(_DEADLINE_MESSAGE)
                    raise translated from exc
        finally:
            self._db._call.deadline = self._outer
            self._db.release_connection()

    def _deadline_ran_out(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline - _DEADLINE_SLACK_S


_DEADLINE_MESSAGE = "the call's deadline passed while it waited for the database; nothing was written"


class LendingDatabase:
    """What lending-grpc adds to a Peewee database: see the module docstring."""

    kind = ""  # "sqlite" or "postgresql", for logs

    def _init_lending(self) -> None:
        self._built: dict[Statement, Built] = {}
        self._build_lock = threading.Lock()
        self._failures = _FailureReports()
        self._call = threading.local()  # .deadline: this thread's current call's, time.monotonic()

    # -- requests and transactions

    def unit_of_work(self, deadline: float | None = None) -> _UnitOfWork:
        """The scope of one request: database failures become core errors, pooled connections return.

        ``deadline`` (a ``time.monotonic()`` instant, None for none) bounds
        every wait of the work inside: for the SQLite write lock, for a
        PostgreSQL row lock or statement, for a pooled connection. A wait cut
        short by it is DeadlineExceeded, so a caller that gave up leaves no
        work queued behind a lock.
        """
        return _UnitOfWork(self, deadline)

    def add_failure_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(kind)`` on every infrastructure failure a unit of work meets.

        ``kind`` is ``unreachable`` or a StorageFull kind (``disk_full``,
        ``out_of_memory``, ``out_of_connections``, ``resources``). Listeners
        run on the failing call's thread: they must be quick.
        """
        self._failures.listeners.append(listener)

    def _deadline_wait(self) -> float | None:
        """Seconds left before this call's deadline when that is sooner than the busy timeout, else None.

        None also when the call has no deadline: the configured waits apply.
        """
        deadline = getattr(self._call, "deadline", None)
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        return max(left, 0.0) if left < self._busy_timeout_s() else None

    def _busy_timeout_s(self) -> float:
        """How long a wait for a lock or a connection may last when no deadline is sooner."""
        return float("inf")

    def _check_deadline(self) -> None:
        deadline = getattr(self._call, "deadline", None)
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded(_DEADLINE_MESSAGE)

    def check_reachable(self, timeout_s: float) -> bool:
        """Whether the database answers ``SELECT 1``; False only when it cannot be reached.

        A full disk or a busy pool still answers: only DatabaseUnreachable
        counts. A failure on a pooled connection is tried once more on a new
        one, since the server may be back and only the old connection dead.
        Not a unit of work: a probe is not a call, and reports no failures.
        """
        for _ in range(2):
            self._call.deadline = time.monotonic() + timeout_s  # bounds the wait for a pooled connection
            try:
                self.execute_sql("SELECT 1")
                return True
            except Exception as exc:
                translated = translate(exc)
                if translated is None:
                    raise
                if not isinstance(translated, DatabaseUnreachable):
                    return True
                self.drop_idle_connections()
            finally:
                self._call.deadline = None
                self.release_connection()
        return False

    def release_connection(self) -> None:
        """Give this thread's pooled connection back (SQLite keeps one per thread)."""

    def drop_idle_connections(self) -> None:
        """Forget pooled connections that a lost server made useless (SQLite has none)."""

    def lock_rows(self, query):
        """``query`` as SELECT ... FOR UPDATE where the backend has row locks."""
        return query

    @contextlib.contextmanager
    def _writer_turn(self) -> Iterator[None]:
        yield

    def write_lock(self):
        """A transaction that takes the write lock up front (BEGIN IMMEDIATE on SQLite); no retries."""
        return self.atomic()

    def write_transaction(self, work: Callable[[], T], *, attempts: int = 4) -> T:
        """Run ``work`` in one write transaction, serialized against other writers.

        On SQLite the transaction starts with BEGIN IMMEDIATE, so a
        read-then-write waits for the write lock (up to the busy timeout)
        instead of failing later. On PostgreSQL ``work`` locks the rows it
        changes (``lock_rows``). Where two writers race to insert the same
        unique key, or PostgreSQL reports a serialization failure or deadlock,
        the loser is rolled back and retried, so ``work`` sees the winner's
        row; a conflict that outlasts every attempt is raised as it came (the
        unit of work makes it Aborted).
        """
        for attempt in range(1, attempts + 1):
            self._check_deadline()  # a retry, or a call that waited for a thread, may be too late
            try:
                with self._writer_turn(), self.write_lock():
                    return work()
            except IntegrityError as exc:
                if attempt == attempts or not _is_unique_violation(exc):
                    raise
                log.info("unique-key race, retrying (attempt %d of %d)", attempt, attempts)
            except Exception as exc:
                if attempt == attempts or not isinstance(translate(exc), Aborted):
                    raise
                log.info("transaction conflict, retrying (attempt %d of %d)", attempt, attempts)
                time.sleep(random.uniform(0, 0.005 * 2**attempt))  # de-synchronize the racers
        raise AssertionError("unreachable")

    # -- prepared statements

    def _built_for(self, statement: Statement) -> Built:
        built = self._built.get(statement)
        if built is None:
            with self._build_lock:
                built = self._built.get(statement)
                if built is None:
                    context = self.get_sql_context()
                    built = self._built[statement] = statement.build(
                        lambda query: context.sql(query).query(), self.lock_rows
                    )
        return built

    def append(self, statement: Statement, **values: Any) -> None:
        """Run an INSERT whose result nothing reads before the commit (an audit row, an outbox event).

        Where the database is across a network (PostgreSQL) and a transaction
        is open, it goes with the transaction's other appends and its COMMIT
        in one round trip; otherwise it runs at once. Either way it commits or
        rolls back with the transaction.
        """
        self.run(statement, **values)

    def run(self, statement: Statement, **values: Any):
        """Execute a prepared statement with ``values`` for its parameters; returns the cursor."""
        built = self._built_for(statement)
        return self.execute_sql(built.sql, built.parameters(values))

    def first(self, statement: Select, **values: Any):
        """The first row of a prepared SELECT, or None."""
        row = self.run(statement, **values).fetchone()
        return None if row is None else statement.row(row)

    def all(self, statement: Select, **values: Any) -> list:
        """Every row of a prepared SELECT."""
        return [statement.row(row) for row in self.run(statement, **values).fetchall()]


class LendingSqliteDatabase(LendingDatabase, SqliteDatabase):
    """One SQLite file: WAL, synchronous=FULL, one writer at a time."""

    kind = "sqlite"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_lending()
        # SQLite's busy handler makes a blocked writer sleep and poll, with
        # sleeps growing to 100 ms: under 16 concurrent payments that put p99
        # above 200 ms with the disk mostly idle. Writers of one process queue
        # here instead, so the lock passes straight to the next one; other
        # processes (--workers) still meet at SQLite's lock.
        self._writers = threading.Lock()

        self._busy_ms = threading.local()  # .value: the busy timeout set on this thread's connection

    def _busy_timeout_s(self) -> float:
        return self.timeout

    def write_lock(self):
        return self.atomic("IMMEDIATE")

    @contextlib.contextmanager
    def _writer_turn(self) -> Iterator[None]:
        # Waiting longer than the busy timeout (or the call's deadline, when
        # sooner) fails as SQLite itself would: busy, retry later; the unit of
        # work tells the two apart.
        wait = self._deadline_wait()
        if not self._writers.acquire(timeout=self.timeout if wait is None else wait):
            raise OperationalError("database is locked (writers of this process queued past the timeout)")
        try:
            # Other processes' writers (--workers) are waited for by SQLite's busy handler.
            self._set_busy_timeout(self._deadline_wait())
            yield
        finally:
            self._writers.release()

    def _set_busy_timeout(self, wait: float | None) -> None:
        milliseconds = round(self.timeout * 1000) if wait is None else max(1, int(wait * 1000))
        if getattr(self._busy_ms, "value", None) != milliseconds:
            # On the driver's connection: a pragma through Peewee costs ten times as much.
            self.connection().execute(f"PRAGMA busy_timeout = {milliseconds:d}")
            self._busy_ms.value = milliseconds

    def _close(self, conn) -> None:
        super()._close(conn)
        self._busy_ms.value = None  # the next connection starts with the configured timeout

    def rollback(self) -> None:
        """Roll back the open transaction; nothing to do when SQLite already rolled it back itself.

        On some errors (SQLITE_FULL above all: a full disk) SQLite ends the
        transaction on its own. Peewee's atomic() then sent ROLLBACK anyway,
        and SQLite's "cannot rollback - no transaction is active" replaced
        the real error: a full disk was answered INTERNAL with two tracebacks.
        """
        if not self.is_closed() and not self.connection().in_transaction:
            return
        super().rollback()


class LendingPostgresqlDatabase(LendingDatabase, PooledPostgresqlDatabase):
    """A bounded pool of connections to one PostgreSQL database; row locks serialize writers."""

    kind = "postgresql"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_lending()
        self._appends = threading.local()  # .pending: this thread's transaction's appends
        self._returned_at: dict[int, float] = {}  # conn_key -> time.monotonic() of its last check-in

    def lock_rows(self, query):
        return query.for_update()

    # -- checking a pooled connection out costs no round trip when it was just used

    def _is_closed(self, conn) -> bool:
        """Whether a pooled connection is unusable; Peewee asks the server (`SELECT 1`) each time.

        That round trip was a third of a read's: skipped for a connection
        given back in the last ``ALIVE_BYPASS_S`` with no transaction open.
        Should the server have dropped it meanwhile (a restart, a DBA ending
        sessions), the call's first statement fails instead: UNAVAILABLE,
        nothing written, the idle connections dropped, and a retry gets a
        new connection. Older connections are still checked, so a pool left
        idle across an outage never hands out a dead one.
        """
        if conn.closed:
            return True
        returned = self._returned_at.get(self.conn_key(conn))
        if (
            returned is not None
            and time.monotonic() - returned < ALIVE_BYPASS_S
            and self._adapter.txn_status(conn) == self._adapter.txn_idle
        ):
            return False
        return super()._is_closed(conn)

    def _close(self, conn, close_conn: bool = False) -> None:
        self._returned_at[self.conn_key(conn)] = time.monotonic()
        super()._close(conn, close_conn)

    def _close_raw(self, conn) -> None:
        self._returned_at.pop(self.conn_key(conn), None)
        super()._close_raw(conn)

    def _busy_timeout_s(self) -> float:
        # The pool's wait for a free connection; lock_timeout is the same setting.
        return self._wait_timeout

    # -- appends travel with the COMMIT (psycopg's pipeline mode)

    def append(self, statement: Statement, **values: Any) -> None:
        if not self.in_transaction():
            super().append(statement, **values)
            return
        built = self._built_for(statement)
        self._pending_appends().append((built.sql, built.parameters(values)))

    def _pending_appends(self) -> list[tuple[str, Any]]:
        pending = getattr(self._appends, "pending", None)
        if pending is None:
            pending = self._appends.pending = []
        return pending

    def _take_appends(self) -> list[tuple[str, Any]]:
        pending = getattr(self._appends, "pending", None) or []
        self._appends.pending = []
        return pending

    def commit(self) -> None:
        """COMMIT; with the transaction's appends sent ahead of it in the same round trip.

        A failing append fails the commit: the transaction rolls back whole,
        as if the INSERT had run where it was asked for.
        """
        pending = self._take_appends()
        if not pending:
            super().commit()
            return
        conn = self.connection()
        with __exception_wrapper__, conn.pipeline():
            cursor = conn.cursor()
            for sql, parameters in pending:
                _statements_log.debug((sql, parameters))
                cursor.execute(sql, parameters)
            conn.commit()

    def rollback(self) -> None:
        self._take_appends()  # they never reached the server
        super().rollback()

    def begin(self, isolation_level=None) -> None:
        """BEGIN; with the call's deadline as the transaction's lock and statement timeout when sooner.

        Sent with the BEGIN in one round trip (psycopg sends a statement
        without parameters as a simple query, which may hold several), so a
        deadline costs no extra trip to the server.
        """
        wait = self._deadline_wait()
        if wait is None or isolation_level is not None:
            super().begin(isolation_level)
            return
        milliseconds = max(1, int(wait * 1000))
        with __exception_wrapper__:
            self.cursor().execute(
                f"BEGIN; SET LOCAL lock_timeout = {milliseconds:d}; "
                f"SET LOCAL statement_timeout = {milliseconds:d}"
            )

    def connect(self, reuse_if_open: bool = False) -> bool:
        """A pooled connection, waiting for a free one no longer than the call's deadline."""
        wait = self._deadline_wait()
        if wait is None:
            return super().connect(reuse_if_open)
        # PooledDatabase.connect's loop, with the deadline for its wait timeout.
        deadline = time.monotonic() + wait
        while True:
            try:
                return super(PooledDatabase, self).connect(reuse_if_open)
            except MaxConnectionsExceeded:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MaxConnectionsExceeded("no pooled connection came free by the deadline") from None
                with self._pool_available:
                    self._pool_available.wait(timeout=min(left, 1.0))

    def release_connection(self) -> None:
        self._take_appends()  # none outlive their transaction, whatever ended it
        if not self.is_closed():
            self.close()

    def drop_idle_connections(self) -> None:
        # The server restarted or dropped us: its other idle connections are
        # as dead as this one, so do not hand them to the next calls.
        self.close_idle()


# -- opening and closing -----------------------------------------------------------

_bound: LendingDatabase | None = None  # the database the models are bound to
_bound_lock = threading.Lock()


def _create_private_file(path: Path) -> None:
    # The file holds password hashes and emails: readable by its owner only.
    # SQLite gives the -wal and -shm files the same mode.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except FileExistsError:
        pass


def _file_problem(path: Path) -> str | None:
    """Why the service cannot use the SQLite file (SQLite only says "unable to open"), if the OS says."""
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        return f"{exc.strerror}: this user must be able to read and write the file"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return "its directory is not writable: SQLite creates the -wal and -shm files beside the file"
    return None


def open_database(url: str, *, busy_timeout_ms: int = 10_000, pool_size: int = 8) -> LendingDatabase:
    """Open the database named by ``url`` and bind the models to it.

    SQLite runs in WAL mode with ``synchronous=FULL`` (an acknowledged commit
    survives power loss), enforced foreign keys and a busy timeout, so that
    writers queue for the lock instead of failing. PostgreSQL gets a bounded
    pool of ``pool_size`` connections per process; a row lock waited on longer
    than ``busy_timeout_ms`` fails the transaction as busy.
    """
    global _bound
    check_database_url(url)
    with _bound_lock:
        if _bound is not None:
            raise DatabaseError("this process already serves a database; close it first")
        if is_postgresql_url(url):
            db: LendingDatabase = _postgresql(url, busy_timeout_ms, pool_size)
            where = redact_url(url)
        else:
            path = database_file(url)
            try:
                _create_private_file(path)
            except OSError as exc:
                raise DatabaseError(f"cannot create the database file {path}: {exc.strerror}") from None
            db = _sqlite(path, busy_timeout_ms)
            where = str(path)
        try:
            db.connect()
        except (PeeweeDatabaseError, MaxConnectionsExceeded) as exc:
            reason = _first_line(exc)
            if not is_postgresql_url(url):
                reason = _file_problem(path) or reason
            raise DatabaseError(f"cannot open the database {where}: {reason}") from None
        db.bind(ALL_MODELS, bind_refs=False, bind_backrefs=False)
        _bound = db
    return db


def _sqlite(path: Path, busy_timeout_ms: int) -> LendingSqliteDatabase:
    return LendingSqliteDatabase(
        str(path),
        timeout=busy_timeout_ms / 1000,
        pragmas={
            "journal_mode": "wal",
            "synchronous": "full",
            # A big portfolio's indexes do not fit SQLite's 2 MiB default page
            # cache: map the file instead (pages shared through the OS cache by
            # every connection and process, no copy per read), and keep a larger
            # private cache for the pages a connection writes.
            "mmap_size": SQLITE_MMAP_BYTES,
            "cache_size": -SQLITE_CACHE_KIB,
            "foreign_keys": 1,
            "busy_timeout": busy_timeout_ms,
        },
    )


def _postgresql(url: str, busy_timeout_ms: int, pool_size: int) -> LendingPostgresqlDatabase:
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        raise DatabaseError(
            "PostgreSQL needs the psycopg driver: pip install 'lending-grpc[postgres]'"
        ) from None
    try:
        params = conninfo_to_dict(url)
    except Exception:  # psycopg's message may quote the password: never pass it on
        raise DatabaseError(f"malformed PostgreSQL URL {redact_url(url)}") from None
    dbname = params.pop("dbname")
    params.setdefault("connect_timeout", 5)
    params.setdefault("application_name", "lending-grpc")
    # Server-side timeouts: a blocked row lock or runaway statement fails the
    # transaction (retryable) instead of holding a worker forever. Appended to
    # any options the URL brings (some hosted PostgreSQL services need theirs).
    timeouts = f"-c lock_timeout={busy_timeout_ms} -c statement_timeout={max(busy_timeout_ms * 3, 30_000)}"
    params["options"] = f"{params.get('options', '')} {timeouts}".strip()
    return LendingPostgresqlDatabase(
        dbname,
        max_connections=pool_size,
        stale_timeout=300,
        timeout=busy_timeout_ms / 1000,  # wait this long for a free pooled connection
        prefer_psycopg3=True,
        **params,
    )


def close_database(db: Database) -> None:
    """Close ``db``'s connections and unbind the models.

    With SQLite only this thread's connection closes here; other threads'
    close when those threads end, so stop them first (the server shuts its
    executor down). A PostgreSQL pool closes every connection it holds.
    """
    global _bound
    try:
        if isinstance(db, PooledPostgresqlDatabase):
            db.close_all()
        else:
            db.close()
    finally:
        with _bound_lock:
            if _bound is db:
                _bound = None
