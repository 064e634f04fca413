"""A full disk: writes answer UNAVAILABLE (STORAGE_FULL) with RetryInfo, reads go on, and writes come back.

The SQLite database is filled for real: ``PRAGMA max_page_count`` on every
connection of the running server makes SQLite answer exactly as on a full
disk (SQLITE_FULL, "database or disk is full"), without a tiny filesystem.
"""

from __future__ import annotations

import logging
import sqlite3

import grpc
import pytest
from google.rpc import error_details_pb2
from helpers import (
    Api,
    detail,
    make_settings,
    metric_value,
    on_every_rpc_thread,
    reason,
    running_api,
    scrape,
    wait_until,
)
from lending.v1 import audit_pb2_grpc, auth_pb2, auth_pb2_grpc, billing_pb2, billing_pb2_grpc
from peewee import OperationalError
from playhouse.pool import MaxConnectionsExceeded

from lending_grpc.core.errors import DatabaseUnreachable, StorageFull, Unavailable
from lending_grpc.core.storage.database import LendingDatabase
from lending_grpc.server import create_server

PASSWORD = "correct horse battery"
WRITES = ("Register", "Login", "RefreshToken", "Logout", "CreateLoan", "MakePayment")


def _bearer(tokens) -> tuple:
    return (("authorization", f"Bearer {tokens.access_token}"),)


