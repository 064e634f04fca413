"""Concurrent payments against one loan: every installment paid exactly once, retries never pay twice."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
from helpers import pay_on_own_channel
from lending.v1 import billing_pb2, billing_pb2_grpc


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
