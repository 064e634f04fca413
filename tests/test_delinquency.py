"""Delinquency: GetDelinquencyStatus and ListDelinquentLoans over real gRPC, then on BillingCore.

The standing as of a date counts payments by their value date (DESIGN.md
section 5): these tests judge loans as of dates in 2026, so their payments
are collections an operator records, valued on the loan's start date (as if
the borrower had paid ahead on day one). Value dates themselves, reversals
and history have their own tests in test_servicing.py.
"""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from helpers import actor_of, assert_invalid, call_error, grant_operator, jwt_payload, tamper, today
from lending.v1 import billing_pb2

from lending_grpc.core.errors import InvalidArgument
from lending_grpc.core.money import format_cents

START = dt.date(2026, 1, 5)  # installment k due START + 7k: 01-12, 01-19, 01-26, 02-02, ...


def create(api, metadata, loan_id="L1", principal="5000000", start_date=START, **kwargs):
    if isinstance(start_date, dt.date):
        start_date = start_date.isoformat()
    return api.billing.CreateLoan(
        billing_pb2.CreateLoanRequest(
            loan_id=loan_id, principal_amount=principal, start_date=start_date, **kwargs
        ),
        metadata=metadata,
    )


def _operator(api) -> tuple:
    """An operator's metadata, made once per server."""
    if not hasattr(api, "operator_metadata"):
        metadata, _tokens, user = api.register_and_login()
        grant_operator(api, user.username)
        api.operator_metadata = metadata
    return api.operator_metadata


def pay(api, metadata, amount, loan_id="L1"):
    """The borrower's payment, collected by an operator and valued on the loan's start date."""
    owner = jwt_payload(metadata[0][1].removeprefix("Bearer "))["sub"]
    start = api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id=loan_id), metadata=metadata).start_date
    return api.billing.MakePayment(
        billing_pb2.MakePaymentRequest(
            loan_id=loan_id, amount=amount, owner=owner, value_date=min(start, today().isoformat())
        ),
        metadata=_operator(api),
    )


def status(api, metadata, as_of="", loan_id="L1") -> billing_pb2.DelinquencyStatus:
    if isinstance(as_of, dt.date):
        as_of = as_of.isoformat()
    return api.billing.GetDelinquencyStatus(
        billing_pb2.GetDelinquencyStatusRequest(loan_id=loan_id, as_of=as_of), metadata=metadata
    )


def summary(s: billing_pb2.DelinquencyStatus) -> tuple:
    return (s.is_delinquent, s.missed_payments, s.overdue_amount, s.days_past_due, s.next_due_date, s.as_of)


def delinquent(
    api, metadata, as_of="", page_size=0, page_token=""
) -> billing_pb2.ListDelinquentLoansResponse:
    return api.billing.ListDelinquentLoans(
        billing_pb2.ListDelinquentLoansRequest(as_of=as_of, page_size=page_size, page_token=page_token),
        metadata=metadata,
    )


# -- GetDelinquencyStatus: due-date cut-off --------------------------------------


@pytest.mark.parametrize(
    "as_of,expected",
    [
        ("2025-12-01", (False, 0, "0.00", 0, "2026-01-12")),  # before the start
        ("2026-01-05", (False, 0, "0.00", 0, "2026-01-12")),  # the start date
        ("2026-01-11", (False, 0, "0.00", 0, "2026-01-12")),
        ("2026-01-12", (False, 0, "0.00", 0, "2026-01-12")),  # week 1 due ON as_of: not missed
        ("2026-01-13", (False, 1, "110000.00", 1, "2026-01-12")),  # due the day before: missed
        ("2026-01-19", (False, 1, "110000.00", 7, "2026-01-12")),  # week 2 due on as_of
        ("2026-01-20", (True, 2, "220000.00", 8, "2026-01-12")),  # 2 missed: delinquent
        ("2026-01-27", (True, 3, "330000.00", 15, "2026-01-12")),
        ("2026-12-21", (True, 49, "5390000.00", 343, "2026-01-12")),  # maturity date itself
        ("2026-12-22", (True, 50, "5500000.00", 344, "2026-01-12")),
        ("2030-01-01", (True, 50, "5500000.00", 1450, "2026-01-12")),
    ],
)
def test_status_by_as_of(api, alice, as_of, expected):
    create(api, alice)
    result = status(api, alice, as_of)
    assert result.loan_id == "L1"
    assert summary(result) == (*expected, as_of)


