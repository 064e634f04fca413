"""Payments: MakePayment (amounts, refusals and their hints, idempotency), GetOutstanding and ListPayments,
over real gRPC, then on BillingCore. Races between payments are in test_concurrency.py."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from decimal import Decimal

import grpc
import pytest
from helpers import (
    START,
    START_DATE,
    Env,
    FixedClock,
    actor_of,
    all_payments,
    assert_balanced,
    assert_invalid,
    call_error,
    create,
    get,
    make_env,
    outstanding,
    pay,
    payments,
    snapshot,
    tamper,
    today,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lending.v1 import billing_pb2

from lending_grpc.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PaymentNotAccepted,
)
from lending_grpc.core.money import format_cents
from lending_grpc.core.storage.database import close_database
from lending_grpc.core.storage.models import Loan, Payment


def pay_error(api, metadata, amount, loan_id="L1", request_id="") -> grpc.RpcError:
    return call_error(
        api.billing.MakePayment,
        billing_pb2.MakePaymentRequest(loan_id=loan_id, amount=amount, request_id=request_id),
        metadata=metadata,
    )


# -- GetOutstanding ------------------------------------------------------------


def test_outstanding_of_new_loan(api, alice):
    create(api, alice)
    out = outstanding(api, alice)
    assert out.loan_id == "L1"
    assert out.outstanding_balance == "5500000.00"
    assert out.paid_amount == "0.00"
    assert out.total_amount == "5500000.00"
    assert out.installments_paid == 0
    assert out.installments_remaining == 50


def test_outstanding_not_found_and_malformed(api, alice):
    bob, _tokens, _user = api.register_and_login()
    create(api, alice)
    for metadata, loan_id in ((bob, "L1"), (alice, "L2")):
        err = call_error(
            api.billing.GetOutstanding, billing_pb2.GetOutstandingRequest(loan_id=loan_id), metadata=metadata
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
    err = call_error(
        api.billing.GetOutstanding, billing_pb2.GetOutstandingRequest(loan_id=""), metadata=alice
    )
    assert_invalid(err, "loan_id")


# -- MakePayment: accepted amounts ----------------------------------------------


def test_pay_one_installment(api, alice):
    create(api, alice)
    before = time.time()
    payment = pay(api, alice, "110000.00")
    after = time.time()
    assert str(uuid.UUID(payment.payment_id)) == payment.payment_id
    assert payment.loan_id == "L1"
    assert payment.amount == "110000.00"
    assert (payment.first_week, payment.last_week) == (1, 1)
    assert payment.outstanding_balance == "5390000.00"
    assert payment.request_id == ""
    assert before - 1 <= payment.payment_time.ToMicroseconds() / 1e6 <= after + 1
    out = assert_balanced(api, alice)
    assert (out.outstanding_balance, out.paid_amount) == ("5390000.00", "110000.00")
    assert (out.installments_paid, out.installments_remaining) == (1, 49)
    loan = get(api, alice)
    assert loan.state == billing_pb2.LOAN_STATE_ACTIVE
    assert loan.installments_paid == 1


@pytest.mark.parametrize("amount", ["110000", "110000.0", "110000.00", "0110000.00"])
def test_pay_accepts_plain_decimal_spellings(api, alice, amount):
    create(api, alice)
    payment = pay(api, alice, amount)
    assert payment.amount == "110000.00"
    assert (payment.first_week, payment.last_week) == (1, 1)


def test_pay_catch_up_of_several(api, alice):
    start = today() - dt.timedelta(days=30)  # weeks 1-4 are overdue
    create(api, alice, start_date=start.isoformat())
    payment = pay(api, alice, "440000.00")
    assert (payment.first_week, payment.last_week) == (1, 4)
    assert payment.outstanding_balance == "5060000.00"
    out = assert_balanced(api, alice)
    assert (out.installments_paid, out.installments_remaining) == (4, 46)


def test_pay_ahead(api, alice):
    create(api, alice, start_date=today().isoformat())  # nothing due yet
    first = pay(api, alice, "110000.00")
    assert (first.first_week, first.last_week) == (1, 1)
    ahead = pay(api, alice, "330000.00")
    assert (ahead.first_week, ahead.last_week) == (2, 4)
    assert ahead.outstanding_balance == "5060000.00"
    assert_balanced(api, alice)


def test_pay_ahead_on_future_loan(api, alice):
    create(api, alice, start_date=(today() + dt.timedelta(days=60)).isoformat())
    payment = pay(api, alice, "220000.00")
    assert (payment.first_week, payment.last_week) == (1, 2)


def test_exact_full_payoff(api, alice):
    create(api, alice)
    payment = pay(api, alice, "5500000.00")
    assert (payment.first_week, payment.last_week) == (1, 50)
    assert payment.outstanding_balance == "0.00"
    loan = get(api, alice)
    assert loan.state == billing_pb2.LOAN_STATE_PAID_OFF
    assert (loan.outstanding_balance, loan.paid_amount, loan.installments_paid) == ("0.00", "5500000.00", 50)
    out = assert_balanced(api, alice)
    assert (out.installments_paid, out.installments_remaining) == (50, 0)


def test_payoff_of_remainder(api, alice):
    create(api, alice, principal="2000000")
    pay(api, alice, "44000.00")
    pay(api, alice, "88000.00")
    payoff = pay(api, alice, "2068000.00")
    assert (payoff.first_week, payoff.last_week) == (4, 50)
    assert payoff.outstanding_balance == "0.00"
    assert get(api, alice).state == billing_pb2.LOAN_STATE_PAID_OFF


def test_last_regular_installment_pays_off(api, alice):
    create(api, alice, principal="1000", term_weeks=2, interest_rate="0")
    assert pay(api, alice, "500.00").outstanding_balance == "500.00"
    assert get(api, alice).state == billing_pb2.LOAN_STATE_ACTIVE
    last = pay(api, alice, "500.00")
    assert (last.first_week, last.last_week, last.outstanding_balance) == (2, 2, "0.00")
    assert get(api, alice).state == billing_pb2.LOAN_STATE_PAID_OFF


def test_outstanding_plus_paid_is_total_throughout(api, alice):
    create(api, alice, principal="1000001")
    expected_paid = Decimal("0.00")
    for amount, weeks in (("22000.02", 1), ("66000.06", 3), ("22000.02", 1), ("220000.20", 10)):
        payment = pay(api, alice, amount)
        expected_paid += Decimal(amount)
        assert payment.last_week - payment.first_week + 1 == weeks
        out = assert_balanced(api, alice)
        assert Decimal(out.paid_amount) == expected_paid
        assert Decimal(payment.outstanding_balance) == Decimal("1100001.10") - expected_paid
    final = pay(api, alice, out.outstanding_balance)
    assert final.outstanding_balance == "0.00"
    assert_balanced(api, alice)


# -- MakePayment: final installment differs from the weekly one -----------------


def test_final_installment_differs(api, alice):
    create(api, alice, principal="1000001")
    for week in range(1, 50):
        payment = pay(api, alice, "22000.02")
        assert (payment.first_week, payment.last_week) == (week, week)
    assert payment.outstanding_balance == "22000.12"
    err = pay_error(api, alice, "22000.02")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "22000.12" in err.details()
    out = assert_balanced(api, alice)
    assert (out.outstanding_balance, out.installments_paid) == ("22000.12", 49)
    last = pay(api, alice, "22000.12")
    assert (last.first_week, last.last_week, last.outstanding_balance) == (50, 50, "0.00")
    assert get(api, alice).state == billing_pb2.LOAN_STATE_PAID_OFF


def test_final_installment_differs_bulk(api, alice):
    create(api, alice, principal="1000001")
    # 50 regular installments are 1100001.00, not the total 1100001.10.
    err = pay_error(api, alice, "1100001.00")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    first = pay(api, alice, "1078000.98")  # 49 * 22000.02
    assert (first.first_week, first.last_week, first.outstanding_balance) == (1, 49, "22000.12")
    last = pay(api, alice, "22000.12")
    assert (last.first_week, last.last_week) == (50, 50)
    assert get(api, alice).state == billing_pb2.LOAN_STATE_PAID_OFF


def test_final_installment_not_payable_early_alone(api, alice):
    create(api, alice, principal="1000001")
    err = pay_error(api, alice, "22000.12")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


# -- MakePayment: refused amounts -----------------------------------------------


@pytest.mark.parametrize("amount", ["50000", "50000.00", "110000.01", "109999.99", "165000.00", "0.01"])
def test_partial_payment_refused_with_accepted_amounts(api, alice, amount):
    create(api, alice, start_date=today().isoformat())
    err = pay_error(api, alice, amount)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    message = err.details()
    assert "110000.00" in message  # one installment
    assert "5500000.00" in message  # full payoff
    assert "overdue" not in message
    out = assert_balanced(api, alice)
    assert out.installments_paid == 0
    assert list(payments(api, alice).payments) == []


def test_partial_payment_message_names_overdue_amount(api, alice):
    create(api, alice, start_date=(today() - dt.timedelta(days=22)).isoformat())  # weeks 1-3 overdue
    err = pay_error(api, alice, "50000")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    message = err.details()
    assert "110000.00" in message
    assert "330000.00" in message  # all overdue installments
    assert "5500000.00" in message


def test_one_overdue_installment_is_named_in_the_singular(api, alice):
    create(api, alice, start_date=(today() - dt.timedelta(days=8)).isoformat())  # week 1 overdue
    err = pay_error(api, alice, "50000")
    assert err.details() == (
        "50000.00 is not a whole number of installments; accepted: one installment is 110000.00, "
        "the 1 overdue installment is 110000.00, the full payoff is 5500000.00, "
        "or k x 110000.00 for any k below 50"
    )


def test_partial_payment_message_after_payments(api, alice):
    create(api, alice, principal="1000001", start_date=today().isoformat())
    pay(api, alice, "1078000.98")
    err = pay_error(api, alice, "100.00")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "22000.12" in err.details()


@pytest.mark.parametrize("amount", ["5500000.01", "5610000.00", "11000000.00", "2000000000000.00"])
def test_more_than_outstanding_refused(api, alice, amount):
    create(api, alice)
    err = pay_error(api, alice, amount)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert list(payments(api, alice).payments) == []


def test_more_than_remaining_after_payments_refused(api, alice):
    create(api, alice)
    pay(api, alice, "110000.00")
    err = pay_error(api, alice, "5500000.00")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "5390000.00" in err.details()
    assert outstanding(api, alice).outstanding_balance == "5390000.00"


@pytest.mark.parametrize("amount", ["110000.00", "0.01", "5500000.00"])
def test_paying_paid_off_loan_refused(api, alice, amount):
    create(api, alice)
    pay(api, alice, "5500000.00")
    err = pay_error(api, alice, amount)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "paid off" in err.details()
    assert len(payments(api, alice).payments) == 1
    assert outstanding(api, alice).outstanding_balance == "0.00"


@pytest.mark.parametrize(
    "amount",
    [
        "",
        "abc",
        "-110000",
        "-110000.00",
        "0",
        "0.00",
        "0.001",
        "110000.001",
        "110000.000",
        "1e5",
        "1E5",
        " 110000",
        "110000 ",
        "110,000",
        "110_000",
        "+110000",
        "110000.",
        ".5",
        "NaN",
        "Infinity",
        "0x1AD B0",
        "١١٠٠٠٠",
        "99999999999999999999",
        "9" * 40,
        "1" + "0" * 30 + ".00",
    ],
)
def test_malformed_amount(api, alice, amount):
    create(api, alice)
    assert_invalid(pay_error(api, alice, amount), "amount")
    assert list(payments(api, alice).payments) == []


@pytest.mark.parametrize("request_id", ["has space", "x" * 129, "é", "a/b", "a\x00b"])
def test_malformed_request_id(api, alice, request_id):
    create(api, alice)
    assert_invalid(pay_error(api, alice, "110000.00", request_id=request_id), "request_id")


@pytest.mark.parametrize("request_id", ["x" * 128, "a.b_c:d-e", str(uuid.uuid4())])
def test_valid_request_ids(api, alice, request_id):
    create(api, alice)
    assert pay(api, alice, "110000.00", request_id=request_id).request_id == request_id


def test_pay_malformed_loan_id_and_unknown_loan(api, alice):
    assert_invalid(pay_error(api, alice, "110000.00", loan_id=""), "loan_id")
    assert_invalid(pay_error(api, alice, "110000.00", loan_id="a b"), "loan_id")
    err = pay_error(api, alice, "110000.00", loan_id="nope")
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_pay_another_users_loan_not_found(api, alice):
    bob, _tokens, _user = api.register_and_login()
    create(api, alice)
    err = pay_error(api, bob, "110000.00")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert outstanding(api, alice).paid_amount == "0.00"


# -- MakePayment: idempotency ----------------------------------------------------


def test_retry_returns_identical_payment_and_records_nothing(api, alice):
    create(api, alice)
    original = pay(api, alice, "110000.00", request_id="req-1")
    assert original.request_id == "req-1"
    for _ in range(3):
        retry = pay(api, alice, "110000.00", request_id="req-1")
        assert retry == original
    # A retry with an equivalent spelling of the amount is the same request.
    assert pay(api, alice, "110000", request_id="req-1") == original
    ledger = payments(api, alice).payments
    assert list(ledger) == [original]
    out = assert_balanced(api, alice)
    assert (out.outstanding_balance, out.installments_paid) == ("5390000.00", 1)


def test_retry_after_later_payments_returns_original(api, alice):
    create(api, alice)
    original = pay(api, alice, "110000.00", request_id="req-1")
    pay(api, alice, "110000.00", request_id="req-2")
    retry = pay(api, alice, "110000.00", request_id="req-1")
    assert retry == original
    assert retry.outstanding_balance == "5390000.00"
    assert outstanding(api, alice).outstanding_balance == "5280000.00"
    assert len(payments(api, alice).payments) == 2


def test_retry_of_payoff_after_paid_off(api, alice):
    create(api, alice)
    original = pay(api, alice, "5500000.00", request_id="payoff")
    assert pay(api, alice, "5500000.00", request_id="payoff") == original
    assert len(payments(api, alice).payments) == 1


def test_same_request_id_other_amount_already_exists(api, alice):
    create(api, alice)
    pay(api, alice, "110000.00", request_id="req-1")
    err = pay_error(api, alice, "220000.00", request_id="req-1")
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert len(payments(api, alice).payments) == 1
    assert outstanding(api, alice).installments_paid == 1


def test_same_request_id_other_loan_already_exists(api, alice):
    create(api, alice, loan_id="L1")
    create(api, alice, loan_id="L2")
    pay(api, alice, "110000.00", loan_id="L1", request_id="req-1")
    err = pay_error(api, alice, "110000.00", loan_id="L2", request_id="req-1")
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert list(payments(api, alice, loan_id="L2").payments) == []
    assert outstanding(api, alice, "L2").paid_amount == "0.00"


def test_request_ids_are_per_user(api, alice):
    bob, _tokens, _user = api.register_and_login()
    create(api, alice)
    create(api, bob)
    mine = pay(api, alice, "110000.00", request_id="shared-id")
    theirs = pay(api, bob, "220000.00", request_id="shared-id")
    assert mine.payment_id != theirs.payment_id
    assert (theirs.first_week, theirs.last_week) == (1, 2)
    assert outstanding(api, alice).paid_amount == "110000.00"
    assert outstanding(api, bob).paid_amount == "220000.00"


def test_refused_payment_does_not_consume_request_id(api, alice):
    create(api, alice)
    err = pay_error(api, alice, "50000.00", request_id="req-1")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    payment = pay(api, alice, "110000.00", request_id="req-1")
    assert (payment.first_week, payment.last_week) == (1, 1)


def test_payments_without_request_id_are_not_deduplicated(api, alice):
    create(api, alice)
    first = pay(api, alice, "110000.00")
    second = pay(api, alice, "110000.00")
    assert first.payment_id != second.payment_id
    assert (second.first_week, second.last_week) == (2, 2)
    assert outstanding(api, alice).installments_paid == 2


# -- ListPayments --------------------------------------------------------------


def test_list_payments_empty(api, alice):
    create(api, alice)
    page = payments(api, alice)
    assert list(page.payments) == [] and page.next_page_token == ""


def test_list_payments_order_and_pages(api, alice):
    create(api, alice)
    made = [
        pay(api, alice, "110000.00", request_id="a"),
        pay(api, alice, "220000.00"),
        pay(api, alice, "110000.00", request_id="c"),
        pay(api, alice, "330000.00"),
        pay(api, alice, "110000.00"),
    ]
    assert [(p.first_week, p.last_week) for p in made] == [(1, 1), (2, 3), (4, 4), (5, 7), (8, 8)]
    everything = payments(api, alice)
    assert list(everything.payments) == made
    assert everything.next_page_token == ""
    collected, token, pages = [], "", 0
    while True:
        page = payments(api, alice, page_size=2, page_token=token)
        pages += 1
        assert len(page.payments) <= 2
        collected.extend(page.payments)
        token = page.next_page_token
        if not token:
            break
    assert collected == made
    assert pages == 3
    first = payments(api, alice, page_size=2)
    assert list(first.payments) == made[:2]
    assert [p.outstanding_balance for p in collected] == [
        "5390000.00",
        "5170000.00",
        "5060000.00",
        "4730000.00",
        "4620000.00",
    ]


def test_list_payments_only_of_that_loan(api, alice):
    create(api, alice, loan_id="L1")
    create(api, alice, loan_id="L2", principal="2000000")
    p1 = pay(api, alice, "110000.00", loan_id="L1")
    p2 = pay(api, alice, "44000.00", loan_id="L2")
    assert list(payments(api, alice, "L1").payments) == [p1]
    assert list(payments(api, alice, "L2").payments) == [p2]


def test_list_payments_errors(api, alice):
    bob, _tokens, _user = api.register_and_login()
    create(api, alice, loan_id="L1")
    create(api, alice, loan_id="L2")
    create(api, bob, loan_id="L1")
    for _ in range(3):
        pay(api, alice, "110000.00", loan_id="L1")
        pay(api, alice, "110000.00", loan_id="L2")
        pay(api, bob, "110000.00", loan_id="L1")
    token = payments(api, alice, "L1", page_size=1).next_page_token
    assert token

    def list_error(metadata, loan_id="L1", page_size=1, page_token=""):
        return call_error(
            api.billing.ListPayments,
            billing_pb2.ListPaymentsRequest(loan_id=loan_id, page_size=page_size, page_token=page_token),
            metadata=metadata,
        )

    assert_invalid(list_error(alice, page_size=-1), "page_size")
    assert_invalid(list_error(alice, page_token="garbage"), "page_token")
    assert_invalid(list_error(alice, page_token=tamper(token)), "page_token")
    assert_invalid(list_error(alice, loan_id="L2", page_token=token), "page_token")  # other loan
    assert_invalid(list_error(bob, page_token=token), "page_token")  # other user, same loan_id
    loans_token = api.billing.ListLoans(
        billing_pb2.ListLoansRequest(page_size=1), metadata=alice
    ).next_page_token
    assert loans_token
    assert_invalid(list_error(alice, page_token=loans_token), "page_token")
    assert list_error(alice, loan_id="nope").code() == grpc.StatusCode.NOT_FOUND
    assert list_error(bob, loan_id="L2").code() == grpc.StatusCode.NOT_FOUND
    assert_invalid(list_error(alice, loan_id="a b"), "loan_id")
    # The genuine token works and continues after the first payment.
    page = payments(api, alice, "L1", page_size=1, page_token=token)
    assert (page.payments[0].first_week, page.payments[0].last_week) == (2, 2)


def test_list_payments_large_page_size_is_capped_not_refused(api, alice):
    create(api, alice)
    pay(api, alice, "110000.00")
    page = payments(api, alice, page_size=2**31 - 1)
    assert len(page.payments) == 1 and page.next_page_token == ""


def test_list_payments_default_page_size(api, alice):
    create(api, alice, principal="6000", term_weeks=60, interest_rate="0")  # 100.00 a week
    made = [pay(api, alice, "100.00") for _ in range(51)]
    page = payments(api, alice, page_size=0)
    assert list(page.payments) == made[:50]
    assert page.next_page_token
    rest = payments(api, alice, page_size=0, page_token=page.next_page_token)
    assert list(rest.payments) == made[50:]
    assert rest.next_page_token == ""


def test_final_installment_smaller_than_weekly(api, alice):
    loan = create(api, alice, principal="100", term_weeks=3, interest_rate="0.1")
    assert (loan.weekly_payment, loan.final_payment, loan.total_amount) == ("36.67", "36.66", "110.00")
    err = pay_error(api, alice, "110.01")  # three regular installments exceed the total
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    first = pay(api, alice, "73.34")
    assert (first.first_week, first.last_week, first.outstanding_balance) == (1, 2, "36.66")
    err = pay_error(api, alice, "36.67")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "36.66" in err.details()
    last = pay(api, alice, "36.66")
    assert (last.first_week, last.last_week, last.outstanding_balance) == (3, 3, "0.00")
    assert get(api, alice).state == billing_pb2.LOAN_STATE_PAID_OFF


# == MakePayment and ListPayments on BillingCore, without gRPC ===========================


def check_invariants(env: Env, owner: int, loan_id: str) -> None:
    loan = env.billing.get_loan(owner, loan_id)
    terms = loan.terms
    payments = all_payments(env, owner, loan_id)
    row = Loan.get((Loan.owner == owner) & (Loan.loan_id == loan_id))
    stored = list(Payment.select().where(Payment.loan == row.id).order_by(Payment.id))

    assert [p.payment_id for p in payments] == [p.payment_id for p in stored]
    assert sum(p.amount_cents for p in stored) == loan.paid_cents
    assert loan.outstanding_cents + loan.paid_cents == terms.total_cents
    assert loan.outstanding_cents == terms.outstanding_cents(loan.paid_weeks)
    assert sum(p.last_week - p.first_week + 1 for p in stored) == loan.paid_weeks
    assert loan.is_paid_off == (loan.paid_weeks == terms.term_weeks)
    assert row.second_unpaid_due_date == terms.second_unpaid_due_date(loan.paid_weeks)

    # payments cover consecutive weeks from 1, each for exactly its installments
    week, running = 1, 0
    for p in payments:
        assert p.first_week == week
        assert p.amount_cents == sum(terms.installment_cents(w) for w in range(p.first_week, p.last_week + 1))
        running += p.amount_cents
        assert p.outstanding_after_cents == terms.total_cents - running
        week = p.last_week + 1
    assert week == loan.paid_weeks + 1

    schedule = env.billing.get_schedule(owner, loan_id)
    assert schedule.loan_id == loan_id
    assert schedule.total_cents == terms.total_cents
    assert [i.week for i in schedule.installments] == list(range(1, terms.term_weeks + 1))
    assert sum(i.due_cents for i in schedule.installments) == terms.total_cents
    by_week = {w: p for p in payments for w in range(p.first_week, p.last_week + 1)}
    for inst in schedule.installments:
        assert inst.paid == (inst.week <= loan.paid_weeks)
        assert inst.due_date == START_DATE + dt.timedelta(days=7 * inst.week)
        assert inst.due_cents == terms.installment_cents(inst.week)
        if inst.paid:
            assert inst.payment_id == by_week[inst.week].payment_id
            assert inst.payment_time_us == by_week[inst.week].payment_time_us
        else:
            assert inst.payment_id is None and inst.payment_time_us is None


def test_pay_one_catch_up_ahead_and_payoff(env, owner):
    env.billing.create_loan(actor_of(owner), "odd", "1000001", start_date=START)
    p1 = env.billing.make_payment(actor_of(owner), "odd", "22000.02")
    assert (p1.loan_id, p1.amount_cents, p1.first_week, p1.last_week) == ("odd", 2_200_002, 1, 1)
    assert p1.outstanding_after_cents == 107_800_108
    assert p1.request_id is None
    p2 = env.billing.make_payment(actor_of(owner), "odd", "66000.06")
    assert (p2.first_week, p2.last_week, p2.outstanding_after_cents) == (2, 4, 101_200_102)
    with pytest.raises(PaymentNotAccepted):
        env.billing.make_payment(actor_of(owner), "odd", format_cents(2_200_002 * 46))  # not the payoff
    p3 = env.billing.make_payment(actor_of(owner), "odd", "1012001.02")
    assert (p3.first_week, p3.last_week, p3.outstanding_after_cents) == (5, 50, 0)
    loan = env.billing.get_loan(owner, "odd")
    assert loan.is_paid_off and loan.outstanding_cents == 0 and loan.paid_cents == 110_000_110
    with pytest.raises(FailedPrecondition) as info:
        env.billing.make_payment(actor_of(owner), "odd", "22000.12")
    assert "paid off" in info.value.message
    check_invariants(env, owner, "odd")


def test_refused_payment_names_accepted_amounts(database_url):
    e = make_env(database_url, FixedClock(START_DATE + dt.timedelta(days=15)))
    try:
        o = e.new_owner()
        e.billing.create_loan(actor_of(o), "L1", "5000000", start_date=START)
        with pytest.raises(PaymentNotAccepted) as info:
            e.billing.make_payment(actor_of(o), "L1", "50000")
        message = info.value.message
        assert "one installment is 110000.00" in message
        assert "all 2 overdue installments are 220000.00" in message
        assert "the full payoff is 5500000.00" in message
    finally:
        close_database(e.db)


@pytest.mark.parametrize("amount", ["", "0", "0.00", "-110000", "110000.001", "1e5", " 110000", "x" * 100])
def test_malformed_amount_is_invalid_argument(env, owner, amount):
    env.billing.create_loan(actor_of(owner), "L1", "5000000", start_date=START)
    before = snapshot(env, owner, "L1")
    with pytest.raises(InvalidArgument) as info:
        env.billing.make_payment(actor_of(owner), "L1", amount)
    assert info.value.field == "amount"
    assert snapshot(env, owner, "L1") == before


def test_absurdly_large_amount_is_invalid_argument(env, owner):
    env.billing.create_loan(actor_of(owner), "L1", "5000000", start_date=START)
    with pytest.raises(InvalidArgument) as info:
        env.billing.make_payment(actor_of(owner), "L1", "2000000000000.01")
    assert info.value.field == "amount"
    with pytest.raises(PaymentNotAccepted):  # large but well-formed: over the balance
        env.billing.make_payment(actor_of(owner), "L1", "2000000000000.00")


def test_payment_on_missing_loan_is_not_found(env, owner):
    with pytest.raises(NotFound):
        env.billing.make_payment(actor_of(owner), "nope", "1.00")


def test_request_id_retry_returns_original_payment(env, owner):
    env.billing.create_loan(actor_of(owner), "L1", "5000000", start_date=START)
    first = env.billing.make_payment(actor_of(owner), "L1", "110000.00", request_id="r-1")
    assert first.request_id == "r-1"
    for amount in ("110000.00", "110000", "110000.0"):
        again = env.billing.make_payment(actor_of(owner), "L1", amount, request_id="r-1")
        assert again == first
    assert env.billing.get_loan(owner, "L1").paid_weeks == 1
    assert len(all_payments(env, owner, "L1")) == 1
    check_invariants(env, owner, "L1")


def test_request_id_reuse_with_other_amount_or_loan_is_already_exists(env, owner):
    env.billing.create_loan(actor_of(owner), "L1", "5000000", start_date=START)
    env.billing.create_loan(actor_of(owner), "L2", "5000000", start_date=START)
    env.billing.make_payment(actor_of(owner), "L1", "110000.00", request_id="r-1")
    before = (snapshot(env, owner, "L1"), snapshot(env, owner, "L2"))
    with pytest.raises(AlreadyExists):
        env.billing.make_payment(actor_of(owner), "L1", "220000.00", request_id="r-1")
    with pytest.raises(AlreadyExists):
        env.billing.make_payment(actor_of(owner), "L2", "110000.00", request_id="r-1")
    assert (snapshot(env, owner, "L1"), snapshot(env, owner, "L2")) == before


def test_request_id_retry_after_payoff_returns_original(env, owner):
    env.billing.create_loan(actor_of(owner), "L1", "100", start_date=START, term_weeks=2)
    payoff = env.billing.make_payment(actor_of(owner), "L1", "110.00", request_id="payoff")
    assert payoff.outstanding_after_cents == 0
    assert env.billing.make_payment(actor_of(owner), "L1", "110.00", request_id="payoff") == payoff
    with pytest.raises(FailedPrecondition):
        env.billing.make_payment(actor_of(owner), "L1", "55.00", request_id="after")


def test_core_refused_payment_does_not_consume_request_id(env, owner):
    env.billing.create_loan(actor_of(owner), "L1", "5000000", start_date=START)
    with pytest.raises(PaymentNotAccepted):
        env.billing.make_payment(actor_of(owner), "L1", "1.00", request_id="r-9")
    p = env.billing.make_payment(actor_of(owner), "L1", "110000.00", request_id="r-9")
    assert (p.first_week, p.last_week) == (1, 1)


def test_invalid_request_id(env, owner):
    env.billing.create_loan(actor_of(owner), "L1", "5000000", start_date=START)
    for bad in ("a b", "x" * 129, "é"):
        with pytest.raises(InvalidArgument) as info:
            env.billing.make_payment(actor_of(owner), "L1", "110000.00", request_id=bad)
        assert info.value.field == "request_id"
    assert env.billing.get_loan(owner, "L1").paid_weeks == 0


def test_list_payments_pages_and_token_is_bound_to_the_loan(env, owner):
    env.billing.create_loan(actor_of(owner), "L1", "5000000", start_date=START)
    env.billing.create_loan(actor_of(owner), "L2", "5000000", start_date=START)
    ids = [env.billing.make_payment(actor_of(owner), "L1", "110000.00").payment_id for _ in range(5)]
    page = env.billing.list_payments(owner, "L1", page_size=2)
    assert [p.payment_id for p in page.items] == ids[:2] and page.next_page_token
    page2 = env.billing.list_payments(owner, "L1", page_size=2, page_token=page.next_page_token)
    assert [p.payment_id for p in page2.items] == ids[2:4]
    page3 = env.billing.list_payments(owner, "L1", page_size=2, page_token=page2.next_page_token)
    assert [p.payment_id for p in page3.items] == ids[4:] and page3.next_page_token == ""
    with pytest.raises(InvalidArgument):
        env.billing.list_payments(owner, "L2", page_size=2, page_token=page.next_page_token)
    with pytest.raises(InvalidArgument):
        env.billing.list_loans(owner, page_token=page.next_page_token)


# == payment sequences over the database, against an independent oracle (hypothesis) =====


# "next" (k of the next installments) is drawn most often so that loans live long enough to see
# refusals, retries and reuse at many different points; "payoff" ends a loan early.
_KINDS = ["next"] * 5 + [
    "far_next",
    "payoff",
    "over",
    "off_by",
    "random",
    "malformed",
    "malformed",
    "retry",
    "retry",
    "reuse_other_amount",
]
_MALFORMED = ["0", "-1", "1.001", "abc", "", "1e3", "9" * 40, " 1", "0.00"]
ops = st.tuples(st.sampled_from(_KINDS), st.integers(0, 10**9))


def _decode(kind: str, raw: int):
    if kind == "next":
        return "next", 1 + raw % 3
    if kind == "far_next":
        return "next", 1 + raw % 80
    if kind == "over":
        return "over", 1 + raw % 1000
    if kind == "off_by":
        return "off_by", [-1, 1, 7][raw % 3]
    if kind == "random":
        return "random", max(1, raw)
    if kind == "malformed":
        return "malformed", _MALFORMED[raw % len(_MALFORMED)]
    return kind, raw


@settings(
    max_examples=30,
    deadline=None,
    # One database for every example (each gets a new owner): the fixture is shared on purpose.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(
    principal=st.one_of(st.integers(1, 10**9), st.integers(10**5, 10**9)),
    rate=st.integers(0, 10_000),
    term=st.one_of(st.integers(1, 60), st.integers(20, 60)),
    steps=st.lists(ops, min_size=5, max_size=30),
    as_of_days=st.lists(st.integers(-5, 7 * 60 + 10), min_size=1, max_size=3),
)
def test_payment_sequences_over_the_database(env, principal, rate, term, steps, as_of_days):
    installments = _oracle(principal, rate, term)
    e = env  # one database; every example gets an owner (and so a loan "L") of its own
    o = e.new_owner()
    rate_text = f"{rate // 10_000}.{rate % 10_000:04d}"
    if installments is None:
        with pytest.raises(InvalidArgument):
            e.billing.create_loan(actor_of(o), "L", format_cents(principal), START, term, rate_text)
        return
    loan = e.billing.create_loan(actor_of(o), "L", format_cents(principal), START, term, rate_text)
    assert [loan.terms.installment_cents(w) for w in range(1, term + 1)] == installments
    paid_weeks = paid_cents = 0
    accepted: list[tuple[str, object]] = []  # (request_id, payment view)
    for index, (raw_kind, raw) in enumerate(steps):
        kind, value = _decode(raw_kind, raw)
        remaining = term - paid_weeks
        prefix, running = {}, 0
        for k in range(1, remaining + 1):
            running += installments[paid_weeks + k - 1]
            prefix.setdefault(running, k)
        outstanding = sum(installments[paid_weeks:])
        before = snapshot(e, o, "L")
        request_id = f"req-{index}"
        if kind in ("retry", "reuse_other_amount"):
            if not accepted:
                continue
            key, original = accepted[value % len(accepted)]
            if kind == "retry":
                again = e.billing.make_payment(actor_of(o), "L", format_cents(original.amount_cents), key)
                assert again == original
            else:
                with pytest.raises(AlreadyExists):
                    e.billing.make_payment(actor_of(o), "L", format_cents(original.amount_cents + 1), key)
            assert snapshot(e, o, "L") == before
            continue
        if kind == "malformed":
            with pytest.raises(InvalidArgument):
                e.billing.make_payment(actor_of(o), "L", value, request_id)
            assert snapshot(e, o, "L") == before
            continue
        if kind == "next":
            amount = sum(installments[paid_weeks : paid_weeks + value]) or installments[-1]
        elif kind == "payoff":
            amount = outstanding or installments[-1]
        elif kind == "over":
            amount = outstanding + value
        elif kind == "off_by":
            amount = max(1, installments[min(paid_weeks, term - 1)] + value)
        else:
            amount = value
        if remaining and amount in prefix:
            payment = e.billing.make_payment(actor_of(o), "L", format_cents(amount), request_id)
            k = prefix[amount]
            assert (payment.first_week, payment.last_week) == (paid_weeks + 1, paid_weeks + k)
            assert payment.amount_cents == amount
            paid_weeks += k
            paid_cents += amount
            assert payment.outstanding_after_cents == sum(installments) - paid_cents
            accepted.append((request_id, payment))
        else:
            with pytest.raises(FailedPrecondition):
                e.billing.make_payment(actor_of(o), "L", format_cents(amount), request_id)
            assert snapshot(e, o, "L") == before
        view = e.billing.get_loan(o, "L")
        assert (view.paid_weeks, view.paid_cents) == (paid_weeks, paid_cents)
        check_invariants(e, o, "L")

    event(f"accepted payments: {min(len(accepted), 5)}{'+' if len(accepted) >= 5 else ''}")
    view = e.billing.get_loan(o, "L")
    event("paid off" if view.is_paid_off else "active")
    assert view.outstanding_cents + view.paid_cents == sum(installments)
    assert view.is_paid_off == (paid_weeks == term)
    check_invariants(e, o, "L")
    for day in as_of_days:
        as_of = START_DATE + dt.timedelta(days=day)
        standing = e.delinquency.get_delinquency(o, "L", as_of=as_of.isoformat()).standing
        # Every payment here is valued today: it counts as of today and later only.
        counted = paid_weeks if as_of >= today() else 0
        missed = [w for w in range(counted + 1, term + 1) if START_DATE + dt.timedelta(days=7 * w) < as_of]
        assert standing.missed_payments == len(missed)
        assert standing.overdue_cents == sum(installments[w - 1] for w in missed)
        assert standing.is_delinquent == (len(missed) >= 2)
        listed = [v.loan_id for v in e.delinquency.list_delinquent(o, as_of=as_of.isoformat()).items]
        assert listed == (["L"] if len(missed) >= 2 else [])


def _oracle(principal: int, rate: int, term: int) -> list[int] | None:
    """Installments per DESIGN.md in integer arithmetic written independently of the core."""
    # total = principal * (1 + rate/10000), half-up to cents
    num = principal * (10_000 + rate)
    total, rem = divmod(num, 10_000)
    if 2 * rem >= 10_000:
        total += 1
    weekly, rem = divmod(total, term)
    if 2 * rem >= term:
        weekly += 1
    final = total - weekly * (term - 1)
    if weekly < 1 or final < 1:
        return None
    return [weekly] * (term - 1) + [final]
