"""Hypothesis properties of the billing rules, checked against an independent Decimal oracle."""

from __future__ import annotations

import datetime as dt
import decimal
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lending_grpc.core.errors import FailedPrecondition, InvalidArgument, PaymentNotAccepted
from lending_grpc.core.money import (
    format_cents,
    format_rate,
    parse_money,
    parse_rate,
    round_half_up_div,
)
from lending_grpc.core.schedule import (
    MAX_PRINCIPAL_CENTS,
    MAX_TOTAL_CENTS,
    LoanTerms,
    delinquency,
    weeks_paid_by,
)

PURE = settings(max_examples=300, deadline=None)

principals = st.one_of(
    st.integers(1, 2_000),  # small enough to hit the sub-cent installment rule
    st.integers(1, 10**8),
    st.integers(1, MAX_PRINCIPAL_CENTS),
    st.sampled_from([1, MAX_PRINCIPAL_CENTS, 500_000_000, 200_000_000, 100_000_100]),
)
rates = st.one_of(st.integers(0, 10_000), st.sampled_from([0, 1, 1000, 5000, 9999, 10_000]))
weeks = st.one_of(st.integers(1, 520), st.sampled_from([1, 2, 50, 52, 519, 520]))
starts = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2999, 12, 31))


def oracle_installments(principal: int, rate: int, term: int) -> list[int] | None:
    """The installments per DESIGN.md, computed with Decimal; None when the terms must be refused."""
    with decimal.localcontext() as ctx:
        ctx.prec = 80
        total = (Decimal(principal) * (1 + Decimal(rate) / Decimal(10_000))).quantize(
            Decimal(1), rounding=ROUND_HALF_UP
        )
        weekly = (total / Decimal(term)).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        final = total - weekly * (term - 1)
    if weekly < 1 or final < 1:
        return None
    return [int(weekly)] * (term - 1) + [int(final)]


@st.composite
def valid_terms(draw) -> LoanTerms:
    principal, rate, term = draw(principals), draw(rates), draw(weeks)
    assume(oracle_installments(principal, rate, term) is not None)
    return LoanTerms.build(principal, rate, term, draw(starts))


# -- terms ---------------------------------------------------------------------


@PURE
@given(principal=principals, rate=rates, term=weeks, start=starts)
def test_terms_match_oracle_and_installments_sum_to_total(principal, rate, term, start):
    expected = oracle_installments(principal, rate, term)
    if expected is None:
        with pytest.raises(InvalidArgument) as info:
            LoanTerms.build(principal, rate, term, start)
        assert info.value.field == "principal_amount"
        return
    terms = LoanTerms.build(principal, rate, term, start)
    installments = [terms.installment_cents(w) for w in range(1, term + 1)]
    assert installments == expected
    assert sum(installments) == terms.total_cents
    assert terms.weekly_cents >= 1 and terms.final_cents >= 1
    assert abs(terms.final_cents - terms.weekly_cents) < term
    # half-up rounding of total / term bounds the drift by half a cent per week
    assert 2 * abs(terms.final_cents - terms.weekly_cents) <= term
    assert terms.outstanding_cents(0) == terms.total_cents
    assert terms.outstanding_cents(term) == 0
    assert terms.maturity_date == start + dt.timedelta(days=7 * term)


@PURE
@given(principal=st.integers(1, 20_000), rate=rates, term=weeks, start=starts)
def test_sub_cent_installments_are_refused_exactly_when_oracle_says(principal, rate, term, start):
    expected = oracle_installments(principal, rate, term)
    try:
        terms = LoanTerms.build(principal, rate, term, start)
    except InvalidArgument:
        assert expected is None
    else:
        assert expected is not None
        assert (terms.weekly_cents, terms.final_cents) == (expected[0], expected[-1])


@PURE
@given(terms=valid_terms(), data=st.data())
def test_cents_for_next_is_sum_of_installments(terms, data):
    paid = data.draw(st.integers(0, terms.term_weeks - 1))
    count = data.draw(st.integers(1, terms.term_weeks - paid))
    expected = sum(terms.installment_cents(w) for w in range(paid + 1, paid + count + 1))
    assert terms.cents_for_next(paid, count) == expected
    assert terms.outstanding_cents(paid) == sum(
        terms.installment_cents(w) for w in range(paid + 1, terms.term_weeks + 1)
    )


