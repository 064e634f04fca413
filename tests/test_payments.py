"""MakePayment, GetOutstanding and ListPayments over real gRPC."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from decimal import Decimal

import grpc
import pytest
from helpers import (
    assert_balanced,
    assert_invalid,
    call_error,
    create,
    get,
    outstanding,
    pay,
    payments,
    tamper,
    today,
)
from lending.v1 import billing_pb2


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