class _Writer:
    """One call of every write RPC, each with fresh keys of the same length (so rows keep one size)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.tokens = self.login()
        self.spare_sessions = [self.login() for _ in range(40)]
        self.refresh = self.login().refresh_token
        self.payments: dict[str, billing_pb2.Payment] = {}  # request_id -> acknowledged payment
        api.billing.CreateLoan(
            billing_pb2.CreateLoanRequest(loan_id="long", principal_amount="520000", term_weeks=520),
            metadata=_bearer(self.tokens),
        )

    def login(self):
        return self.api.auth.Login(auth_pb2.LoginRequest(username="filler", password=PASSWORD))

    def call(self, name: str, n: int) -> None:
        """Make write ``name`` number ``n``; raises grpc.RpcError when refused."""
        auth, billing, me = self.api.auth, self.api.billing, _bearer(self.tokens)
        if name == "Register":
            key = f"full-{n:06d}"
            auth.Register(auth_pb2.RegisterRequest(username=key, password=PASSWORD, email=f"{key}@e.com"))
        elif name == "Login":
            self.spare_sessions.append(self.login())
        elif name == "RefreshToken":
            self.refresh = auth.RefreshToken(
                auth_pb2.RefreshTokenRequest(refresh_token=self.refresh)
            ).refresh_token
        elif name == "Logout":
            session = self.spare_sessions[-1]
            auth.Logout(auth_pb2.LogoutRequest(), metadata=_bearer(session))
            self.spare_sessions.pop()
        elif name == "CreateLoan":
            billing.CreateLoan(
                billing_pb2.CreateLoanRequest(loan_id=f"full-{n:06d}", principal_amount="1000"), metadata=me
            )
        else:
            request_id = f"full-{n:06d}"
            self.last_payment_request = request_id
            self.payments[request_id] = billing.MakePayment(
                billing_pb2.MakePaymentRequest(loan_id="long", amount="1100.00", request_id=request_id),
                metadata=me,
            )


def _set_max_pages(running, pages: int) -> None:
    # SQLite keeps max_page_count per connection, and each RPC thread has its own.
    on_every_rpc_thread(running, lambda: running.database.execute_sql(f"PRAGMA max_page_count = {pages}"))


def test_a_full_sqlite_database_refuses_writes_as_unavailable_and_recovers_without_restart(tmp_path, caplog):
    with running_api(
        tmp_path,
        max_workers=4,
        metrics_listen="127.0.0.1:0",
        rate_limit_user_per_second=0,
        rate_limit_peer_per_second=0,
    ) as api:
        running = api.server
        path = running.database.database
        api.auth.Register(auth_pb2.RegisterRequest(username="filler", password=PASSWORD, email="f@e.com"))
        writer = _Writer(api)
        writer.call("MakePayment", 0)
        caplog.set_level(logging.INFO)
        before = len(caplog.records)

        # The database may not grow any more: writes fill the room left in its pages, then fail.
        pages = running.database.execute_sql("PRAGMA page_count").fetchone()[0]
        _set_max_pages(running, pages)
        answers: dict[str, list] = {name: [] for name in WRITES}
        refusals: list[grpc.RpcError] = []
        for n in range(1, 1000):
            full_round = True
            for name in WRITES:
                try:
                    writer.call(name, n)
                    answers[name].append("OK")
                    full_round = False
                except grpc.RpcError as err:
                    answers[name].append(err.code())
                    refusals.append(err)
            if full_round:
                break
        assert full_round, {name: codes[-5:] for name, codes in answers.items()}

        # Every write RPC ended refused, each time with the same answer.
        assert {name: codes[-1] for name, codes in answers.items()} == dict.fromkeys(
            WRITES, grpc.StatusCode.UNAVAILABLE
        )
        assert {code for codes in answers.values() for code in codes} == {"OK", grpc.StatusCode.UNAVAILABLE}
        for err in refusals:
            assert reason(err) == "STORAGE_FULL", err.details()
            assert err.details() == (
                "the database storage is full: the request was not carried out and nothing was "
                "written; retry later"
            )
            assert detail(err, error_details_pb2.RetryInfo).retry_delay.seconds == 5
            assert dict(detail(err, error_details_pb2.ErrorInfo).metadata) == {"kind": "disk_full"}
        print(
            f"\nfull after {n} rounds; refusals {len(refusals)}; "
            + ", ".join(f"{name} {codes.count('OK')} ok" for name, codes in answers.items())
        )

        # Reads keep answering, with every acknowledged payment.
        me = _bearer(writer.tokens)
        loan = api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id="long"), metadata=me)
        listed = api.billing.ListPayments(
            billing_pb2.ListPaymentsRequest(loan_id="long", page_size=500), metadata=me
        ).payments
        assert {p.payment_id for p in listed} == {p.payment_id for p in writer.payments.values()}
        assert loan.installments_paid == len(writer.payments)
        assert api.billing.GetSchedule(
            billing_pb2.GetScheduleRequest(loan_id="long"), metadata=me
        ).installments
        assert api.billing.ListLoans(billing_pb2.ListLoansRequest(), metadata=me).loans

        # One WARNING line for the whole episode, no traceback, no ERROR, no rollback error.
        records = caplog.records[before:]
        ours = [r for r in records if r.name.startswith("lending_grpc") and r.levelno >= logging.WARNING]
        assert [(r.levelname, r.name) for r in ours] == [("WARNING", "lending_grpc.core.storage.database")]
        assert "disk_full" in ours[0].getMessage() and "database or disk is full" in ours[0].getMessage()
        assert not any(r.exc_info for r in records)
        assert not any("cannot rollback" in r.getMessage() for r in records)
        # ... and every refusal counted.
        text = scrape(running)
        assert metric_value(text, "lending_storage_errors_total", kind="disk_full") == len(refusals)
        failed_payments = answers["MakePayment"].count(grpc.StatusCode.UNAVAILABLE)
        assert (
            metric_value(
                text,
                "grpc_server_handled_total",
                grpc_code="Unavailable",
                grpc_method="MakePayment",
                grpc_service="lending.v1.BillingService",
                grpc_type="unary",
            )
            == failed_payments
        )

        # Space is freed: the same server takes writes again, and the refused payment was never made.
        _set_max_pages(running, 1_000_000)
        refused_request = writer.last_payment_request
        for name in WRITES:
            writer.call(name, 5000)
        retried = api.billing.MakePayment(
            billing_pb2.MakePaymentRequest(loan_id="long", amount="1100.00", request_id=refused_request),
            metadata=me,
        )
        assert retried.first_week == len(writer.payments) + 1  # new: the refused attempt left nothing
        loan = api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id="long"), metadata=me)
        assert loan.installments_paid == len(writer.payments) + 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


class _DriverError(Exception):
    """Stands in for a psycopg error: Peewee keeps the driver's exception as ``orig``."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


class _Db(LendingDatabase):
    def __init__(self) -> None:
        self._init_lending()


@pytest.mark.parametrize(
    "sqlstate, kind, retry_after_s",
    [
        ("53100", "disk_full", 5.0),
        ("53200", "out_of_memory", 1.0),
        ("53300", "out_of_connections", 1.0),
        ("53400", "resources", 1.0),
    ],
)
def test_postgresql_insufficient_resources_are_storage_full_and_reported(sqlstate, kind, retry_after_s):
    db, seen = _Db(), []
    db.add_failure_listener(seen.append)
    with pytest.raises(StorageFull) as info, db.unit_of_work():
        raise OperationalError(_DriverError(sqlstate))
    assert (info.value.kind, info.value.retry_after_s, info.value.reason) == (
        kind,
        retry_after_s,
        "STORAGE_FULL",
    )
    assert isinstance(info.value, Unavailable) and not isinstance(info.value, DatabaseUnreachable)
    assert seen == [kind]
    # An exhausted pool of our own is contention, not a lack of room: no report.
    with pytest.raises(Unavailable) as info, db.unit_of_work():
        raise MaxConnectionsExceeded("Max connections exceeded")
    assert type(info.value) is Unavailable and seen == [kind]