@PURE
@given(terms=valid_terms(), week=st.integers(1, 520))
def test_due_date_is_start_plus_seven_k_days(terms, week):
    assume(week <= terms.term_weeks)
    assert terms.due_date(week) == terms.start_date + dt.timedelta(days=7 * week)
    assert (terms.due_date(week) - terms.start_date).days % 7 == 0


# -- payments --------------------------------------------------------------------

actions = st.one_of(
    st.tuples(st.just("next"), st.integers(1, 8)),
    st.tuples(st.just("next"), st.integers(1, 520)),
    st.tuples(st.just("payoff"), st.just(0)),
    st.tuples(st.just("over"), st.integers(1, 10**6)),
    st.tuples(st.just("off_by"), st.sampled_from([-1, 1, -100, 100])),
    st.tuples(st.just("random"), st.integers(1, 2 * MAX_PRINCIPAL_CENTS)),
    st.tuples(st.just("small"), st.integers(1, 10**6)),
)


@settings(max_examples=300, deadline=None)
@given(terms=valid_terms(), steps=st.lists(actions, max_size=25), today_offset=st.integers(-30, 4000))
def test_payment_sequences_keep_outstanding_plus_paid_equal_total(terms, steps, today_offset):
    installments = [terms.installment_cents(w) for w in range(1, terms.term_weeks + 1)]
    today = terms.start_date + dt.timedelta(days=today_offset)
    paid_weeks = 0
    paid_cents = 0
    for kind, value in steps:
        remaining = terms.term_weeks - paid_weeks
        prefix = {}  # amount -> weeks it pays
        running = 0
        for k in range(1, remaining + 1):
            running += installments[paid_weeks + k - 1]
            prefix.setdefault(running, k)
        outstanding = sum(installments[paid_weeks:])
        if kind == "next":
            k = min(value, remaining) if remaining else value
            amount = sum(installments[paid_weeks : paid_weeks + k]) if remaining else installments[-1]
        elif kind == "payoff":
            amount = outstanding if remaining else terms.total_cents
        elif kind == "over":
            amount = outstanding + value
        elif kind == "off_by":
            amount = max(1, installments[min(paid_weeks, terms.term_weeks - 1)] + value)
        else:
            amount = value
        before = terms.outstanding_cents(paid_weeks)
        if remaining == 0:
            with pytest.raises(FailedPrecondition) as info:
                weeks_paid_by(terms, paid_weeks, amount, today)
            assert "paid off" in info.value.message
        elif amount in prefix:
            got = weeks_paid_by(terms, paid_weeks, amount, today)
            assert got == prefix[amount]
            paid_weeks += got
            paid_cents += amount
        else:
            with pytest.raises(PaymentNotAccepted) as info:
                weeks_paid_by(terms, paid_weeks, amount, today)
            message = info.value.message
            assert f"one installment is {format_cents(installments[paid_weeks])}" in message
            assert f"the full payoff is {format_cents(outstanding)}" in message
            missed = sum(1 for w in range(paid_weeks + 1, terms.term_weeks + 1) if terms.due_date(w) < today)
            if missed:
                overdue = format_cents(sum(installments[paid_weeks : paid_weeks + missed]))
                assert f"all {missed} overdue installment(s) are {overdue}" in message
            else:
                assert "overdue" not in message
            assert terms.outstanding_cents(paid_weeks) == before
        assert 0 <= paid_weeks <= terms.term_weeks
        assert terms.outstanding_cents(paid_weeks) + paid_cents == terms.total_cents
        assert paid_cents == sum(installments[:paid_weeks])
    if paid_weeks == terms.term_weeks:
        assert terms.outstanding_cents(paid_weeks) == 0


