"""Exact unit tests of the repayment schedule, payments and delinquency rules (DESIGN.md section 1)."""

from __future__ import annotations

import datetime as dt

import pytest

from lending_grpc.core.errors import FailedPrecondition, InvalidArgument, PaymentNotAccepted
from lending_grpc.core.schedule import (
    LoanTerms,
    delinquency,
    weeks_paid_by,
)

START = dt.date(2026, 1, 5)


def days(n: int) -> dt.date:
    return START + dt.timedelta(days=n)


@pytest.fixture
def five_million() -> LoanTerms:
    return LoanTerms.build(500_000_000, 1000, 50, START)


@pytest.fixture
def odd() -> LoanTerms:
    """1,000,001.00 at 0.10 over 50 weeks: the final installment differs."""
    return LoanTerms.build(100_000_100, 1000, 50, START)


# -- worked examples ---------------------------------------------------------


def test_worked_example_five_million(five_million):
    t = five_million
    assert (t.principal_cents, t.rate_e4, t.term_weeks, t.start_date) == (500_000_000, 1000, 50, START)
    assert t.total_cents == 550_000_000  # 5,500,000.00
    assert t.weekly_cents == 11_000_000  # 110,000.00
    assert t.final_cents == 11_000_000  # 110,000.00
    assert [t.installment_cents(w) for w in range(1, 51)] == [11_000_000] * 50


def test_worked_example_two_million():
    t = LoanTerms.build(200_000_000, 1000, 50, START)
    assert t.total_cents == 220_000_000  # 2,200,000.00
    assert t.weekly_cents == 4_400_000  # 44,000.00
    assert t.final_cents == 4_400_000


def test_worked_example_one_million_and_one(odd):
    assert odd.total_cents == 110_000_110  # 1,100,001.10
    assert odd.weekly_cents == 2_200_002  # 22,000.02
    assert odd.final_cents == 2_200_012  # 22,000.12
    assert [odd.installment_cents(w) for w in range(1, 50)] == [2_200_002] * 49
    assert odd.installment_cents(50) == 2_200_012
    assert sum(odd.installment_cents(w) for w in range(1, 51)) == 110_000_110


# -- total and installment rounding -------------------------------------------


def test_total_rounds_half_up_not_bankers():
    # 0.15 * 1.10 = 0.165 -> 0.17 (banker's rounding would give 0.16)
    assert LoanTerms.build(15, 1000, 1, START).total_cents == 17
    # 0.03 * 1.5 = 0.045 -> 0.05 (banker's: 0.04)
    assert LoanTerms.build(3, 5000, 1, START).total_cents == 5
    # 0.01 * 1.5 = 0.015 -> 0.02
    assert LoanTerms.build(1, 5000, 1, START).total_cents == 2
    # 100.00 * 1.1234 = 112.34 exactly
    assert LoanTerms.build(10_000, 1234, 1, START).total_cents == 11_234
    # 0.01 * 1.0001 = 0.010001 -> 0.01
    assert LoanTerms.build(1, 1, 1, START).total_cents == 1
    # rate 1: doubles
    assert LoanTerms.build(12_345, 10_000, 1, START).total_cents == 24_690


def test_weekly_rounds_half_up_not_bankers():
    # 0.05 over 2 weeks: 0.025 -> 0.03, final 0.02 (banker's would give 0.02 + 0.03)
    t = LoanTerms.build(5, 0, 2, START)
    assert (t.total_cents, t.weekly_cents, t.final_cents) == (5, 3, 2)
    # 0.10 over 4 weeks: 0.025 -> 0.03, final 0.10 - 0.09 = 0.01
    t = LoanTerms.build(10, 0, 4, START)
    assert (t.total_cents, t.weekly_cents, t.final_cents) == (10, 3, 1)
    # 0.07 over 2 weeks: 0.035 -> 0.04, final 0.03
    t = LoanTerms.build(7, 0, 2, START)
    assert (t.total_cents, t.weekly_cents, t.final_cents) == (7, 4, 3)
    # 1.00 over 3 weeks: 0.333.. -> 0.33, final 0.34
    t = LoanTerms.build(100, 0, 3, START)
    assert (t.total_cents, t.weekly_cents, t.final_cents) == (100, 33, 34)
    # 2.00 over 3 weeks: 0.666.. -> 0.67, final 0.66
    t = LoanTerms.build(200, 0, 3, START)
    assert (t.total_cents, t.weekly_cents, t.final_cents) == (200, 67, 66)