def test_status_overdue_includes_different_final_installment(api, alice):
    create(api, alice, principal="1000001")
    assert summary(status(api, alice, "2026-12-22")) == (
        True,
        50,
        "1100001.10",
        344,
        "2026-01-12",
        "2026-12-22",
    )
    assert summary(status(api, alice, "2026-12-21")) == (
        True,
        49,
        "1078000.98",
        343,
        "2026-01-12",
        "2026-12-21",
    )


def test_status_after_payment(api, alice):
    create(api, alice)
    pay(api, alice, "110000.00")
    # Week 1 paid: week 2 (due 01-19) is the first unpaid.
    assert summary(status(api, alice, "2026-01-13")) == (False, 0, "0.00", 0, "2026-01-19", "2026-01-13")
    assert summary(status(api, alice, "2026-01-20")) == (False, 1, "110000.00", 1, "2026-01-19", "2026-01-20")
    assert summary(status(api, alice, "2026-01-27")) == (True, 2, "220000.00", 8, "2026-01-19", "2026-01-27")


def test_status_paying_ahead_moves_next_due_date(api, alice):
    create(api, alice)
    pay(api, alice, "550000.00")  # weeks 1-5, valued on the start date
    # Before the start date nothing was paid yet, and nothing due.
    assert summary(status(api, alice, "2026-01-01")) == (False, 0, "0.00", 0, "2026-01-12", "2026-01-01")
    assert summary(status(api, alice, "2026-01-05")) == (False, 0, "0.00", 0, "2026-02-16", "2026-01-05")
    assert summary(status(api, alice, "2026-02-24")) == (True, 2, "220000.00", 8, "2026-02-16", "2026-02-24")


def test_status_paid_off(api, alice):
    create(api, alice)
    pay(api, alice, "5500000.00")
    for as_of in ("2026-01-05", "2026-06-01", "2030-01-01"):
        assert summary(status(api, alice, as_of)) == (False, 0, "0.00", 0, "", as_of)
    # The day before the start date (and its value date) it was not paid, and nothing was due.
    assert summary(status(api, alice, "2026-01-01")) == (False, 0, "0.00", 0, "2026-01-12", "2026-01-01")


def test_status_last_installment_only(api, alice):
    create(api, alice, principal="1000001")
    pay(api, alice, "1078000.98")  # weeks 1-49
    assert summary(status(api, alice, "2030-01-01")) == (
        False,
        1,
        "22000.12",
        1107,
        "2026-12-21",
        "2030-01-01",
    )


def test_status_default_as_of_is_today(api, alice):
    day = today()
    create(api, alice, start_date=day - dt.timedelta(days=30))  # weeks 1-4 due before today
    result = status(api, alice)
    if result.as_of != day.isoformat():  # midnight in Jakarta passed during the test
        day = today()
    assert result.as_of == day.isoformat()
    start = dt.date.fromisoformat(get_loan(api, alice).start_date)
    missed = ((day - start).days - 1) // 7
    assert result.missed_payments == missed
    assert result.is_delinquent is True
    assert result.next_due_date == (start + dt.timedelta(days=7)).isoformat()
    assert result.days_past_due == (day - start).days - 7


def get_loan(api, metadata, loan_id="L1"):
    return api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id=loan_id), metadata=metadata)


@pytest.mark.parametrize(
    "days_ago,missed",
    [(0, 0), (7, 0), (8, 1), (14, 1), (15, 2), (22, 3)],
)
def test_status_relative_to_today(api, alice, days_ago, missed):
    day = today()
    create(api, alice, start_date=day - dt.timedelta(days=days_ago))
    result = status(api, alice, day)
    assert result.missed_payments == missed
    assert result.is_delinquent is (missed >= 2)
    assert result.overdue_amount == f"{110000 * missed}.00"


def test_catching_up_makes_loan_current(api, alice):
    day = today()
    create(api, alice, start_date=day - dt.timedelta(days=30))
    before = status(api, alice, day)
    assert summary(before) == (
        True,
        4,
        "440000.00",
        23,
        (day - dt.timedelta(days=23)).isoformat(),
        day.isoformat(),
    )
    # Paying only part of the overdue installments leaves one missed: no longer delinquent.
    pay(api, alice, "330000.00")
    partial = status(api, alice, day)
    assert summary(partial) == (
        False,
        1,
        "110000.00",
        2,
        (day - dt.timedelta(days=2)).isoformat(),
        day.isoformat(),
    )
    pay(api, alice, "110000.00")
    after = status(api, alice, day)
    assert summary(after) == (False, 0, "0.00", 0, (day + dt.timedelta(days=5)).isoformat(), day.isoformat())