@PURE
@given(terms=valid_terms(), data=st.data())
def test_any_amount_is_accepted_iff_it_is_a_prefix_sum(terms, data):
    paid = data.draw(st.integers(0, terms.term_weeks - 1))
    installments = [terms.installment_cents(w) for w in range(1, terms.term_weeks + 1)]
    k = data.draw(st.integers(1, terms.term_weeks - paid))
    exact = sum(installments[paid : paid + k])
    amount = data.draw(st.sampled_from([exact, exact - 1, exact + 1, exact * 2, max(1, exact // 2)]))
    sums = {}
    running = 0
    for j in range(1, terms.term_weeks - paid + 1):
        running += installments[paid + j - 1]
        sums.setdefault(running, j)
    if amount in sums:
        assert weeks_paid_by(terms, paid, amount, terms.start_date) == sums[amount]
    else:
        with pytest.raises(PaymentNotAccepted):
            weeks_paid_by(terms, paid, amount, terms.start_date)


# -- delinquency -----------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(terms=valid_terms(), data=st.data())
def test_delinquency_matches_brute_force(terms, data):
    paid = data.draw(st.integers(0, terms.term_weeks))
    offset = data.draw(
        st.one_of(
            st.integers(-20, 7 * terms.term_weeks + 30),
            st.sampled_from([7 * (paid + 1), 7 * (paid + 1) + 1, 7 * (paid + 2), 7 * (paid + 2) + 1]),
        )
    )
    as_of = terms.start_date + dt.timedelta(days=offset)
    d = delinquency(terms, paid, as_of)

    missed_weeks = [w for w in range(paid + 1, terms.term_weeks + 1) if terms.due_date(w) < as_of]
    assert missed_weeks == list(range(paid + 1, paid + 1 + len(missed_weeks)))  # consecutive
    assert d.as_of == as_of
    assert d.missed_payments == len(missed_weeks)
    assert d.overdue_cents == sum(terms.installment_cents(w) for w in missed_weeks)
    if missed_weeks:
        assert d.days_past_due == (as_of - terms.due_date(missed_weeks[0])).days
        assert d.days_past_due >= 1
    else:
        assert d.days_past_due == 0
    if paid < terms.term_weeks:
        assert d.next_due_date == terms.due_date(paid + 1)
    else:
        assert d.next_due_date is None
    assert d.is_delinquent == (len(missed_weeks) >= 2)

    # the stored-column shortcut used by the portfolio query
    second = terms.second_unpaid_due_date(paid)
    if second is None:
        assert terms.term_weeks - paid < 2
        assert not d.is_delinquent
    else:
        assert (second < as_of) == d.is_delinquent


# -- money round trips -----------------------------------------------------------


@PURE
@given(cents=st.one_of(st.integers(1, 10_000), st.integers(1, MAX_TOTAL_CENTS)))
def test_format_then_parse_round_trips(cents):
    text = format_cents(cents)
    assert parse_money(text, "amount", max_cents=MAX_TOTAL_CENTS) == cents
    assert Decimal(text) * 100 == cents
    assert len(text.split(".")[1]) == 2


@PURE
@given(units=st.integers(0, 10**12), frac=st.text(alphabet="0123456789", max_size=2))
def test_parse_then_format_is_canonical(units, frac):
    text = f"{units}.{frac}" if frac else str(units)
    expected = int(Decimal(text) * 100)
    if expected == 0:
        with pytest.raises(InvalidArgument):
            parse_money(text, "amount", max_cents=MAX_TOTAL_CENTS)
        return
    cents = parse_money(text, "amount", max_cents=MAX_TOTAL_CENTS)
    assert cents == expected
    assert Decimal(format_cents(cents)) == Decimal(text)


@PURE
@given(
    text=st.one_of(
        st.text(alphabet="0123456789.-+eE, _\n\t\u0661\uff11", max_size=40),
        st.text(max_size=40),
    )
)
def test_parse_money_only_accepts_plain_decimals(text):
    try:
        cents = parse_money(text, "amount", max_cents=MAX_TOTAL_CENTS)
    except InvalidArgument as exc:
        assert exc.field == "amount"
        return
    # accepted: it must be a plain ASCII decimal with at most two fraction digits
    units, _, frac = text.partition(".")
    assert units and all(c in "0123456789" for c in units)
    assert len(frac) <= 2 and all(c in "0123456789" for c in frac)
    assert cents == int(Decimal(text) * 100) > 0


@PURE
@given(scaled=st.integers(0, 10_000))
def test_rate_round_trips(scaled):
    text = format_rate(scaled)
    assert parse_rate(text, "interest_rate") == scaled
    assert Decimal(text) * 10_000 == scaled


@PURE
@given(numerator=st.integers(0, 10**30), denominator=st.integers(1, 10**6))
def test_round_half_up_div_matches_decimal(numerator, denominator):
    with decimal.localcontext() as ctx:
        ctx.prec = 100
        expected = (Decimal(numerator) / Decimal(denominator)).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    assert round_half_up_div(numerator, denominator) == int(expected)
