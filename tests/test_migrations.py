"""Versioned migrations on both backends: idempotent, applied once under concurrency, true to the models."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from databases import BACKENDS, sqlite_url
from helpers import run_cli

from lending_grpc.core.storage.database import close_database, open_database, sqlite_path
from lending_grpc.core.storage.migrations import LATEST_VERSION, SchemaVersion, migrate
from lending_grpc.core.storage.models import ALL_MODELS


@pytest.fixture(params=BACKENDS)
def new_blank(request: pytest.FixtureRequest, tmp_path: Path):
    """Makes empty, never migrated databases of one backend."""
    made: list[str] = []
    databases = request.getfixturevalue("postgres") if request.param == "postgresql" else None

    def make() -> str:
        url = (
            sqlite_url(tmp_path, f"blank{len(made)}.db")
            if databases is None
            else databases.create(migrated=False)
        )
        made.append(url)
        return url

    yield make
    for url in made if databases else ():
        databases.drop(url)


@pytest.fixture
def blank_url(new_blank) -> str:
    """An empty database that has never been migrated."""
    return new_blank()


def _execute(url: str, sql: str) -> list[tuple]:
    path = sqlite_path(url)
    if path is not None:
        with sqlite3.connect(path) as conn:
            return conn.execute(sql).fetchall()
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def _schema(url: str) -> set[tuple]:
    """Every table, column, index and constraint, as comparable rows."""
    if sqlite_path(url) is not None:
        return set(_execute(url, "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))
    return {
        *_execute(
            url,
            "SELECT table_name, column_name, data_type, is_nullable, column_default, character_maximum_length"
            " FROM information_schema.columns WHERE table_schema = 'public'",
        ),
        *_execute(url, "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'public'"),
        *_execute(
            url,
            "SELECT conrelid::regclass::text, contype::text, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE connamespace = 'public'::regnamespace",
        ),
    }


def _migrate(url: str, cwd: Path, **settings: str):
    return run_cli("migrate", "--database-url", url, cwd=cwd, LENDING_SECRET_KEY="", **settings)


def test_migrate_command_is_idempotent(blank_url, tmp_path):
    first = _migrate(blank_url, tmp_path)
    assert (
        first.returncode == 0 and f"applied migrations: {list(range(1, LATEST_VERSION + 1))}" in first.stdout
    )
    second = _migrate(blank_url, tmp_path)
    assert second.returncode == 0 and "schema is up to date" in second.stdout


def _hold_migration_lock(url: str):
    """What a migrating process holds: SQLite's write lock, PostgreSQL's advisory lock."""
    path = sqlite_path(url)
    if path is not None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = wal")  # as lending-grpc opens every file
        conn.execute("BEGIN IMMEDIATE")
        return lambda: (conn.execute("ROLLBACK"), conn.close())
    import psycopg

    from lending_grpc.core.storage.migrations import _MIGRATION_LOCK_KEY

    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_KEY,))
    return conn.close


def test_processes_migrating_together_apply_each_version_once(blank_url, tmp_path):
    release = _hold_migration_lock(blank_url)
    with ThreadPoolExecutor(3) as pool:
        try:
            # Three processes start while a fourth migrates: they must wait, not fail or skip.
            migrating = [
                pool.submit(_migrate, blank_url, tmp_path, LENDING_DB_BUSY_TIMEOUT_MS="60000")
                for _ in range(3)
            ]
            time.sleep(3)
            assert not any(future.done() for future in migrating), [
                f.result().stderr for f in migrating if f.done()
            ]
        finally:
            release()
        results = [future.result() for future in migrating]
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    assert sum("applied migrations" in r.stdout for r in results) == 1
    assert sum("schema is up to date" in r.stdout for r in results) == 2
    versions = _execute(blank_url, "SELECT version FROM schema_version ORDER BY version")
    assert versions == [(v,) for v in range(1, LATEST_VERSION + 1)]


def test_migrated_schema_is_exactly_what_the_models_declare(new_blank, tmp_path):
    """A migrated database and one created from today's models are identical, on each backend."""
    migrated, declared = new_blank(), new_blank()
    assert _migrate(migrated, tmp_path).returncode == 0
    db = open_database(declared)
    try:
        with db.bind_ctx([SchemaVersion]):
            db.create_tables([*ALL_MODELS, SchemaVersion])
    finally:
        close_database(db)
    assert _schema(migrated) == _schema(declared)


def test_a_database_from_a_newer_release_is_refused(blank_url, tmp_path):
    assert _migrate(blank_url, tmp_path).returncode == 0
    _execute(blank_url, "INSERT INTO schema_version VALUES (99, 0)")
    result = _migrate(blank_url, tmp_path)
    assert result.returncode == 1
    assert f"schema is version 99, newer than this release's {LATEST_VERSION}" in result.stderr
    db = open_database(blank_url)
    try:
        with pytest.raises(Exception, match="newer than this release"):
            migrate(db)
    finally:
        close_database(db)


def test_an_unreachable_postgresql_is_a_one_line_error(tmp_path):
    result = run_cli(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        "postgresql://lender:hunter2-secret@127.0.0.1:1/lending",
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert "cannot open the database postgresql://lender:***@127.0.0.1:1/lending" in result.stderr
    assert "Traceback" not in result.stderr and "hunter2-secret" not in result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://lender:my secret pw@127.0.0.1:1/lending",  # unparsable: psycopg would quote it
        "postgresql://lender@127.0.0.1:1/lending?password=my-secret-pw",
        "postgresql://lender:my-secret-pw@127.0.0.1:1/lending?sslpassword=my-secret-pw",
    ],
)
def test_database_passwords_never_reach_the_output(tmp_path, url):
    result = run_cli("serve", "--listen", "127.0.0.1:0", "--database-url", url, cwd=tmp_path)
    assert result.returncode in (1, 2), result.stderr
    assert "my secret pw" not in result.stderr and "my-secret-pw" not in result.stderr, result.stderr
    assert "***" in result.stderr and "Traceback" not in result.stderr