def test_single_week_loan():
    t = LoanTerms.build(100_000, 1000, 1, START)
    assert (t.total_cents, t.weekly_cents, t.final_cents) == (110_000, 110_000, 110_000)
    assert t.installment_cents(1) == 110_000


def test_max_principal_max_rate_max_term():
    t = LoanTerms.build(10**14, 10_000, 520, START)
    assert t.total_cents == 2 * 10**14
    assert t.weekly_cents == 384_615_384_615  # 2e14 / 520 = 384615384615.38 -> .38 rounds down
    assert t.final_cents == 2 * 10**14 - 384_615_384_615 * 519
    assert t.final_cents == 384_615_384_815


@pytest.mark.parametrize(
    ("principal", "rate", "weeks"),
    [
        (1, 0, 2),  # 0.01 over 2: weekly 0.01 (half-up), final 0.00
        (1, 1000, 2),  # 0.01 * 1.1 = 0.011 -> 0.01 total: same
        (49, 0, 100),  # weekly 0.0049 -> 0.00
        (50, 0, 100),  # weekly 0.005 -> 0.01, final 0.50 - 0.99 < 0
        (75, 0, 50),  # weekly 0.015 -> 0.02, final 0.75 - 0.98 < 0
        (519, 0, 520),  # weekly 0.998.. -> 0.01, final 5.19 - 5.19 = 0.00
    ],
)
def test_installment_below_one_cent_is_refused(principal, rate, weeks):
    with pytest.raises(InvalidArgument) as info:
        LoanTerms.build(principal, rate, weeks, START)
    assert info.value.field == "principal_amount"
    assert "below 0.01" in info.value.description


@pytest.mark.parametrize(
    ("principal", "rate", "weeks", "weekly", "final"),
    [
        (1, 0, 1, 1, 1),
        (2, 0, 2, 1, 1),
        (100, 0, 100, 1, 1),
        (520, 0, 520, 1, 1),
        (149, 0, 100, 1, 50),  # weekly 0.0149 -> 0.01, final 1.49 - 0.99 = 0.50
    ],
)
def test_smallest_accepted_installments(principal, rate, weeks, weekly, final):
    t = LoanTerms.build(principal, rate, weeks, START)
    assert (t.weekly_cents, t.final_cents) == (weekly, final)


@pytest.mark.parametrize("weeks", [0, -1, 521, 10_000])
def test_term_weeks_out_of_range(weeks):
    with pytest.raises(InvalidArgument) as info:
        LoanTerms.build(100_000, 1000, weeks, START)
    assert info.value.field == "term_weeks"


@pytest.mark.parametrize("weeks", [1, 520])
def test_term_weeks_bounds_accepted(weeks):
    assert LoanTerms.build(100_000_000, 1000, weeks, START).term_weeks == weeks


# -- due dates -----------------------------------------------------------------


def test_due_dates_are_start_plus_seven_k_days(five_million):
    assert five_million.due_date(1) == dt.date(2026, 1, 12)
    assert five_million.due_date(2) == dt.date(2026, 1, 19)
    assert five_million.due_date(4) == dt.date(2026, 2, 2)
    assert five_million.due_date(50) == dt.date(2026, 12, 21)
    assert five_million.maturity_date == dt.date(2026, 12, 21)


def test_due_dates_across_leap_day():
    t = LoanTerms.build(1_000_000, 1000, 52, dt.date(2028, 2, 22))
    assert t.due_date(1) == dt.date(2028, 2, 29)
    assert t.due_date(2) == dt.date(2028, 3, 7)
    assert t.maturity_date == dt.date(2029, 2, 20)


def test_due_dates_across_year_end():
    t = LoanTerms.build(1_000_000, 1000, 3, dt.date(2026, 12, 20))
    assert [t.due_date(w) for w in (1, 2, 3)] == [
        dt.date(2026, 12, 27),
        dt.date(2027, 1, 3),
        dt.date(2027, 1, 10),
    ]


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (-100, 0),
        (-1, 0),
        (0, 0),
        (1, 0),
        (7, 0),  # installment 1 is due ON this day: not before it
        (8, 1),
        (14, 1),
        (15, 2),
        (350, 49),  # installment 50 due on day 350
        (351, 50),
        (10_000, 50),
    ],
)
def test_weeks_due_before(five_million, day, expected):
    assert five_million.weeks_due_before(days(day)) == expected


def test_second_unpaid_due_date(five_million):
    assert five_million.second_unpaid_due_date(0) == dt.date(2026, 1, 19)
    assert five_million.second_unpaid_due_date(1) == dt.date(2026, 1, 26)
    assert five_million.second_unpaid_due_date(48) == dt.date(2026, 12, 21)
    assert five_million.second_unpaid_due_date(49) is None
    assert five_million.second_unpaid_due_date(50) is None


