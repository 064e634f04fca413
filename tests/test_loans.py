"""Loans: CreateLoan, GetLoan, ListLoans and GetSchedule over real gRPC, then on BillingCore; page tokens."""

from __future__ import annotations

import base64
import datetime as dt
import time
from decimal import Decimal

import grpc
import pytest
from grpc_status import rpc_status
from helpers import (
    START,
    START_DATE,
    FixedClock,
    actor_of,
    assert_invalid,
    call_error,
    get,
    list_loans,
    make_env,
    pay,
    today,
    violated_fields,
)
from lending.v1 import billing_pb2

from lending_grpc.core import pagination
from lending_grpc.core.errors import AlreadyExists, InvalidArgument
from lending_grpc.core.pagination import PageTokens
from lending_grpc.core.storage.database import close_database


def create(api, metadata, loan_id="L1", principal="5000000", **kwargs) -> billing_pb2.Loan:
    return api.billing.CreateLoan(
        billing_pb2.CreateLoanRequest(loan_id=loan_id, principal_amount=principal, **kwargs),
        metadata=metadata,
    )


def create_error(api, metadata, loan_id="L1", principal="5000000", **kwargs) -> grpc.RpcError:
    return call_error(
        api.billing.CreateLoan,
        billing_pb2.CreateLoanRequest(loan_id=loan_id, principal_amount=principal, **kwargs),
        metadata=metadata,
    )


# -- CreateLoan: figures -------------------------------------------------------


@pytest.mark.parametrize(
    "principal,principal_out,total,weekly,final",
    [
        ("5000000", "5000000.00", "5500000.00", "110000.00", "110000.00"),
        ("5000000.00", "5000000.00", "5500000.00", "110000.00", "110000.00"),
        ("2000000", "2000000.00", "2200000.00", "44000.00", "44000.00"),
        ("1000001.00", "1000001.00", "1100001.10", "22000.02", "22000.12"),
    ],
)
def test_worked_examples(api, alice, principal, principal_out, total, weekly, final):
    before = time.time()
    loan = create(api, alice, principal=principal, start_date="2026-01-05")
    after = time.time()
    assert loan.loan_id == "L1"
    assert loan.principal_amount == principal_out
    assert loan.interest_rate == "0.10"
    assert loan.term_weeks == 50
    assert loan.total_amount == total
    assert loan.weekly_payment == weekly
    assert loan.final_payment == final
    assert loan.outstanding_balance == total
    assert loan.paid_amount == "0.00"
    assert loan.installments_paid == 0
    assert loan.start_date == "2026-01-05"
    assert loan.maturity_date == "2026-12-21"  # 2026-01-05 + 350 days
    assert loan.state == billing_pb2.LOAN_STATE_ACTIVE
    assert before - 1 <= loan.create_time.seconds <= after + 1
    assert Decimal(weekly) * 49 + Decimal(final) == Decimal(total)
    assert get(api, alice) == loan


def test_defaults(api, alice):
    day_before = today()
    loan = create(api, alice, principal="2000000")
    day_after = today()
    assert loan.term_weeks == 50
    assert loan.interest_rate == "0.10"
    assert loan.start_date in {day_before.isoformat(), day_after.isoformat()}
    start = dt.date.fromisoformat(loan.start_date)
    assert loan.maturity_date == (start + dt.timedelta(days=350)).isoformat()
    assert (loan.total_amount, loan.weekly_payment, loan.final_payment) == (
        "2200000.00",
        "44000.00",
        "44000.00",
    )


def test_empty_start_date_means_today(api, alice):
    day_before = today()
    loan = create(api, alice, start_date="")
    assert loan.start_date in {day_before.isoformat(), today().isoformat()}