def test_url_options_are_kept_beside_the_server_side_timeouts(postgres):
    url = postgres.create()
    try:
        db = open_database(
            url + "?options=-c%20search_path%3Dpublic&application_name=billing-eu", busy_timeout_ms=750
        )
        try:
            show = {
                name: db.execute_sql(f"SHOW {name}").fetchone()[0] for name in ("search_path", "lock_timeout")
            }
            assert show == {"search_path": "public", "lock_timeout": "750ms"}
            assert db.execute_sql("SHOW statement_timeout").fetchone()[0] == "30s"
            assert db.execute_sql("SHOW application_name").fetchone()[0] == "billing-eu"
        finally:
            close_database(db)
    finally:
        postgres.drop(url)


def test_postgresql_requires_an_explicit_secret_key(tmp_path):
    result = run_cli(
        "serve",
        "--database-url",
        "postgresql://postgres@127.0.0.1:5432/x",
        cwd=tmp_path,
        LENDING_SECRET_KEY="",
    )
    assert result.returncode == 2
    assert "with PostgreSQL, set LENDING_SECRET_KEY or LENDING_SECRET_KEY_FILE" in result.stderr


def _version_2_book(url: str) -> None:
    """A database of the previous release (schema version 2) with a loan paid over several days."""
    from lending_grpc.core.storage.migrations import MIGRATIONS, SchemaVersion

    db = open_database(url)
    try:
        with db.bind_ctx([SchemaVersion]):
            db.create_tables([SchemaVersion])
            for version, step in MIGRATIONS[:2]:
                step(db, "Asia/Jakarta")
                SchemaVersion.create(version=version, applied_time_us=0)
    finally:
        close_database(db)
    # The loan starts 2026-01-05 (installments of 110,000.00 due 01-12, 01-19, 01-26, 02-02, ...).
    # Payments were recorded at 20:00 UTC, which is 03:00 the next day in Jakarta.
    day = 86_400_000_000
    jan_11_20h = 1_768_161_600_000_000  # 2026-01-11T20:00:00Z
    loan_columns = (
        "id, owner_id, loan_id, principal_cents, rate_e4, term_weeks, start_date, total_cents, weekly_cents,"
        " final_cents, paid_weeks, paid_cents, second_unpaid_due_date, create_time_us"
    )
    payment_columns = (
        "id, payment_id, loan_id, owner_id, request_id, amount_cents, first_week, last_week,"
        " outstanding_after_cents, payment_time_us"
    )
    rows = [
        'INSERT INTO "user" (id, user_id, username, username_key, email, password_hash, create_time_us)'
        " VALUES (1, '11111111-1111-4111-8111-111111111111', 'ada', 'ada', 'ada@example.com', 'x', 0)",
        f"INSERT INTO loan ({loan_columns}) VALUES (1, 1, 'L1', 500000000, 1000, 50, '2026-01-05',"
        " 550000000, 11000000, 11000000, 3, 33000000, '2026-02-09', 0)",
        # Week 1 on 01-12 (Jakarta), then weeks 2-3 only on 02-03: delinquent from 01-27 to 02-03.
        f"INSERT INTO payment ({payment_columns}) VALUES (1, '{uuid.UUID(int=1)}', 1, 1, 'r1', 11000000,"
        f" 1, 1, 539000000, {jan_11_20h})",
        f"INSERT INTO payment ({payment_columns}) VALUES (2, '{uuid.UUID(int=2)}', 1, 1, NULL, 22000000,"
        f" 2, 3, 517000000, {jan_11_20h + 22 * day})",
    ]
    for sql in rows:
        _execute(url, sql)


def test_a_version_2_database_keeps_its_history_with_value_dates(new_blank, tmp_path):
    url = new_blank()
    _version_2_book(url)
    assert _migrate(url, tmp_path).returncode == 0
    db = open_database(url)
    try:
        from lending_grpc.core.storage.models import DelinquencySpan, Loan, Payment

        payments = [
            (p.value_date, p.running_paid_cents, p.recorded_by_id, p.reverse_time_us)
            for p in Payment.select().order_by(Payment.id)
        ]
        assert payments == [
            (dt.date(2026, 1, 12), 11_000_000, 1, None),
            (dt.date(2026, 2, 3), 33_000_000, 1, None),
        ]
        loan = Loan.get()
        assert (loan.last_value_date, loan.paid_weeks, loan.paid_cents) == (
            dt.date(2026, 2, 3),
            3,
            33_000_000,
        )
        # Delinquent from 01-27 (two unpaid installments due before it) until the catch-up on 02-03.
        spans = [
            (s.month, s.start_date, s.end_date) for s in DelinquencySpan.select().order_by(DelinquencySpan.id)
        ]
        assert spans == [
            (dt.date(2026, 1, 1), dt.date(2026, 1, 27), dt.date(2026, 2, 3)),
            (dt.date(2026, 2, 1), dt.date(2026, 1, 27), dt.date(2026, 2, 3)),
        ]
        # Still delinquent today (installments due since February are unpaid): announced, no event flood.
        assert loan.announced_delinquent_since is not None
    finally:
        close_database(db)