# -- amounts --------------------------------------------------------------------


def test_cents_for_next_and_outstanding(odd):
    assert odd.cents_for_next(0, 1) == 2_200_002
    assert odd.cents_for_next(0, 3) == 6_600_006
    assert odd.cents_for_next(48, 2) == 4_400_014
    assert odd.cents_for_next(49, 1) == 2_200_012
    assert odd.cents_for_next(0, 50) == 110_000_110
    assert odd.outstanding_cents(0) == 110_000_110
    assert odd.outstanding_cents(1) == 107_800_108
    assert odd.outstanding_cents(49) == 2_200_012
    assert odd.outstanding_cents(50) == 0


# -- payments -------------------------------------------------------------------


def test_pay_one_installment(five_million):
    assert weeks_paid_by(five_million, 0, 11_000_000, START) == 1
    assert weeks_paid_by(five_million, 7, 11_000_000, START) == 1


def test_pay_several_installments(five_million):
    assert weeks_paid_by(five_million, 0, 33_000_000, days(22)) == 3  # catch-up of three missed weeks


def test_pay_ahead(five_million):
    # Nothing is due yet; paying ten weeks ahead is accepted.
    assert weeks_paid_by(five_million, 0, 110_000_000, START) == 10
    assert weeks_paid_by(five_million, 10, 11_000_000 * 39, START) == 39


def test_exact_payoff(five_million, odd):
    assert weeks_paid_by(five_million, 0, 550_000_000, START) == 50
    assert weeks_paid_by(five_million, 45, 55_000_000, START) == 5
    assert weeks_paid_by(five_million, 49, 11_000_000, START) == 1
    assert weeks_paid_by(odd, 0, 110_000_110, START) == 50
    assert weeks_paid_by(odd, 48, 4_400_014, START) == 2
    assert weeks_paid_by(odd, 49, 2_200_012, START) == 1


def test_regular_installment_cannot_stand_in_for_a_different_final(odd):
    # The last installment is 22,000.12; 22,000.02 is not acceptable then.
    with pytest.raises(PaymentNotAccepted) as info:
        weeks_paid_by(odd, 49, 2_200_002, START)
    assert "one installment is 22000.12" in info.value.message
    assert "the full payoff is 22000.12" in info.value.message
    # 50 regular installments is not the payoff either.
    with pytest.raises(PaymentNotAccepted):
        weeks_paid_by(odd, 0, 2_200_002 * 50, START)
    with pytest.raises(PaymentNotAccepted):
        weeks_paid_by(odd, 48, 2_200_002 * 2, START)


def test_partial_payment_names_one_installment_and_payoff(five_million):
    with pytest.raises(PaymentNotAccepted) as info:
        weeks_paid_by(five_million, 0, 5_000_000, START)
    message = info.value.message
    assert "50000.00" in message
    assert "one installment is 110000.00" in message
    assert "the full payoff is 5500000.00" in message
    assert "overdue" not in message  # nothing is overdue at the start


@pytest.mark.parametrize("amount", [1, 10_999_999, 11_000_001, 16_500_000, 21_999_999, 549_999_999])
def test_not_a_whole_number_of_installments(five_million, amount):
    with pytest.raises(PaymentNotAccepted):
        weeks_paid_by(five_million, 0, amount, START)


def test_refusal_names_overdue_amount_when_any(five_million):
    # As of day 15, installments 1 and 2 are overdue.
    with pytest.raises(PaymentNotAccepted) as info:
        weeks_paid_by(five_million, 0, 5_000_000, days(15))
    message = info.value.message
    assert "one installment is 110000.00" in message
    assert "all 2 overdue installment(s) are 220000.00" in message
    assert "the full payoff is 5500000.00" in message


def test_refusal_after_some_paid_names_remaining_payoff(odd):
    with pytest.raises(PaymentNotAccepted) as info:
        weeks_paid_by(odd, 48, 1, days(365))
    message = info.value.message
    assert "one installment is 22000.02" in message
    assert "all 2 overdue installment(s) are 44000.14" in message
    assert "the full payoff is 44000.14" in message


def test_over_balance_is_refused(five_million):
    with pytest.raises(PaymentNotAccepted) as info:
        weeks_paid_by(five_million, 0, 550_000_001, START)
    assert "exceeds the outstanding balance 5500000.00" in info.value.message
    with pytest.raises(PaymentNotAccepted):
        weeks_paid_by(five_million, 49, 22_000_000, START)
    with pytest.raises(PaymentNotAccepted):
        weeks_paid_by(five_million, 0, 561_000_000, START)  # 51 installments