@pytest.mark.parametrize(
    "principal,term,rate,rate_out,total,weekly,final",
    [
        ("1000", 12, "0.125", "0.125", "1125.00", "93.75", "93.75"),
        ("1000", 7, "0.1234", "0.1234", "1123.40", "160.49", "160.46"),
        ("1000", 1, "1", "1.00", "2000.00", "2000.00", "2000.00"),
        ("1000", 520, "0", "0.00", "1000.00", "1.92", "3.52"),
        ("1.00", 8, "0", "0.00", "1.00", "0.13", "0.09"),  # 0.125 rounds half up to 0.13
        ("0.15", 1, "0.10", "0.10", "0.17", "0.17", "0.17"),  # 0.165 rounds half up to 0.17
        ("0.01", 1, "0.10", "0.10", "0.01", "0.01", "0.01"),  # 0.011 rounds to 0.01
        ("100", 3, "0.1", "0.10", "110.00", "36.67", "36.66"),
        ("100", 3, "0.5000", "0.50", "150.00", "50.00", "50.00"),
        ("1000000000000", 50, "0.10", "0.10", "1100000000000.00", "22000000000.00", "22000000000.00"),
        ("1000000000000.00", 520, "1", "1.00", "2000000000000.00", "3846153846.15", "3846153848.15"),
    ],
)
def test_custom_terms(api, alice, principal, term, rate, rate_out, total, weekly, final):
    loan = create(
        api, alice, principal=principal, term_weeks=term, interest_rate=rate, start_date="2026-03-02"
    )
    assert loan.term_weeks == term
    assert loan.interest_rate == rate_out
    assert (loan.total_amount, loan.weekly_payment, loan.final_payment) == (total, weekly, final)
    assert Decimal(weekly) * (term - 1) + Decimal(final) == Decimal(total)
    assert loan.maturity_date == (dt.date(2026, 3, 2) + dt.timedelta(days=7 * term)).isoformat()


@pytest.mark.parametrize("loan_id", ["a", "A" * 64, "loan.2026_01-x", "0", "-._"])
def test_valid_loan_ids(api, alice, loan_id):
    assert create(api, alice, loan_id=loan_id).loan_id == loan_id
    assert get(api, alice, loan_id).loan_id == loan_id


def test_loan_ids_are_per_owner(api, alice):
    bob, _tokens, _user = api.register_and_login()
    mine = create(api, alice, principal="5000000")
    theirs = create(api, bob, principal="2000000")
    assert mine.total_amount == "5500000.00"
    assert theirs.total_amount == "2200000.00"
    assert get(api, alice).total_amount == "5500000.00"
    assert get(api, bob).total_amount == "2200000.00"


def test_loan_ids_are_case_sensitive(api, alice):
    create(api, alice, loan_id="abc", principal="1000")
    other = create(api, alice, loan_id="ABC", principal="2000")
    assert other.principal_amount == "2000.00"
    assert get(api, alice, "abc").principal_amount == "1000.00"


# -- CreateLoan: idempotency ---------------------------------------------------


def test_create_same_terms_returns_existing(api, alice):
    first = create(
        api, alice, principal="5000000", start_date="2026-01-05", term_weeks=50, interest_rate="0.10"
    )
    again = create(
        api, alice, principal="5000000.00", start_date="2026-01-05", term_weeks=50, interest_rate="0.1"
    )
    assert again == first
    assert len(api.billing.ListLoans(billing_pb2.ListLoansRequest(), metadata=alice).loans) == 1


def test_create_omitted_terms_are_not_compared(api, alice):
    first = create(api, alice, principal="1000", start_date="2025-06-02", term_weeks=12, interest_rate="0.25")
    # start_date, term_weeks and interest_rate left out: not compared with the stored ones.
    again = create(api, alice, principal="1000")
    assert again == first
    assert again.start_date == "2025-06-02"
    assert again.term_weeks == 12
    assert again.interest_rate == "0.25"
    assert create(api, alice, principal="1000", term_weeks=12) == first
    assert create(api, alice, principal="1000", interest_rate="0.2500") == first
    assert create(api, alice, principal="1000", start_date="2025-06-02") == first