def test_sqlite_does_not_replace_a_full_disk_with_a_rollback_error(tmp_path):
    from lending_grpc.core.storage.database import close_database, open_database

    db = open_database(f"sqlite:///{tmp_path / 'full.db'}")
    try:
        db.execute_sql("CREATE TABLE filler (text TEXT)")
        db.execute_sql(f"PRAGMA max_page_count = {db.execute_sql('PRAGMA page_count').fetchone()[0]}")
        with pytest.raises(OperationalError, match="database or disk is full"), db.write_lock():
            for _ in range(10):
                db.execute_sql("INSERT INTO filler VALUES (?)", ("x" * 3000,))
        assert not db.in_transaction()
        assert db.execute_sql("SELECT count(*) FROM filler").fetchone() == (0,)
    finally:
        close_database(db)


def test_postgresql_out_of_connection_slots_is_storage_full_then_recovers(postgres, tmp_path):
    """A real refusal: the service's role may open no more connections than it has, and a call needs one."""
    import psycopg

    url = postgres.create()
    role = f"lending_limited_{url.rsplit('_', 1)[1]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        for what in ("SCHEMA public", "ALL TABLES IN SCHEMA public", "ALL SEQUENCES IN SCHEMA public"):
            admin.execute(f'GRANT ALL ON {what} TO "{role}"')
    running = create_server(
        make_settings(tmp_path, database_url=url.replace("postgres@", f"{role}@", 1), db_pool_size=8)
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    holder = psycopg.connect(url)
    try:
        api = Api(
            channel,
            auth_pb2_grpc.AuthServiceStub(channel),
            billing_pb2_grpc.BillingServiceStub(channel),
            running,
            audit_pb2_grpc.AuditServiceStub(channel),
        )
        api.auth.Register(auth_pb2.RegisterRequest(username="slots", password=PASSWORD, email="s@e.com"))
        me = _bearer(api.auth.Login(auth_pb2.LoginRequest(username="slots", password=PASSWORD)))
        api.billing.CreateLoan(
            billing_pb2.CreateLoanRequest(loan_id="held", principal_amount="5000"), metadata=me
        )
        with psycopg.connect(url, autocommit=True) as admin:
            # The pool's connections, and every connection of the role (the event hub's LISTEN too).
            pool = "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND application_name = %s"
            slots = admin.execute(pool, (role, "lending-grpc")).fetchone()[0]
            total = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,)
            ).fetchone()[0]
            admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT {total}')
            # Payments waiting for a row lock hold every connection the role may have.
            holder.execute("SELECT id FROM loan WHERE loan_id = 'held' FOR UPDATE")

            def pay(n):
                return api.billing.MakePayment.future(
                    billing_pb2.MakePaymentRequest(loan_id="held", amount="110.00", request_id=f"p{n}"),
                    metadata=me,
                )

            blocked = [pay(n) for n in range(slots)]
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND wait_event_type = 'Lock'"

            def all_waiting():
                # A server thread (the database watchdog's probe, event numbering) may hold a pooled
                # connection for a moment, and a payment arriving then finds no slot: UNAVAILABLE,
                # which a client retries with the same request id, and so does this test.
                for n, call in enumerate(blocked):
                    if call.done():
                        assert call.code() == grpc.StatusCode.UNAVAILABLE, call.exception()
                        blocked[n] = pay(n)
                return admin.execute(waiting, (role,)).fetchone()[0] == slots

            assert wait_until(all_waiting, 10) is not None

        with pytest.raises(grpc.RpcError) as info:
            api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id="held"), metadata=me)
        err = info.value
        assert err.code() == grpc.StatusCode.UNAVAILABLE and reason(err) == "STORAGE_FULL"
        assert dict(detail(err, error_details_pb2.ErrorInfo).metadata) == {"kind": "out_of_connections"}
        assert err.details().startswith("the database server has no free connection slot")
        assert detail(err, error_details_pb2.RetryInfo).retry_delay.seconds == 1

        holder.rollback()  # the payments go through, one after the other, on the connections they hold
        assert sorted(call.result(10).first_week for call in blocked) == list(range(1, slots + 1))

        def read_held():
            # The server's own threads (event numbering, the database watchdog) share the role's
            # last slots for a moment: a client retries UNAVAILABLE, and so does this read.
            try:
                return api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id="held"), metadata=me)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                return None

        assert wait_until(lambda: read_held() is not None, 5) is not None
        assert read_held().installments_paid == slots
    finally:
        holder.close()
        channel.close()
        running.stop(0)
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')
        postgres.drop(url)
