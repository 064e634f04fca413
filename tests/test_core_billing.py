"""BillingCore over a real temporary SQLite file, without gRPC."""

from __future__ import annotations

import datetime as dt

import pytest
from helpers import START, START_DATE, Env, FixedClock, actor_of, all_payments, make_env, snapshot
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lending_grpc.core import pagination
from lending_grpc.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PaymentNotAccepted,
)
from lending_grpc.core.money import format_cents
from lending_grpc.core.pagination import PageTokens
from lending_grpc.core.storage.database import close_database
from lending_grpc.core.storage.models import Loan, Payment


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


# -- creating loans ----------------------------------------------------------------


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


# -- payments ------------------------------------------------------------------


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
        assert "all 2 overdue installment(s) are 220000.00" in message
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


# -- idempotency -----------------------------------------------------------------


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


def test_refused_payment_does_not_consume_request_id(env, owner):
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


# -- owner isolation ---------------------------------------------------------------


def test_other_owner_gets_not_found(env, owner):
    bob = env.new_owner()
    env.billing.create_loan(actor_of(owner), "L1", "5000000", start_date=START)
    env.billing.make_payment(actor_of(owner), "L1", "110000.00", request_id="r-1")
    before = snapshot(env, owner, "L1")
    with pytest.raises(NotFound):
        env.billing.get_loan(bob, "L1")
    with pytest.raises(NotFound):
        env.billing.get_schedule(bob, "L1")
    with pytest.raises(NotFound):
        env.billing.list_payments(bob, "L1")
    with pytest.raises(NotFound):
        env.billing.get_delinquency(bob, "L1", as_of="2026-06-01")
    with pytest.raises(NotFound):
        env.billing.make_payment(actor_of(bob), "L1", "110000.00")
    with pytest.raises(NotFound):
        env.billing.make_payment(actor_of(bob), "L1", "110000.00", request_id="r-1")
    assert env.billing.list_loans(bob).items == []
    assert env.billing.list_delinquent(bob, as_of="2027-01-01").items == []
    assert snapshot(env, owner, "L1") == before

    # bob's own loan with the same loan_id and request_id is independent
    bobs = env.billing.create_loan(actor_of(bob), "L1", "2000000", start_date=START)
    assert bobs.terms.total_cents == 220_000_000
    p = env.billing.make_payment(actor_of(bob), "L1", "44000.00", request_id="r-1")
    assert (p.amount_cents, p.first_week) == (4_400_000, 1)
    assert snapshot(env, owner, "L1") == before
    assert env.billing.get_loan(owner, "L1").terms.total_cents == 550_000_000


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
    ("requested", "size"), [(0, 50), (1, 1), (50, 50), (499, 499), (500, 500), (501, 500), (10**9, 500)]
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
        env.billing.list_delinquent(owner, page_token=token)


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


def test_list_delinquent_token_is_bound_to_its_as_of(env, owner):
    for loan_id in ("A", "B"):
        env.billing.create_loan(actor_of(owner), loan_id, "5000000", start_date=START)
    page = env.billing.list_delinquent(owner, as_of="2026-03-01", page_size=1)
    assert [v.loan_id for v in page.items] == ["A"] and page.next_page_token
    with pytest.raises(InvalidArgument) as info:
        env.billing.list_delinquent(owner, as_of="2026-03-02", page_size=1, page_token=page.next_page_token)
    assert info.value.field == "as_of"
    rest = env.billing.list_delinquent(owner, page_size=1, page_token=page.next_page_token)
    assert [v.loan_id for v in rest.items] == ["B"]
    assert rest.items[0].standing.as_of == dt.date(2026, 3, 1)


# -- listing and delinquency ---------------------------------------------------------


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


def test_delinquency_and_portfolio_query(env, owner):
    # as of 2026-01-27 (day 22): installments 1-3 are due before it
    for loan_id, weeks_paid in (("A", 0), ("B", 1), ("C", 2), ("D", 3), ("E", 50)):
        env.billing.create_loan(actor_of(owner), loan_id, "5000000", start_date=START)
        if weeks_paid:
            env.billing.make_payment(actor_of(owner), loan_id, format_cents(11_000_000 * weeks_paid))
    # F started a week later: installments 1-2 due before 2026-01-27 (day 15)
    env.billing.create_loan(actor_of(owner), "F", "5000000", start_date="2026-01-12")

    a = env.billing.get_delinquency(owner, "A", as_of="2026-01-27").standing
    assert (a.missed_payments, a.overdue_cents, a.days_past_due, a.is_delinquent) == (3, 33_000_000, 15, True)
    assert a.next_due_date == dt.date(2026, 1, 12)
    b = env.billing.get_delinquency(owner, "B", as_of="2026-01-27").standing
    assert (b.missed_payments, b.overdue_cents, b.days_past_due, b.is_delinquent) == (2, 22_000_000, 8, True)
    c = env.billing.get_delinquency(owner, "C", as_of="2026-01-27").standing
    assert (c.missed_payments, c.days_past_due, c.is_delinquent) == (1, 1, False)
    d = env.billing.get_delinquency(owner, "D", as_of="2026-01-27").standing
    assert (d.missed_payments, d.is_delinquent, d.next_due_date) == (0, False, dt.date(2026, 2, 2))
    e = env.billing.get_delinquency(owner, "E", as_of="2026-01-27").standing
    assert (e.missed_payments, e.is_delinquent, e.next_due_date) == (0, False, None)
    f = env.billing.get_delinquency(owner, "F", as_of="2026-01-27").standing
    assert (f.missed_payments, f.days_past_due, f.is_delinquent) == (2, 8, True)
    # installment due ON as_of is not missed
    f = env.billing.get_delinquency(owner, "F", as_of="2026-01-26").standing
    assert (f.missed_payments, f.is_delinquent) == (1, False)

    listed, token = [], ""
    while True:
        page = env.billing.list_delinquent(owner, as_of="2026-01-27", page_size=1, page_token=token)
        listed.extend(page.items)
        token = page.next_page_token
        if not token:
            break
    assert [v.loan_id for v in listed] == ["A", "B", "F"]  # most overdue first
    assert [v.standing.missed_payments for v in listed] == [3, 2, 2]

    # B catches up both missed installments and becomes current
    env.billing.make_payment(actor_of(owner), "B", "220000.00")
    b = env.billing.get_delinquency(owner, "B", as_of="2026-01-27").standing
    assert (b.missed_payments, b.is_delinquent) == (0, False)
    assert [v.loan_id for v in env.billing.list_delinquent(owner, as_of="2026-01-27").items] == ["A", "F"]


# -- sequence property over the database ----------------------------------------------

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
        standing = e.billing.get_delinquency(o, "L", as_of=as_of.isoformat()).standing
        missed = [w for w in range(paid_weeks + 1, term + 1) if START_DATE + dt.timedelta(days=7 * w) < as_of]
        assert standing.missed_payments == len(missed)
        assert standing.overdue_cents == sum(installments[w - 1] for w in missed)
        assert standing.is_delinquent == (len(missed) >= 2)
        listed = [v.loan_id for v in e.billing.list_delinquent(o, as_of=as_of.isoformat()).items]
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