def test_create_returns_current_state_of_existing_loan(api, alice):
    create(api, alice, principal="5000000", start_date="2026-01-05")
    pay(api, alice, "110000.00")
    again = create(api, alice, principal="5000000", start_date="2026-01-05")
    assert again.outstanding_balance == "5390000.00"
    assert again.installments_paid == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"principal": "5000000.01"},
        {"start_date": "2026-01-06"},
        {"term_weeks": 49},
        {"interest_rate": "0.11"},
        {"interest_rate": "0"},
    ],
)
def test_create_different_terms_already_exists(api, alice, changes):
    original = create(
        api, alice, principal="5000000", start_date="2026-01-05", term_weeks=50, interest_rate="0.10"
    )
    request = {"principal": "5000000", "start_date": "2026-01-05", "term_weeks": 50, "interest_rate": "0.10"}
    request.update(changes)
    err = create_error(api, alice, **request)
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "L1" in err.details()
    assert get(api, alice) == original


# -- CreateLoan: validation ----------------------------------------------------


@pytest.mark.parametrize(
    "principal",
    [
        "",
        "abc",
        "-5",
        "0",
        "0.00",
        "0.001",
        "1.234",
        "1e6",
        " 5",
        "5 ",
        "1,000",
        "+5",
        "1.",
        ".5",
        "5.0.0",
        "0x10",
        "NaN",
        "Infinity",
        "١٢٣",
        "1000000000000.01",
        "1000000000001",
        "99999999999999999999999999999999999999",
    ],
)
def test_create_malformed_principal(api, alice, principal):
    assert_invalid(create_error(api, alice, principal=principal), "principal_amount")


@pytest.mark.parametrize("loan_id", ["", "a b", "a/b", "A" * 65, "é", "loan#1", "a\x00b", "a:b"])
def test_create_malformed_loan_id(api, alice, loan_id):
    assert_invalid(create_error(api, alice, loan_id=loan_id), "loan_id")


@pytest.mark.parametrize(
    "start_date",
    [
        "2026-13-01",
        "2026-02-30",
        "2026-00-10",
        "26-01-01",
        "2026-1-01",
        "2026/01/01",
        "20260101",
        "2026-01-01T00:00:00",
        " 2026-01-01",
        "today",
        "1899-12-31",
        "3000-01-01",
    ],
)
def test_create_malformed_start_date(api, alice, start_date):
    assert_invalid(create_error(api, alice, start_date=start_date), "start_date")


@pytest.mark.parametrize("start_date", ["1900-01-01", "2999-12-31", "2024-02-29"])
def test_create_start_date_bounds(api, alice, start_date):
    assert create(api, alice, start_date=start_date).start_date == start_date


@pytest.mark.parametrize("term", [-1, -50, 521, 100000])
def test_create_bad_term_weeks(api, alice, term):
    assert_invalid(create_error(api, alice, term_weeks=term), "term_weeks")


@pytest.mark.parametrize("term", [1, 520])
def test_create_term_weeks_bounds(api, alice, term):
    loan = create(api, alice, term_weeks=term)
    assert loan.term_weeks == term


@pytest.mark.parametrize(
    "rate", ["1.01", "1.0001", "2", "0.12345", "-0.1", "abc", "0,1", "1e-1", ".1", "10%", " 0.1"]
)
def test_create_bad_interest_rate(api, alice, rate):
    assert_invalid(create_error(api, alice, interest_rate=rate), "interest_rate")


@pytest.mark.parametrize(
    "principal,term,rate",
    [
        ("0.01", 50, "0.10"),  # total 0.01 over 50 weeks
        ("0.10", 520, "0"),
        ("1.50", 100, "0"),  # weekly 0.02 (1.5 rounded up), final 1.50 - 0.02*99 < 0
    ],
)
def test_create_installment_below_a_cent(api, alice, principal, term, rate):
    err = create_error(api, alice, principal=principal, term_weeks=term, interest_rate=rate)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = violated_fields(err)
    assert len(fields) == 1 and fields[0] in {"principal_amount", "term_weeks"}
    assert fields[0] in err.details()
    assert list(api.billing.ListLoans(billing_pb2.ListLoansRequest(), metadata=alice).loans) == []


