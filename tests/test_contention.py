"""Lock contention and transaction conflicts: retryable statuses, never a lost or doubled write."""

from __future__ import annotations

import sqlite3

import grpc
import pytest
from grpc_status import rpc_status
from lending.v1 import billing_pb2
from peewee import IntegrityError, OperationalError
from security_helpers import running_api

from lending_grpc.core.errors import Aborted
from lending_grpc.core.storage.database import LendingDatabase, sqlite_path


class _DriverError(Exception):
    """Stands in for a psycopg error: Peewee keeps the driver's exception as ``orig``."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
def test_serialization_failures_and_deadlocks_are_retried_then_aborted(sqlstate):
    calls = []

    def always_conflicts():
        calls.append(1)
        raise OperationalError(_DriverError(sqlstate))

    db = _NoTransactionDb()
    with pytest.raises(Aborted), db.unit_of_work():
        db.write_transaction(always_conflicts, attempts=3)
    assert len(calls) == 3

    outcomes = iter([OperationalError(_DriverError(sqlstate)), None])

    def conflicts_once():
        error = next(outcomes)
        if error:
            raise error
        return "done"

    assert _NoTransactionDb().write_transaction(conflicts_once) == "done"


def test_psycopg_conflicts_that_peewee_does_not_wrap_are_retried_too():
    errors = pytest.importorskip("psycopg.errors")
    calls = []

    def deadlocks():
        calls.append(1)
        raise errors.DeadlockDetected("deadlock detected")

    # Real psycopg classes carry their SQLSTATE on the class.
    assert errors.DeadlockDetected.sqlstate == "40P01"
    db = _NoTransactionDb()
    with pytest.raises(Aborted), db.unit_of_work():
        db.write_transaction(deadlocks, attempts=2)
    assert len(calls) == 2


def test_an_exhausted_pool_or_a_lost_server_is_unavailable_not_internal():
    from playhouse.pool import MaxConnectionsExceeded

    from lending_grpc.core.errors import DatabaseUnreachable, Unavailable

    for failure in (
        OperationalError(_DriverError("08006")),  # connection failure
        OperationalError(_DriverError("57P01")),  # admin shutdown
    ):  # class 53 (disk full, no connection slot) is StorageFull: test_faults_storage.py
        with pytest.raises(DatabaseUnreachable, match="request_id"), _NoTransactionDb().unit_of_work():
            raise failure
    # Every pooled connection busy for the busy timeout: local saturation, not an outage.
    with pytest.raises(Unavailable) as info, _NoTransactionDb().unit_of_work():
        raise MaxConnectionsExceeded("Max connections exceeded, timed out attempting to connect.")
    assert not isinstance(info.value, DatabaseUnreachable)


def test_a_unique_race_is_retried_and_other_integrity_errors_are_not():
    outcomes = iter([IntegrityError(_DriverError("23505")), None])

    def races_once():
        error = next(outcomes)
        if error:
            raise error
        return "winner's row"

    assert _NoTransactionDb().write_transaction(races_once) == "winner's row"
    calls = []

    def violates_a_check():
        calls.append(1)
        raise IntegrityError(_DriverError("23514"))

    with pytest.raises(IntegrityError):
        _NoTransactionDb().write_transaction(violates_a_check)
    assert len(calls) == 1


class _NoTransactionDb(LendingDatabase):
    """A database whose transactions do nothing, to drive the retry loop and the translation alone."""

    def __init__(self) -> None:
        self._init_lending()

    def write_lock(self):
        import contextlib

        return contextlib.nullcontext()


def _hold_lock(database_url: str):
    """Hold what a payment needs (the SQLite write lock, or the loan's row lock); returns the release."""
    path = sqlite_path(database_url)
    if path is not None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        return lambda: (conn.execute("ROLLBACK"), conn.close())
    import psycopg

    conn = psycopg.connect(database_url)
    conn.execute("SELECT id FROM loan WHERE loan_id = 'held' FOR UPDATE")
    return lambda: (conn.rollback(), conn.close())


def test_a_payment_blocked_past_the_busy_timeout_is_unavailable_and_writes_nothing(tmp_path, database_url):
    with running_api(tmp_path, database_url, db_busy_timeout_ms=300) as api:
        metadata, _, _ = api.register_and_login()
        api.billing.CreateLoan(
            billing_pb2.CreateLoanRequest(loan_id="held", principal_amount="5000000"), metadata=metadata
        )
        release = _hold_lock(database_url)
        try:
            with pytest.raises(grpc.RpcError) as info:
                api.billing.MakePayment(
                    billing_pb2.MakePaymentRequest(loan_id="held", amount="110000", request_id="r1"),
                    metadata=metadata,
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "busy" in info.value.details()
            status = rpc_status.from_call(info.value)
            assert status is not None and b"DATABASE_BUSY" in status.details[0].value
            # Reads are not blocked by a writer.
            loan = api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id="held"), metadata=metadata)
            assert loan.installments_paid == 0
        finally:
            release()
        # The retry (same request id) succeeds once the lock is gone, and pays once.
        payment = api.billing.MakePayment(
            billing_pb2.MakePaymentRequest(loan_id="held", amount="110000", request_id="r1"),
            metadata=metadata,
        )
        assert (payment.first_week, payment.last_week, payment.outstanding_balance) == (1, 1, "5390000.00")
        payments = api.billing.ListPayments(
            billing_pb2.ListPaymentsRequest(loan_id="held"), metadata=metadata
        ).payments
        assert [p.payment_id for p in payments] == [payment.payment_id]
