"""Races and contention: concurrent payments and creates, on one server and across server processes, and
database lock contention: every installment paid exactly once, retries never pay twice."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_status import rpc_status
from helpers import (
    WEEKLY,
    ServerProcess,
    assert_balanced,
    cents,
    create,
    create_on,
    hold_payment_lock,
    list_loans,
    pay,
    pay_on_own_channel,
    payments,
    read_on,
    running_api,
    user_on,
)
from lending.v1 import billing_pb2, billing_pb2_grpc
from peewee import IntegrityError, OperationalError

from lending_grpc.core.errors import Aborted
from lending_grpc.core.storage.database import LendingDatabase

# == on one server: concurrent calls to one loan =========================================


def _create(api, metadata, loan_id: str, principal: str = "5000000") -> None:
    api.billing.CreateLoan(
        billing_pb2.CreateLoanRequest(loan_id=loan_id, principal_amount=principal, start_date="2026-01-05"),
        metadata=metadata,
    )


def test_fifty_concurrent_payments_pay_fifty_installments(api, alice):
    _create(api, alice, "race")
    target = f"127.0.0.1:{api.server.port}"
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(
            pool.map(lambda i: pay_on_own_channel(target, alice, "race", "110000.00", f"pay-{i}"), range(50))
        )
    assert all(isinstance(r, billing_pb2.Payment) for r in results), results
    weeks = sorted(r.first_week for r in results)
    assert weeks == list(range(1, 51))
    assert all(r.first_week == r.last_week for r in results)
    loan = api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id="race"), metadata=alice)
    assert loan.state == billing_pb2.LOAN_STATE_PAID_OFF
    assert (loan.outstanding_balance, loan.paid_amount, loan.installments_paid) == ("0.00", "5500000.00", 50)
    # One more payment is refused: the loan is paid off.
    late = pay_on_own_channel(target, alice, "race", "110000.00", "pay-late")
    assert late == grpc.StatusCode.FAILED_PRECONDITION


def test_more_payments_than_installments_never_overpay(api, alice):
    _create(api, alice, "over", principal="100000")  # 110000.00 over 50 weeks: 2200.00 a week
    target = f"127.0.0.1:{api.server.port}"
    with ThreadPoolExecutor(max_workers=30) as pool:
        results = list(
            pool.map(lambda i: pay_on_own_channel(target, alice, "over", "4400.00", f"two-{i}"), range(30))
        )
    accepted = [r for r in results if isinstance(r, billing_pb2.Payment)]
    refused = [r for r in results if not isinstance(r, billing_pb2.Payment)]
    assert len(accepted) == 25 and set(refused) == {grpc.StatusCode.FAILED_PRECONDITION}
    outstanding = api.billing.GetOutstanding(
        billing_pb2.GetOutstandingRequest(loan_id="over"), metadata=alice
    )
    assert (outstanding.outstanding_balance, outstanding.paid_amount) == ("0.00", "110000.00")


def test_twenty_concurrent_retries_of_one_request_make_one_payment(api, alice):
    _create(api, alice, "retry")
    target = f"127.0.0.1:{api.server.port}"
    request_id = str(uuid.uuid4())
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(
            pool.map(lambda _: pay_on_own_channel(target, alice, "retry", "220000.00", request_id), range(20))
        )
    assert all(isinstance(r, billing_pb2.Payment) for r in results), results
    assert len({r.payment_id for r in results}) == 1
    assert {(r.first_week, r.last_week, r.outstanding_balance) for r in results} == {(1, 2, "5280000.00")}
    payments = api.billing.ListPayments(billing_pb2.ListPaymentsRequest(loan_id="retry"), metadata=alice)
    assert len(payments.payments) == 1
    outstanding = api.billing.GetOutstanding(
        billing_pb2.GetOutstandingRequest(loan_id="retry"), metadata=alice
    )
    assert outstanding.installments_paid == 2 and outstanding.paid_amount == "220000.00"


def test_concurrent_creates_of_one_loan_id_make_one_loan(api, alice):
    target = f"127.0.0.1:{api.server.port}"

    def create(_):
        with grpc.insecure_channel(target) as channel:
            return billing_pb2_grpc.BillingServiceStub(channel).CreateLoan(
                billing_pb2.CreateLoanRequest(loan_id="same", principal_amount="2000000"), metadata=alice
            )

    with ThreadPoolExecutor(max_workers=10) as pool:
        loans = list(pool.map(create, range(10)))
    assert {(loan.loan_id, loan.total_amount, loan.create_time.seconds) for loan in loans} == {
        ("same", "2200000.00", loans[0].create_time.seconds)
    }
    listed = api.billing.ListLoans(billing_pb2.ListLoansRequest(), metadata=alice)
    assert [loan.loan_id for loan in listed.loans] == ["same"]


def test_concurrent_identical_creates_make_one_loan(api, alice):
    import threading

    barrier = threading.Barrier(8)
    results: list = [None] * 8

    def worker(index):
        barrier.wait()
        try:
            results[index] = create(api, alice, loan_id="same", principal="1000", start_date="2026-01-05")
        except grpc.RpcError as err:
            results[index] = err

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    errors = [r for r in results if isinstance(r, grpc.RpcError)]
    assert errors == [], [(e.code(), e.details()) for e in errors]
    assert all(r == results[0] for r in results)
    assert [loan.loan_id for loan in list_loans(api, alice).loans] == ["same"]


def run_concurrently(count, action):
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def worker(index):
        barrier.wait()
        try:
            results[index] = action(index)
        except grpc.RpcError as err:
            results[index] = err

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_concurrent_retries_record_one_payment(api, alice):
    create(api, alice)
    results = run_concurrently(8, lambda _i: pay(api, alice, "110000.00", request_id="burst"))
    errors = [r for r in results if isinstance(r, grpc.RpcError)]
    assert errors == [], [(e.code(), e.details()) for e in errors]
    assert len({r.payment_id for r in results}) == 1
    assert all(r == results[0] for r in results)
    assert len(payments(api, alice).payments) == 1
    out = assert_balanced(api, alice)
    assert (out.outstanding_balance, out.installments_paid) == ("5390000.00", 1)


def test_concurrent_distinct_payments_all_recorded(api, alice):
    create(api, alice)
    results = run_concurrently(10, lambda i: pay(api, alice, "110000.00", request_id=f"pay-{i}"))
    errors = [r for r in results if isinstance(r, grpc.RpcError)]
    assert errors == [], [(e.code(), e.details()) for e in errors]
    weeks = sorted((r.first_week, r.last_week) for r in results)
    assert weeks == [(k, k) for k in range(1, 11)]
    out = assert_balanced(api, alice)
    assert (out.outstanding_balance, out.installments_paid) == ("4400000.00", 10)


# == across two server processes on one database =========================================


@pytest.fixture
def targets(database_url):
    """Two independent server processes on one database, each on a port of its own."""
    servers = [ServerProcess(database_url) for _ in range(2)]
    yield [server.target for server in servers]
    assert [server.terminate() for server in servers] == [0, 0]


@pytest.mark.slow
def test_hundred_payments_across_processes_pay_each_installment_once(targets):
    metadata = user_on(targets[0])
    create_on(targets[0], metadata, "shared", term_weeks=60)
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(
                lambda i: pay_on_own_channel(targets[i % 2], metadata, "shared", WEEKLY, f"pay-{i}"),
                range(100),
            )
        )
    accepted = [r for r in results if isinstance(r, billing_pb2.Payment)]
    refused = [r for r in results if not isinstance(r, billing_pb2.Payment)]
    assert len(accepted) == 60
    assert refused == [grpc.StatusCode.FAILED_PRECONDITION] * 40
    assert sorted(p.first_week for p in accepted) == list(range(1, 61))
    assert all(p.last_week == p.first_week for p in accepted)
    loan, payments = read_on(targets[1], metadata, "shared")
    assert loan.installments_paid == 60 and loan.state == billing_pb2.LOAN_STATE_PAID_OFF
    assert loan.outstanding_balance == "0.00" and loan.paid_amount == "6600000.00"
    assert sum(cents(p.amount) for p in payments) == 660_000_000
    assert sorted(p.first_week for p in payments) == list(range(1, 61))


@pytest.mark.slow
def test_thirty_retries_of_one_request_across_processes_make_one_payment(targets):
    metadata = user_on(targets[0])
    create_on(targets[0], metadata, "retried")
    start = threading.Barrier(30)
    with ThreadPoolExecutor(30) as pool:
        results = list(
            pool.map(
                lambda i: pay_on_own_channel(
                    targets[i % 2], metadata, "retried", WEEKLY, "same-request", start
                ),
                range(30),
            )
        )
    assert all(isinstance(r, billing_pb2.Payment) for r in results), results
    assert len({r.payment_id for r in results}) == 1
    assert {(r.first_week, r.last_week) for r in results} == {(1, 1)}
    loan, payments = read_on(targets[1], metadata, "retried")
    assert len(payments) == 1 and loan.installments_paid == 1 and loan.outstanding_balance == "5390000.00"


@pytest.mark.slow
def test_two_concurrent_payoffs_one_wins_one_is_refused(targets):
    metadata = user_on(targets[0])
    loans = [f"payoff-{n}" for n in range(8)]
    for loan_id in loans:
        create_on(targets[0], metadata, loan_id)
    for loan_id in loans:
        start = threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            results = list(
                pool.map(
                    lambda i, loan_id=loan_id, start=start: pay_on_own_channel(
                        targets[i], metadata, loan_id, "5500000.00", f"{loan_id}-{i}", start
                    ),
                    range(2),
                )
            )
        winners = [r for r in results if isinstance(r, billing_pb2.Payment)]
        assert len(winners) == 1, results
        assert grpc.StatusCode.FAILED_PRECONDITION in results
        assert (winners[0].first_week, winners[0].last_week, winners[0].outstanding_balance) == (
            1,
            50,
            "0.00",
        )
        loan, payments = read_on(targets[0], metadata, loan_id)
        assert len(payments) == 1 and loan.paid_amount == "5500000.00" and loan.outstanding_balance == "0.00"


# == lock contention and transaction conflicts: retryable statuses, never a lost or doubled write ===


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


def test_a_payment_blocked_past_the_busy_timeout_is_unavailable_and_writes_nothing(tmp_path, database_url):
    with running_api(tmp_path, database_url, db_busy_timeout_ms=300) as api:
        metadata, _, _ = api.register_and_login()
        api.billing.CreateLoan(
            billing_pb2.CreateLoanRequest(loan_id="held", principal_amount="5000000"), metadata=metadata
        )
        release = hold_payment_lock(database_url)
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