def test_create_names_every_bad_field_at_once(api, alice):
    """A form with five mistakes is fixed in one round trip, not five (AIP-193's BadRequest)."""
    err = call_error(
        api.billing.CreateLoan,
        billing_pb2.CreateLoanRequest(
            loan_id="bad id",
            principal_amount="-5",
            term_weeks=9999,
            interest_rate="ten percent",
            start_date="2026-02-30",
        ),
        metadata=alice,
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == [
        "loan_id",
        "principal_amount",
        "term_weeks",
        "interest_rate",
        "start_date",
    ]
    assert err.details().startswith("loan_id: ") and "; start_date: " in err.details()
    assert list(api.billing.ListLoans(billing_pb2.ListLoansRequest(), metadata=alice).loans) == []


# -- GetLoan -------------------------------------------------------------------


def test_get_loan_of_another_user_is_not_found_like_missing(api, alice):
    bob, _tokens, _user = api.register_and_login()
    missing = call_error(api.billing.GetLoan, billing_pb2.GetLoanRequest(loan_id="L1"), metadata=bob)
    create(api, alice)
    foreign = call_error(api.billing.GetLoan, billing_pb2.GetLoanRequest(loan_id="L1"), metadata=bob)
    assert missing.code() == foreign.code() == grpc.StatusCode.NOT_FOUND
    assert missing.details() == foreign.details()
    assert rpc_status.from_call(missing) == rpc_status.from_call(foreign)


@pytest.mark.parametrize("loan_id", ["", "a b", "A" * 65, "é"])
def test_get_loan_malformed_id(api, alice, loan_id):
    err = call_error(api.billing.GetLoan, billing_pb2.GetLoanRequest(loan_id=loan_id), metadata=alice)
    assert_invalid(err, "loan_id")


def test_get_loan_after_payments(api, alice):
    create(api, alice, principal="1000001", start_date="2026-01-05")
    pay(api, alice, "44000.04")
    loan = get(api, alice)
    assert loan.paid_amount == "44000.04"
    assert loan.outstanding_balance == "1056001.06"
    assert loan.installments_paid == 2
    assert loan.state == billing_pb2.LOAN_STATE_ACTIVE
    pay(api, alice, "1056001.06")
    loan = get(api, alice)
    assert loan.paid_amount == "1100001.10"
    assert loan.outstanding_balance == "0.00"
    assert loan.installments_paid == 50
    assert loan.state == billing_pb2.LOAN_STATE_PAID_OFF


# -- ListLoans -----------------------------------------------------------------


def test_list_loans_empty(api, alice):
    page = list_loans(api, alice)
    assert list(page.loans) == []
    assert page.next_page_token == ""


def test_list_loans_pages_oldest_first(api, alice):
    created = [create(api, alice, loan_id=name, principal="1000") for name in ("zeta", "alpha", "mid")]
    first = list_loans(api, alice, page_size=2)
    assert [loan.loan_id for loan in first.loans] == ["zeta", "alpha"]
    assert first.next_page_token != ""
    second = list_loans(api, alice, page_size=2, page_token=first.next_page_token)
    assert [loan.loan_id for loan in second.loans] == ["mid"]
    assert second.next_page_token == ""
    assert list(first.loans) + list(second.loans) == created
    # Exactly filling the page: the token of the last full page may lead to an empty page.
    exact = list_loans(api, alice, page_size=3)
    assert list(exact.loans) == created
    if exact.next_page_token:
        tail = list_loans(api, alice, page_size=3, page_token=exact.next_page_token)
        assert list(tail.loans) == [] and tail.next_page_token == ""
    everything = list_loans(api, alice, page_size=0)
    assert list(everything.loans) == created
    assert everything.next_page_token == ""


def test_list_loans_shows_only_own_loans(api, alice):
    bob, _tokens, _user = api.register_and_login()
    create(api, alice, loan_id="A1")
    create(api, bob, loan_id="B1")
    create(api, alice, loan_id="A2")
    assert [loan.loan_id for loan in list_loans(api, alice).loans] == ["A1", "A2"]
    assert [loan.loan_id for loan in list_loans(api, bob).loans] == ["B1"]


def test_list_loans_reflects_payments(api, alice):
    create(api, alice, start_date="2026-01-05")
    pay(api, alice, "5500000.00")
    (loan,) = list_loans(api, alice).loans
    assert loan.state == billing_pb2.LOAN_STATE_PAID_OFF
    assert loan.outstanding_balance == "0.00"
    assert loan == get(api, alice)


@pytest.mark.parametrize("page_size", [-1, -500])
def test_list_loans_negative_page_size(api, alice, page_size):
    err = call_error(api.billing.ListLoans, billing_pb2.ListLoansRequest(page_size=page_size), metadata=alice)
    assert_invalid(err, "page_size")


# 501 loans created back to back would exceed one user's rate limit, which is not under test here.
@pytest.mark.settings(rate_limit_user_per_second=0)
def test_list_loans_default_and_maximum_page_size(api, alice):
    for i in range(501):
        create(api, alice, loan_id=f"L{i:03d}", principal="1000")
    default = list_loans(api, alice, page_size=0)
    assert len(default.loans) == 50
    assert [loan.loan_id for loan in default.loans] == [f"L{i:03d}" for i in range(50)]
    assert default.next_page_token
    capped = list_loans(api, alice, page_size=100000)
    assert len(capped.loans) == 500
    assert capped.next_page_token
    rest = list_loans(api, alice, page_size=100000, page_token=capped.next_page_token)
    assert [loan.loan_id for loan in rest.loans] == ["L500"]
    assert rest.next_page_token == ""
    exact = list_loans(api, alice, page_size=501)
    assert len(exact.loans) == 500


def _flip(text: str, index: int) -> str:
    char = text[index]
    return text[:index] + ("A" if char != "A" else "B") + text[index + 1 :]


def test_list_loans_forged_and_tampered_tokens(api, alice):
    for name in ("a", "b", "c"):
        create(api, alice, loan_id=name, principal="1000")
    token = list_loans(api, alice, page_size=1).next_page_token
    assert token
    payload, signature = token.split(".")
    forged_payload = base64.urlsafe_b64encode(b'{"id":0}').rstrip(b"=").decode()
    candidates = [
        "garbage",
        "a.b",
        "...",
        token + "x",
        _flip(token, 0),
        _flip(token, token.index(".") + 1),  # first signature character
        f"{forged_payload}.{signature}",
        f"{payload}.",
        f".{signature}",
        "é" + token,
        "x" * 600,
    ]
    for candidate in candidates:
        err = call_error(
            api.billing.ListLoans,
            billing_pb2.ListLoansRequest(page_size=1, page_token=candidate),
            metadata=alice,
        )
        assert_invalid(err, "page_token")
    # The genuine token still works.
    assert [loan.loan_id for loan in list_loans(api, alice, page_size=1, page_token=token).loans] == ["b"]


def test_list_loans_token_of_another_user(api, alice):
    bob, _tokens, _user = api.register_and_login()
    for name in ("a", "b"):
        create(api, alice, loan_id=name, principal="1000")
        create(api, bob, loan_id=name, principal="1000")
    alice_token = list_loans(api, alice, page_size=1).next_page_token
    err = call_error(
        api.billing.ListLoans, billing_pb2.ListLoansRequest(page_size=1, page_token=alice_token), metadata=bob
    )
    assert_invalid(err, "page_token")


def test_list_loans_refuses_token_of_another_list(api, alice):
    create(api, alice, start_date="2026-01-05")
    for _ in range(2):
        pay(api, alice, "110000.00")
    payments_token = api.billing.ListPayments(
        billing_pb2.ListPaymentsRequest(loan_id="L1", page_size=1), metadata=alice
    ).next_page_token
    assert payments_token
    err = call_error(
        api.billing.ListLoans, billing_pb2.ListLoansRequest(page_token=payments_token), metadata=alice
    )
    assert_invalid(err, "page_token")


# -- GetSchedule ---------------------------------------------------------------


def schedule(api, metadata, loan_id="L1") -> billing_pb2.Schedule:
    return api.billing.GetSchedule(billing_pb2.GetScheduleRequest(loan_id=loan_id), metadata=metadata)


def test_schedule_of_new_loan(api, alice):
    create(api, alice, principal="5000000", start_date="2026-01-05")
    result = schedule(api, alice)
    assert result.loan_id == "L1"
    assert result.total_amount == "5500000.00"
    assert len(result.installments) == 50
    start = dt.date(2026, 1, 5)
    for k, item in enumerate(result.installments, 1):
        assert item.week == k
        assert item.due_date == (start + dt.timedelta(days=7 * k)).isoformat()
        assert item.due_amount == "110000.00"
        assert item.paid is False
        assert item.payment_id == ""
        assert not item.HasField("payment_time")
    assert result.installments[0].due_date == "2026-01-12"
    assert result.installments[-1].due_date == "2026-12-21"
    assert sum(Decimal(i.due_amount) for i in result.installments) == Decimal("5500000.00")


def test_schedule_with_different_final_installment(api, alice):
    create(api, alice, principal="1000001", start_date="2026-01-05")
    result = schedule(api, alice)
    amounts = [item.due_amount for item in result.installments]
    assert amounts == ["22000.02"] * 49 + ["22000.12"]
    assert sum(Decimal(a) for a in amounts) == Decimal("1100001.10") == Decimal(result.total_amount)


def test_schedule_short_custom_term(api, alice):
    create(api, alice, principal="100", term_weeks=3, interest_rate="0.1", start_date="2024-12-25")
    result = schedule(api, alice)
    assert [(i.week, i.due_date, i.due_amount) for i in result.installments] == [
        (1, "2025-01-01", "36.67"),
        (2, "2025-01-08", "36.67"),
        (3, "2025-01-15", "36.66"),
    ]
    assert result.total_amount == "110.00"


def test_schedule_after_payments(api, alice):
    create(api, alice, principal="1000001", start_date="2026-01-05")
    first = pay(api, alice, "44000.04", request_id="p1")
    second = pay(api, alice, "22000.02")
    result = schedule(api, alice)
    items = result.installments
    for item in items[:2]:
        assert item.paid is True
        assert item.payment_id == first.payment_id
        assert item.payment_time == first.payment_time
    assert items[2].paid is True
    assert items[2].payment_id == second.payment_id
    assert items[2].payment_time == second.payment_time
    for item in items[3:]:
        assert item.paid is False
        assert item.payment_id == ""
        assert not item.HasField("payment_time")
    payoff = pay(api, alice, "1034001.04")
    assert payoff.first_week == 4 and payoff.last_week == 50
    items = schedule(api, alice).installments
    assert all(item.paid for item in items)
    assert {item.payment_id for item in items[3:]} == {payoff.payment_id}
    assert items[-1].due_amount == "22000.12"


def test_schedule_not_found_and_malformed(api, alice):
    bob, _tokens, _user = api.register_and_login()
    create(api, alice)
    err = call_error(api.billing.GetSchedule, billing_pb2.GetScheduleRequest(loan_id="L1"), metadata=bob)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = call_error(api.billing.GetSchedule, billing_pb2.GetScheduleRequest(loan_id="nope"), metadata=alice)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = call_error(api.billing.GetSchedule, billing_pb2.GetScheduleRequest(loan_id="a b"), metadata=alice)
    assert_invalid(err, "loan_id")


def test_create_retry_omitting_term_is_not_validated_against_the_default(api, alice):
    """A 1-week loan of 0.10: the default 50 weeks would give installments below a cent, but a
    retry that leaves term_weeks out must not be judged by terms it did not ask for."""
    first = create(api, alice, loan_id="tiny", principal="0.10", term_weeks=1, start_date="2026-01-05")
    assert (first.total_amount, first.weekly_payment, first.term_weeks) == ("0.11", "0.11", 1)
    again = create(api, alice, loan_id="tiny", principal="0.10")
    assert again == first


# == CreateLoan, GetLoan and ListLoans on BillingCore, without gRPC ======================


def test_create_loan_worked_example(env, owner):
    loan = env.billing.create_loan(actor_of(owner), "L1", "5000000", start_date=START)
    t = loan.terms
    assert (t.principal_cents, t.rate_e4, t.term_weeks, t.start_date) == (500_000_000, 1000, 50, START_DATE)
    assert (t.total_cents, t.weekly_cents, t.final_cents) == (550_000_000, 11_000_000, 11_000_000)
    assert (loan.loan_id, loan.paid_weeks, loan.paid_cents, loan.outstanding_cents) == (
        "L1",
        0,
        0,
        550_000_000,
    )
    assert not loan.is_paid_off
    assert env.billing.get_loan(owner, "L1") == loan


def test_create_loan_odd_example(env, owner):
    t = env.billing.create_loan(
        actor_of(owner), "odd", "1000001.00", start_date=START, term_weeks=50, interest_rate="0.10"
    ).terms
    assert (t.total_cents, t.weekly_cents, t.final_cents) == (110_000_110, 2_200_002, 2_200_012)
    t = env.billing.create_loan(actor_of(owner), "two", "2000000.00", start_date=START).terms
    assert (t.total_cents, t.weekly_cents) == (220_000_000, 4_400_000)


def test_create_loan_defaults_start_today(database_url):
    e = make_env(database_url, FixedClock(dt.date(2027, 3, 4)))
    try:
        o = e.new_owner()
        t = e.billing.create_loan(actor_of(o), "L", "100").terms
        assert (t.start_date, t.term_weeks, t.rate_e4) == (dt.date(2027, 3, 4), 50, 1000)
    finally:
        close_database(e.db)


def test_create_loan_is_idempotent_on_loan_id(env, owner):
    first = env.billing.create_loan(actor_of(owner), "L1", "5000000.00", start_date=START)
    assert env.billing.create_loan(actor_of(owner), "L1", "5000000", start_date=START) == first
    assert env.billing.create_loan(actor_of(owner), "L1", "5000000.00") == first  # start_date left out
    assert (
        env.billing.create_loan(actor_of(owner), "L1", "5000000.00", term_weeks=50, interest_rate="0.1")
        == first
    )
    for kwargs in (
        dict(principal_amount="5000000.01"),
        dict(principal_amount="5000000", term_weeks=49),
        dict(principal_amount="5000000", interest_rate="0.11"),
        dict(principal_amount="5000000", start_date="2026-01-06"),
    ):
        with pytest.raises(AlreadyExists):
            env.billing.create_loan(actor_of(owner), "L1", **kwargs)
    assert len(env.billing.list_loans(owner).items) == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(loan_id="", principal_amount="1"), "loan_id"),
        (dict(loan_id="a/b", principal_amount="1"), "loan_id"),
        (dict(loan_id="x" * 65, principal_amount="1"), "loan_id"),
        (dict(loan_id="L", principal_amount="0"), "principal_amount"),
        (dict(loan_id="L", principal_amount="1e6"), "principal_amount"),
        (dict(loan_id="L", principal_amount="1000000000000.01"), "principal_amount"),
        (dict(loan_id="L", principal_amount="0.01", term_weeks=2), "principal_amount"),
        (dict(loan_id="L", principal_amount="100", term_weeks=521), "term_weeks"),
        (dict(loan_id="L", principal_amount="100", term_weeks=-1), "term_weeks"),
        (dict(loan_id="L", principal_amount="100", interest_rate="1.01"), "interest_rate"),
        (dict(loan_id="L", principal_amount="100", interest_rate="0.12345"), "interest_rate"),
        (dict(loan_id="L", principal_amount="100", start_date="2026-02-30"), "start_date"),
        (dict(loan_id="L", principal_amount="100", start_date="26-01-05"), "start_date"),
    ],
)
def test_create_loan_validation(env, owner, kwargs, field):
    with pytest.raises(InvalidArgument) as info:
        env.billing.create_loan(actor_of(owner), **kwargs)
    assert info.value.field == field
    assert env.billing.list_loans(owner).items == []