def test_payment_on_paid_off_loan_is_failed_precondition(five_million):
    with pytest.raises(FailedPrecondition) as info:
        weeks_paid_by(five_million, 50, 11_000_000, START)
    assert "paid off" in info.value.message


# -- delinquency ----------------------------------------------------------------


def test_installment_due_on_as_of_is_not_missed(five_million):
    d = delinquency(five_million, 0, days(7))
    assert d.as_of == days(7)
    assert (d.missed_payments, d.overdue_cents, d.days_past_due) == (0, 0, 0)
    assert d.next_due_date == dt.date(2026, 1, 12)
    assert not d.is_delinquent


def test_before_first_due_date(five_million):
    d = delinquency(five_million, 0, START)
    assert (d.missed_payments, d.overdue_cents, d.days_past_due, d.is_delinquent) == (0, 0, 0, False)
    assert d.next_due_date == dt.date(2026, 1, 12)
    d = delinquency(five_million, 0, days(-30))
    assert (d.missed_payments, d.overdue_cents, d.days_past_due, d.is_delinquent) == (0, 0, 0, False)


def test_one_missed_is_overdue_but_not_delinquent(five_million):
    d = delinquency(five_million, 0, days(8))
    assert (d.missed_payments, d.overdue_cents, d.days_past_due) == (1, 11_000_000, 1)
    assert d.next_due_date == dt.date(2026, 1, 12)
    assert not d.is_delinquent
    d = delinquency(five_million, 0, days(14))  # installment 2 due on as_of
    assert (d.missed_payments, d.days_past_due, d.is_delinquent) == (1, 7, False)


def test_two_missed_is_delinquent(five_million):
    d = delinquency(five_million, 0, days(15))
    assert (d.missed_payments, d.overdue_cents, d.days_past_due) == (2, 22_000_000, 8)
    assert d.next_due_date == dt.date(2026, 1, 12)
    assert d.is_delinquent
    # the smoke test's date: 2026-01-27 is day 22: installments 1, 2 and 3 (due day 21) missed
    d = delinquency(five_million, 1, dt.date(2026, 1, 27))
    assert (d.missed_payments, d.overdue_cents, d.days_past_due) == (2, 22_000_000, 8)
    assert d.next_due_date == dt.date(2026, 1, 19)
    assert d.is_delinquent


def test_paying_missed_installments_makes_current(five_million):
    as_of = days(22)
    assert delinquency(five_million, 0, as_of).missed_payments == 3
    assert delinquency(five_million, 1, as_of).missed_payments == 2
    d = delinquency(five_million, 2, as_of)
    assert (d.missed_payments, d.overdue_cents, d.days_past_due, d.is_delinquent) == (1, 11_000_000, 1, False)
    d = delinquency(five_million, 3, as_of)
    assert (d.missed_payments, d.overdue_cents, d.days_past_due, d.is_delinquent) == (0, 0, 0, False)
    assert d.next_due_date == dt.date(2026, 2, 2)
    d = delinquency(five_million, 10, as_of)  # paid ahead
    assert (d.missed_payments, d.is_delinquent) == (0, False)
    assert d.next_due_date == days(77)


def test_long_after_maturity(odd):
    d = delinquency(odd, 0, dt.date(2030, 1, 1))
    assert d.missed_payments == 50
    assert d.overdue_cents == 110_000_110
    assert d.days_past_due == (dt.date(2030, 1, 1) - dt.date(2026, 1, 12)).days
    assert d.is_delinquent
    d = delinquency(odd, 48, dt.date(2030, 1, 1))
    assert (d.missed_payments, d.overdue_cents) == (2, 4_400_014)
    assert d.next_due_date == dt.date(2026, 12, 14)
    assert d.days_past_due == (dt.date(2030, 1, 1) - dt.date(2026, 12, 14)).days
    assert d.is_delinquent
    d = delinquency(odd, 49, dt.date(2030, 1, 1))
    assert (d.missed_payments, d.overdue_cents, d.is_delinquent) == (1, 2_200_012, False)


def test_paid_off_is_never_delinquent(five_million):
    d = delinquency(five_million, 50, dt.date(2030, 1, 1))
    assert (d.missed_payments, d.overdue_cents, d.days_past_due, d.is_delinquent) == (0, 0, 0, False)
    assert d.next_due_date is None
