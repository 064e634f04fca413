"""The database under the service: prepared statements, the query budget of each core operation, and
PostgreSQL's connection pool and dropped connections. Migrations are in test_migrations.py."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from helpers import (
    ANONYMOUS,
    WEEKLY,
    actor_of,
    create_on,
    make_settings,
    pay_on_own_channel,
    read_on,
    user_on,
)
from lending.v1 import billing_pb2
from peewee import IntegrityError

from lending_grpc.core.storage.models import Loan, Payment
from lending_grpc.core.storage.prepared import Select, Statement

BY_KEY = Select(Loan, lambda p: Loan.select().where((Loan.owner == p.owner) & (Loan.loan_id == p.loan_id)))
WITH_LOAN_ID = Select(
    Payment,
    lambda p: Payment.select().join(Loan).where(Payment.owner == p.owner).order_by(Payment.id),
    columns=(*Payment._meta.sorted_fields, Loan.loan_id),
)


def test_rows_equal_what_peewee_returns(env):
    owner = env.new_owner()
    env.billing.create_loan(actor_of(owner), "A-1", "1000", start_date="2026-01-05")
    env.billing.create_loan(actor_of(owner), "A-2", "2000", start_date="2026-02-02", term_weeks=10)
    for loan_id in ("A-1", "A-2"):
        row = env.db.first(BY_KEY, owner=owner, loan_id=loan_id)
        expected = Loan.get((Loan.owner == owner) & (Loan.loan_id == loan_id))
        assert row._asdict() == expected.__data__  # dates come back as dates, ids as ints
    assert env.db.first(BY_KEY, owner=owner, loan_id="missing") is None
    assert env.db.all(BY_KEY, owner=owner + 1, loan_id="A-1") == []


def test_an_append_commits_and_rolls_back_with_its_transaction(env):
    """Appends (audit rows, events) may wait for the COMMIT (PostgreSQL): never apart from their work."""
    from lending_grpc.core.storage.models import AuditEvent

    owner = env.new_owner()
    env.billing.create_loan(actor_of(owner), "T-1", "1000", start_date="2026-01-05")
    columns = [f for f in AuditEvent._meta.sorted_fields if f.name != "id"]
    insert = Statement(lambda p: AuditEvent.insert({f: getattr(p, f.name) for f in columns}))
    row = {f.name: "x" for f in columns} | {"time_us": 1, "summary": "{}"}
    before = AuditEvent.select().count()

    def work(weeks, event):
        Loan.update(paid_weeks=weeks).where((Loan.owner == owner) & (Loan.loan_id == "T-1")).execute()
        env.db.append(insert, **(row | {"event": event}))

    with env.db.unit_of_work():
        env.db.write_transaction(lambda: work(1, "test.append"))
    assert AuditEvent.select().count() == before + 1
    # A failing append (NOT NULL) fails the commit, and the change made before it rolls back too.
    with pytest.raises(IntegrityError), env.db.unit_of_work():
        env.db.write_transaction(lambda: work(2, None), attempts=1)
    assert AuditEvent.select().count() == before + 1
    assert Loan.get((Loan.owner == owner) & (Loan.loan_id == "T-1")).paid_weeks == 1
    # Outside a transaction an append runs at once.
    env.db.append(insert, **(row | {"event": "test.alone"}))
    assert AuditEvent.select().where(AuditEvent.event == "test.alone").count() == 1


def test_joined_columns_become_model_prefixed_attributes(env):
    owner = env.new_owner()
    env.billing.create_loan(actor_of(owner), "J-1", "5000000", start_date="2026-01-05")
    env.billing.make_payment(actor_of(owner), "J-1", "110000.00", "k1")
    env.billing.make_payment(actor_of(owner), "J-1", "220000.00", "k2")
    rows = env.db.all(WITH_LOAN_ID, owner=owner)
    assert [(r.loan_loan_id, r.request_id, r.first_week, r.last_week) for r in rows] == [
        ("J-1", "k1", 1, 1),
        ("J-1", "k2", 2, 3),
    ]


def test_a_parameter_may_repeat_but_must_appear_and_every_value_must_be_given(env):
    owner = env.new_owner()
    env.billing.create_loan(actor_of(owner), "R-1", "1000", start_date="2026-01-05")
    twice = Select(Loan, lambda p: Loan.select().where((Loan.owner == p.owner) | (Loan.id == p.owner)))
    assert [row.loan_id for row in env.db.all(twice, owner=owner)] == ["R-1"]
    unused = Statement(lambda p: (p.owner, Loan.select().where(Loan.id == 1))[1])
    with pytest.raises(ValueError, match="parameter 'owner' does not appear"):
        env.db.run(unused, owner=1)
    with pytest.raises(TypeError, match=r"missing \['loan_id'\]"):
        env.db.first(BY_KEY, owner=owner)


# == SQL statements per core operation: the hot paths stay a fixed, small number of queries ===


# Peewee builds each query in Python (about 180 us here), so the count per RPC,
# not the database, sets the floor of every call's cost. These budgets pin it.


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.statements: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.statements.append(str(record.msg))


@contextlib.contextmanager
def count_queries():
    logger = logging.getLogger("peewee")
    counter, level = _Counter(), logger.level
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    try:
        yield counter.statements
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)


@pytest.fixture
def loan(env):
    owner = env.new_owner()
    env.billing.create_loan(actor_of(owner), "Q1", "5000000", start_date="2026-01-05")
    env.billing.make_payment(actor_of(owner), "Q1", "110000.00", "warm")
    return owner


@pytest.mark.parametrize(
    ("operation", "budget"),
    [
        (lambda e, o: e.billing.get_loan(o, "Q1"), 1),
        # the loan, then (paid since 2026-03-01) its running total on that day
        (lambda e, o: e.delinquency.get_delinquency(o, "Q1", "2026-03-01"), 2),
        (lambda e, o: e.billing.list_loans(o), 1),
        # loans whose row holds their standing that day, the stored spans covering it, and (one
        # query for the page) what the spans' loans had paid that day
        (lambda e, o: e.delinquency.list_delinquent(o, "2026-03-01"), 3),
        (lambda e, o: e.billing.list_payments(o, "Q1"), 2),
        (lambda e, o: e.billing.get_schedule(o, "Q1"), 2),
        # idempotency lookup, loan, insert payment, guarded update of the summary, audit row, event
        (lambda e, o: e.billing.make_payment(actor_of(o), "Q1", "110000.00", "fresh-key"), 6),
        # a retry is answered from the idempotency lookup alone
        (lambda e, o: e.billing.make_payment(actor_of(o), "Q1", "110000.00", "warm"), 1),
        (lambda e, o: e.billing.create_loan(actor_of(o), "Q2", "2000000"), 4),  # lookup, insert, audit, event
    ],
    ids=[
        "get_loan",
        "get_delinquency",
        "list_loans",
        "list_delinquent",
        "list_payments",
        "get_schedule",
        "make_payment",
        "make_payment_retry",
        "create_loan",
    ],
)
def test_query_budget(env, loan, operation, budget):
    with count_queries() as statements:
        operation(env, loan)
    assert len(statements) == budget, statements


def test_authenticating_a_known_session_costs_no_query(env):
    owner_user = env.auth.register(ANONYMOUS, "cached-user", "correct horse battery", "c@example.com")
    token = env.auth.login(ANONYMOUS, "cached-user", "correct horse battery").access_token
    with count_queries() as statements:
        env.auth.authenticate(token)  # the first call resolves user and session in one query
    assert len(statements) == 1
    with count_queries() as statements:
        principal, _expires = env.auth.authenticate(token)
    assert statements == [] and principal.user_id == owner_user.user_id


# == PostgreSQL: a bounded connection pool, and connections that drop ====================


@pytest.mark.slow
def test_dropped_postgresql_connections_never_surface_as_internal(postgres, tmp_path):
    """PostgreSQL restarts or a DBA kills sessions: calls fail UNAVAILABLE (never INTERNAL), then recover."""
    import psycopg

    from lending_grpc.server import create_server

    url = postgres.create()
    running = create_server(make_settings(tmp_path, database_url=url))
    try:
        target = f"127.0.0.1:{running.port}"
        metadata = user_on(target)
        create_on(target, metadata, "resilient")
        dbname = url.rsplit("/", 1)[1]
        with psycopg.connect(url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            ).fetchone()[0]
        assert killed >= 1
        outcomes = []
        for i in range(6):
            result = pay_on_own_channel(target, metadata, "resilient", WEEKLY, f"after-kill-{i}")
            outcomes.append(result if isinstance(result, grpc.StatusCode) else "OK")
        assert set(outcomes) <= {"OK", grpc.StatusCode.UNAVAILABLE}, outcomes
        assert outcomes[-3:] == ["OK"] * 3, outcomes
        # Nothing half-written: the loan reconciles with the payments that were acknowledged.
        loan, payments = read_on(target, metadata, "resilient")
        assert loan.installments_paid == len(payments) == outcomes.count("OK")
    finally:
        running.stop(0)
        postgres.drop(url)


@pytest.mark.slow
def test_the_postgresql_pool_is_bounded_and_shared_by_more_threads(postgres, tmp_path):
    import psycopg

    from lending_grpc.server import create_server

    url = postgres.create()
    running = create_server(make_settings(tmp_path, database_url=url, db_pool_size=2, max_workers=16))
    dbname = url.rsplit("/", 1)[1]
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        with psycopg.connect(url, autocommit=True) as admin:
            while not done.is_set():
                seen.append(
                    admin.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                        (dbname, "lending-grpc"),
                    ).fetchone()[0]
                )
                time.sleep(0.005)

    try:
        target = f"127.0.0.1:{running.port}"
        metadata = user_on(target)
        create_on(target, metadata, "pooled", term_weeks=60)
        watcher = threading.Thread(target=watch)
        watcher.start()
        with ThreadPoolExecutor(16) as pool:
            results = list(
                pool.map(
                    lambda i: pay_on_own_channel(target, metadata, "pooled", WEEKLY, f"p-{i}"), range(60)
                )
            )
        done.set()
        watcher.join()
        assert all(isinstance(r, billing_pb2.Payment) for r in results), results
        assert seen and max(seen) <= 2, max(seen)
        assert sorted(r.first_week for r in results) == list(range(1, 61))
    finally:
        done.set()
        running.stop(0)
        postgres.drop(url)


def test_a_pooled_connection_is_pinged_only_after_sitting_idle(postgres, monkeypatch):
    """A connection given back within ALIVE_BYPASS_S is reused without `SELECT 1`; an older one is checked.

    The price, a dead connection handed out inside the window, is one call
    that fails UNAVAILABLE with nothing written; the next gets a new one.
    """
    import psycopg

    from lending_grpc.core.errors import DatabaseUnreachable
    from lending_grpc.core.storage import database

    url = postgres.create()
    db = database.open_database(url, pool_size=2)
    pings = []
    check = db._adapter.is_connection_closed
    monkeypatch.setattr(db._adapter, "is_connection_closed", lambda conn: pings.append(conn) or check(conn))

    def backend() -> int:
        with db.unit_of_work():
            return db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]

    def end_session(pid: int) -> None:
        with psycopg.connect(url, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]

    try:
        first = backend()
        assert [backend() for _ in range(5)] == [first] * 5
        assert pings == []  # each call took the connection the one before gave back
        monkeypatch.setattr(database, "ALIVE_BYPASS_S", 0.05)
        time.sleep(0.1)
        assert backend() == first
        assert len(pings) == 1  # idle longer than the window: asked the server first

        # Ended by the server inside the window: that call fails retryably, the next reconnects.
        monkeypatch.setattr(database, "ALIVE_BYPASS_S", 60)
        end_session(first)
        with pytest.raises(DatabaseUnreachable):
            backend()
        second = backend()
        assert second != first

        # Ended while idle past the window: the check notices and the call never sees it.
        monkeypatch.setattr(database, "ALIVE_BYPASS_S", 0.05)
        end_session(second)
        time.sleep(0.1)
        assert backend() not in (first, second)
    finally:
        database.close_database(db)
        postgres.drop(url)