def test_loan_id_max_length_and_charset(env, owner):
    loan_id = "aZ09._-" + "x" * 57
    assert len(loan_id) == 64
    assert env.billing.create_loan(actor_of(owner), loan_id, "100", start_date=START).loan_id == loan_id


def test_list_loans_pages_through_everything(env, owner):
    ids = [f"L{i:02d}" for i in range(11)]
    for loan_id in ids:
        env.billing.create_loan(actor_of(owner), loan_id, "100", start_date=START)
    seen, token, pages = [], "", 0
    while True:
        page = env.billing.list_loans(owner, page_size=4, page_token=token)
        seen.extend(v.loan_id for v in page.items)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == ids and pages == 3
    with pytest.raises(InvalidArgument) as info:
        env.billing.list_loans(owner, page_size=-1)
    assert info.value.field == "page_size"


# == page sizes and page tokens, shared by every List RPC (BillingCore) ==================


def test_page_token_of_another_owner_is_refused(env, owner):
    bob = env.new_owner()
    for i in range(3):
        env.billing.create_loan(actor_of(owner), f"L{i}", "100", start_date=START)
    page = env.billing.list_loans(owner, page_size=1)
    assert [v.loan_id for v in page.items] == ["L0"] and page.next_page_token
    with pytest.raises(InvalidArgument) as info:
        env.billing.list_loans(bob, page_size=1, page_token=page.next_page_token)
    assert info.value.field == "page_token"
    with pytest.raises(InvalidArgument):
        env.billing.list_loans(owner, page_token=page.next_page_token[:-2] + "AA")