def test_catching_up_in_one_payment(api, alice):
    day = today()
    create(api, alice, start_date=day - dt.timedelta(days=30))
    pay(api, alice, "440000.00")
    assert summary(status(api, alice, day)) == (
        False,
        0,
        "0.00",
        0,
        (day + dt.timedelta(days=5)).isoformat(),
        day.isoformat(),
    )


@pytest.mark.parametrize(
    "as_of",
    [
        "2026-13-01",
        "2026-02-30",
        "2026-00-01",
        "26-01-01",
        "2026-1-1",
        "2026/01/20",
        "20260120",
        "today",
        " 2026-01-20",
    ],
)
def test_status_malformed_as_of(api, alice, as_of):
    create(api, alice)
    err = call_error(
        api.billing.GetDelinquencyStatus,
        billing_pb2.GetDelinquencyStatusRequest(loan_id="L1", as_of=as_of),
        metadata=alice,
    )
    assert_invalid(err, "as_of")


def test_status_not_found_and_malformed_loan_id(api, alice):
    bob, _tokens, _user = api.register_and_login()
    create(api, alice)
    for metadata, loan_id in ((bob, "L1"), (alice, "L9")):
        err = call_error(
            api.billing.GetDelinquencyStatus,
            billing_pb2.GetDelinquencyStatusRequest(loan_id=loan_id, as_of="2026-02-01"),
            metadata=metadata,
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
    err = call_error(
        api.billing.GetDelinquencyStatus,
        billing_pb2.GetDelinquencyStatusRequest(loan_id="a b"),
        metadata=alice,
    )
    assert_invalid(err, "loan_id")


def test_status_of_term_one_loan(api, alice):
    create(api, alice, principal="100", term_weeks=1, interest_rate="0")
    assert summary(status(api, alice, "2027-01-01")) == (False, 1, "100.00", 354, "2026-01-12", "2027-01-01")


# -- ListDelinquentLoans --------------------------------------------------------

AS_OF = "2026-03-10"


def portfolio(api, alice):
    """Alice's loans, judged as of 2026-03-10."""
    create(api, alice, loan_id="A", start_date="2026-01-05")  # 9 missed, 57 days past due
    create(api, alice, loan_id="B", start_date="2026-02-02")  # 5 missed, 29 days
    create(api, alice, loan_id="C", start_date="2026-01-19")  # 7 missed, 43 days
    create(api, alice, loan_id="current", start_date="2026-03-03")  # due on as_of: 0 missed
    create(api, alice, loan_id="one-missed", start_date="2026-03-02")  # 1 missed
    create(api, alice, loan_id="paid", start_date="2025-06-02")
    pay(api, alice, "5500000.00", loan_id="paid")
    create(api, alice, loan_id="caught-up", start_date="2026-01-05")
    pay(api, alice, "990000.00", loan_id="caught-up")  # weeks 1-9
    create(api, alice, loan_id="future", start_date="2026-06-01")


def test_list_delinquent_most_overdue_first(api, alice):
    portfolio(api, alice)
    page = delinquent(api, alice, AS_OF)
    assert [s.loan_id for s in page.loans] == ["A", "C", "B"]
    assert page.next_page_token == ""
    assert [summary(s) for s in page.loans] == [
        (True, 9, "990000.00", 57, "2026-01-12", AS_OF),
        (True, 7, "770000.00", 43, "2026-01-26", AS_OF),
        (True, 5, "550000.00", 29, "2026-02-09", AS_OF),
    ]
    for item in page.loans:
        assert item == status(api, alice, AS_OF, loan_id=item.loan_id)


def test_list_delinquent_only_callers_loans(api, alice):
    bob, _tokens, _user = api.register_and_login()
    portfolio(api, alice)
    create(api, bob, loan_id="bobs", start_date="2025-01-06")
    create(api, bob, loan_id="A", start_date="2026-03-09")  # same id as alice's, not delinquent
    assert [s.loan_id for s in delinquent(api, bob, AS_OF).loans] == ["bobs"]
    assert [s.loan_id for s in delinquent(api, alice, AS_OF).loans] == ["A", "C", "B"]
    carol, _tokens, _user = api.register_and_login()
    empty = delinquent(api, carol, AS_OF)
    assert list(empty.loans) == [] and empty.next_page_token == ""


def test_list_delinquent_cut_off_dates(api, alice):
    create(api, alice)
    assert list(delinquent(api, alice, "2026-01-19").loans) == []  # 1 missed
    (item,) = delinquent(api, alice, "2026-01-20").loans
    assert summary(item) == (True, 2, "220000.00", 8, "2026-01-12", "2026-01-20")


def test_list_delinquent_after_catching_up(api, alice):
    create(api, alice)
    assert len(delinquent(api, alice, "2026-02-01").loans) == 1
    pay(api, alice, "220000.00")  # 3 were due before 02-01; one is still missed
    assert list(delinquent(api, alice, "2026-02-01").loans) == []
    pay(api, alice, "5280000.00")
    assert list(delinquent(api, alice, "2030-01-01").loans) == []


def test_list_delinquent_default_as_of_is_today(api, alice):
    day = today()
    create(api, alice, loan_id="late", start_date=day - dt.timedelta(days=30))
    create(api, alice, loan_id="fine", start_date=day - dt.timedelta(days=8))
    page = delinquent(api, alice)
    (item,) = page.loans
    assert item.loan_id == "late"
    assert item.as_of in {day.isoformat(), today().isoformat()}
    assert item.missed_payments == 4


def test_list_delinquent_paginates(api, alice):
    portfolio(api, alice)
    first = delinquent(api, alice, AS_OF, page_size=2)
    assert [s.loan_id for s in first.loans] == ["A", "C"]
    assert first.next_page_token
    # Continuing with the same as_of.
    second = delinquent(api, alice, AS_OF, page_size=2, page_token=first.next_page_token)
    assert [s.loan_id for s in second.loans] == ["B"]
    assert second.next_page_token == ""
    # Continuing with an empty as_of keeps the token's as_of.
    second_empty = delinquent(api, alice, "", page_size=2, page_token=first.next_page_token)
    assert list(second_empty.loans) == list(second.loans)
    assert second_empty.loans[0].as_of == AS_OF
    one_by_one, token = [], ""
    while True:
        page = delinquent(api, alice, AS_OF, page_size=1, page_token=token)
        assert len(page.loans) <= 1
        one_by_one.extend(s.loan_id for s in page.loans)
        token = page.next_page_token
        if not token:
            break
    assert one_by_one == ["A", "C", "B"]


def test_list_delinquent_token_bound_to_as_of(api, alice):
    portfolio(api, alice)
    token = delinquent(api, alice, AS_OF, page_size=1).next_page_token
    assert token
    err = call_error(
        api.billing.ListDelinquentLoans,
        billing_pb2.ListDelinquentLoansRequest(as_of="2026-03-11", page_size=1, page_token=token),
        metadata=alice,
    )
    assert_invalid(err, "as_of")


def test_list_delinquent_bad_requests(api, alice):
    bob, _tokens, _user = api.register_and_login()
    portfolio(api, alice)
    create(api, bob, loan_id="x", start_date="2025-01-06")
    create(api, bob, loan_id="y", start_date="2025-01-06")
    token = delinquent(api, alice, AS_OF, page_size=1).next_page_token
    bob_token = delinquent(api, bob, AS_OF, page_size=1).next_page_token
    loans_token = api.billing.ListLoans(
        billing_pb2.ListLoansRequest(page_size=1), metadata=alice
    ).next_page_token
    assert token and bob_token and loans_token

    def list_error(metadata=alice, as_of=AS_OF, page_size=1, page_token=""):
        return call_error(
            api.billing.ListDelinquentLoans,
            billing_pb2.ListDelinquentLoansRequest(as_of=as_of, page_size=page_size, page_token=page_token),
            metadata=metadata,
        )

    assert_invalid(list_error(page_size=-1), "page_size")
    for as_of in ("2026-13-01", "2026-02-30", "26-01-01", "2026/03/10", "now"):
        assert_invalid(list_error(as_of=as_of), "as_of")
    for forged in (
        "garbage",
        token + "x",
        tamper(token),
        loans_token,
    ):
        assert_invalid(list_error(page_token=forged), "page_token")
    assert_invalid(list_error(metadata=bob, page_token=token), "page_token")
    assert_invalid(list_error(metadata=alice, page_token=bob_token), "page_token")


def test_list_delinquent_page_size_default_and_cap(api, alice):
    for i in range(3):
        create(api, alice, loan_id=f"L{i}", start_date="2025-01-06")
    assert len(delinquent(api, alice, AS_OF, page_size=0).loans) == 3
    assert len(delinquent(api, alice, AS_OF, page_size=2**31 - 1).loans) == 3


def test_list_delinquent_paginates_through_ties(api, alice):
    names = ["t1", "t2", "t3", "t4", "t5"]
    for name in names:
        create(api, alice, loan_id=name, start_date="2026-01-05")
    create(api, alice, loan_id="older", start_date="2025-12-29")
    seen, token = [], ""
    while True:
        page = delinquent(api, alice, AS_OF, page_size=2, page_token=token)
        seen.extend(s.loan_id for s in page.loans)
        token = page.next_page_token
        if not token:
            break
    assert seen[0] == "older"
    assert sorted(seen[1:]) == names
    assert len(seen) == 6


def test_list_delinquent_default_page_size(api, alice):
    for i in range(51):
        create(api, alice, loan_id=f"D{i:02d}", principal="1000", start_date="2025-01-06")
    page = delinquent(api, alice, AS_OF)
    assert [s.loan_id for s in page.loans] == [f"D{i:02d}" for i in range(50)]
    assert page.next_page_token
    rest = delinquent(api, alice, "", page_token=page.next_page_token)
    assert [s.loan_id for s in rest.loans] == ["D50"]
    assert rest.next_page_token == ""


# == delinquency on BillingCore, without gRPC ============================================


def test_delinquency_and_portfolio_query(env, owner):
    # as of 2026-01-27 (day 22): installments 1-3 are due before it
    for loan_id, weeks_paid in (("A", 0), ("B", 1), ("C", 2), ("D", 3), ("E", 50)):
        env.billing.create_loan(actor_of(owner), loan_id, "5000000", start_date=START.isoformat())
        if weeks_paid:  # valued on the start date: it counts as of every date after it
            env.billing.make_payment(
                actor_of(owner), loan_id, format_cents(11_000_000 * weeks_paid), value_date=START.isoformat()
            )
    # F started a week later: installments 1-2 due before 2026-01-27 (day 15)
    env.billing.create_loan(actor_of(owner), "F", "5000000", start_date="2026-01-12")

    a = env.delinquency.get_delinquency(owner, "A", as_of="2026-01-27").standing
    assert (a.missed_payments, a.overdue_cents, a.days_past_due, a.is_delinquent) == (3, 33_000_000, 15, True)
    assert a.next_due_date == dt.date(2026, 1, 12)
    b = env.delinquency.get_delinquency(owner, "B", as_of="2026-01-27").standing
    assert (b.missed_payments, b.overdue_cents, b.days_past_due, b.is_delinquent) == (2, 22_000_000, 8, True)
    c = env.delinquency.get_delinquency(owner, "C", as_of="2026-01-27").standing
    assert (c.missed_payments, c.days_past_due, c.is_delinquent) == (1, 1, False)
    d = env.delinquency.get_delinquency(owner, "D", as_of="2026-01-27").standing
    assert (d.missed_payments, d.is_delinquent, d.next_due_date) == (0, False, dt.date(2026, 2, 2))
    e = env.delinquency.get_delinquency(owner, "E", as_of="2026-01-27").standing
    assert (e.missed_payments, e.is_delinquent, e.next_due_date) == (0, False, None)
    f = env.delinquency.get_delinquency(owner, "F", as_of="2026-01-27").standing
    assert (f.missed_payments, f.days_past_due, f.is_delinquent) == (2, 8, True)
    # installment due ON as_of is not missed
    f = env.delinquency.get_delinquency(owner, "F", as_of="2026-01-26").standing
    assert (f.missed_payments, f.is_delinquent) == (1, False)

    listed, token = [], ""
    while True:
        page = env.delinquency.list_delinquent(owner, as_of="2026-01-27", page_size=1, page_token=token)
        listed.extend(page.items)
        token = page.next_page_token
        if not token:
            break
    assert [v.loan_id for v in listed] == ["A", "B", "F"]  # most overdue first
    assert [v.standing.missed_payments for v in listed] == [3, 2, 2]

    # B catches up both missed installments and becomes current
    env.billing.make_payment(actor_of(owner), "B", "220000.00", value_date="2026-01-27")
    b = env.delinquency.get_delinquency(owner, "B", as_of="2026-01-27").standing
    assert (b.missed_payments, b.is_delinquent) == (0, False)
    assert [v.loan_id for v in env.delinquency.list_delinquent(owner, as_of="2026-01-27").items] == ["A", "F"]


def test_list_delinquent_token_is_bound_to_its_as_of(env, owner):
    for loan_id in ("A", "B"):
        env.billing.create_loan(actor_of(owner), loan_id, "5000000", start_date=START.isoformat())
    page = env.delinquency.list_delinquent(owner, as_of="2026-03-01", page_size=1)
    assert [v.loan_id for v in page.items] == ["A"] and page.next_page_token
    with pytest.raises(InvalidArgument) as info:
        env.delinquency.list_delinquent(
            owner, as_of="2026-03-02", page_size=1, page_token=page.next_page_token
        )
    assert info.value.field == "as_of"
    rest = env.delinquency.list_delinquent(owner, page_size=1, page_token=page.next_page_token)
    assert [v.loan_id for v in rest.items] == ["B"]
    assert rest.items[0].standing.as_of == dt.date(2026, 3, 1)