@pytest.mark.parametrize(
    ("requested", "size"),
    [(0, 50), (1, 1), (50, 50), (499, 499), (500, 500), (501, 500), (10**9, 500), (2**31 - 1, 500)],
)
def test_page_size(requested, size):
    assert pagination.page_size(requested) == size


def test_page_size_negative_is_invalid():
    with pytest.raises(InvalidArgument) as info:
        pagination.page_size(-1)
    assert info.value.field == "page_size"


def test_page_tokens_round_trip_and_binding():
    tokens = PageTokens(b"k" * 32)
    token = tokens.encode("loans|1", {"id": 7})
    assert tokens.decode(token, "loans|1") == {"id": 7}
    with pytest.raises(InvalidArgument):
        tokens.decode(token, "loans|2")
    with pytest.raises(InvalidArgument):
        PageTokens(b"z" * 32).decode(token, "loans|1")


@pytest.mark.parametrize(
    "token", ["x", "a.b", "a.b.c", ".", "!!!.!!!", "\u00e9.\u00e9", "x" * 600 + ".y", "eyJpZCI6MX0.AAAA"]
)
def test_garbage_page_tokens_are_invalid_argument(env, owner, token):
    env.billing.create_loan(actor_of(owner), "L1", "100", start_date=START)
    with pytest.raises(InvalidArgument) as info:
        env.billing.list_loans(owner, page_token=token)
    assert info.value.field == "page_token"
    with pytest.raises(InvalidArgument):
        env.billing.list_payments(owner, "L1", page_token=token)
    with pytest.raises(InvalidArgument):
        env.delinquency.list_delinquent(owner, page_token=token)
