"""The pure rules (core/money.py, core/schedule.py; no database, no server), exactly (DESIGN.md section 1)
and as hypothesis properties against an independent Decimal oracle."""

from __future__ import annotations

import datetime as dt
import decimal
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lending_grpc.core.errors import FailedPrecondition, InvalidArgument, PaymentNotAccepted
from lending_grpc.core.money import format_cents, format_rate, parse_money, parse_rate, round_half_up_div
from lending_grpc.core.schedule import (
    MAX_PRINCIPAL_CENTS,
    MAX_TOTAL_CENTS,
    LoanTerms,
    delinquency,
)
from lending_grpc.core.standing import accept_payment, paid_through

# == money and rates: parsing, formatting and half-up rounding ===========================


# -- parse_money -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cents"),
    [
        ("1", 100),
        ("1.5", 150),
        ("1.50", 150),
        ("0.01", 1),
        ("0.1", 10),
        ("0.10", 10),
        ("110000.00", 11_000_000),
        ("110000", 11_000_000),
        ("5000000", 500_000_000),
        ("1000001.00", 100_000_100),
        ("1000000000000.00", MAX_PRINCIPAL_CENTS),
    ],
)
def test_parse_money_accepts_plain_decimals(text, cents):
    assert parse_money(text, "amount", max_cents=MAX_PRINCIPAL_CENTS) == cents


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1e6",
        "1E6",
        "1e-2",
        "+1",
        "-1",
        "-0.01",
        " 1",
        "1 ",
        "\t1",
        "1\n",
        "1,000",
        "1_000",
        "1.234",
        "0.001",
        "1.",
        ".5",
        "1..5",
        "1.5.0",
        "NaN",
        "nan",
        "inf",
        "Infinity",
        "0x10",
        "abc",
        "0",
        "0.00",
        "0.0",
        "000",
        "\uff11",  # fullwidth digit one
        "\u0661",  # Arabic-Indic digit one
        "1" * 33,
        "9" * 40,
        "1" * 10_000,
        "1." + "0" * 40,
    ],
)
def test_parse_money_rejects_malformed_zero_negative_and_long(text):
    with pytest.raises(InvalidArgument) as info:
        parse_money(text, "amount", max_cents=MAX_TOTAL_CENTS)
    assert info.value.field == "amount"
    assert info.value.message.startswith("amount: ")


def test_parse_money_names_more_than_two_fraction_digits():
    with pytest.raises(InvalidArgument) as info:
        parse_money("1.234", "amount", max_cents=MAX_TOTAL_CENTS)
    assert "more than 2 fraction digits" in info.value.description


def test_parse_money_enforces_max_cents():
    assert parse_money("1000000000000.00", "principal_amount", max_cents=MAX_PRINCIPAL_CENTS) == 10**14
    with pytest.raises(InvalidArgument) as info:
        parse_money("1000000000000.01", "principal_amount", max_cents=MAX_PRINCIPAL_CENTS)
    assert info.value.field == "principal_amount"
    assert "1000000000000.00" in info.value.description


def test_parse_money_zero_names_greater_than_zero():
    with pytest.raises(InvalidArgument) as info:
        parse_money("0.00", "amount", max_cents=MAX_TOTAL_CENTS)
    assert "greater than zero" in info.value.description


def test_parse_money_required():
    with pytest.raises(InvalidArgument) as info:
        parse_money("", "principal_amount", max_cents=MAX_PRINCIPAL_CENTS)
    assert info.value.field == "principal_amount"
    assert info.value.description == "is required"


# -- format_cents ------------------------------------------------------------


@pytest.mark.parametrize(
    ("cents", "text"),
    [
        (0, "0.00"),
        (1, "0.01"),
        (10, "0.10"),
        (99, "0.99"),
        (100, "1.00"),
        (150, "1.50"),
        (11_000_000, "110000.00"),
        (550_000_000, "5500000.00"),
        (110_000_110, "1100001.10"),
        (2_200_012, "22000.12"),
        (MAX_TOTAL_CENTS, "2000000000000.00"),
        (-5, "-0.05"),
        (-12_345, "-123.45"),
    ],
)
def test_format_cents(cents, text):
    assert format_cents(cents) == text


# -- rates -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "scaled"),
    [
        ("0", 0),
        ("0.0", 0),
        ("0.0000", 0),
        ("0.0001", 1),
        ("0.1", 1000),
        ("0.10", 1000),
        ("0.125", 1250),
        ("0.1234", 1234),
        ("0.9999", 9999),
        ("1", 10_000),
        ("1.0", 10_000),
        ("1.0000", 10_000),
    ],
)
def test_parse_rate_accepts_zero_to_one_with_four_digits(text, scaled):
    assert parse_rate(text, "interest_rate") == scaled


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1.0001",
        "1.1",
        "2",
        "10",
        "0.12345",
        "0.00001",
        "-0.1",
        "+0.1",
        "1e-1",
        ".1",
        "0.",
        " 0.1",
        "0.1 ",
        "0,1",
        "NaN",
        "inf",
        "10%",
        "0" * 33,
        "0." + "1" * 40,
    ],
)
def test_parse_rate_rejects(text):
    with pytest.raises(InvalidArgument) as info:
        parse_rate(text, "interest_rate")
    assert info.value.field == "interest_rate"


@pytest.mark.parametrize(
    ("scaled", "text"),
    [
        (0, "0.00"),
        (1, "0.0001"),
        (10, "0.001"),
        (100, "0.01"),
        (1000, "0.10"),
        (1250, "0.125"),
        (1234, "0.1234"),
        (5000, "0.50"),
        (10_000, "1.00"),
    ],
)
def test_format_rate(scaled, text):
    assert format_rate(scaled) == text


# -- rounding ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [
        (0, 7, 0),
        (4, 10, 0),
        (5, 10, 1),  # 0.5 -> 1
        (15, 10, 2),  # 1.5 -> 2
        (25, 10, 3),  # 2.5 -> 3 (banker's rounding would give 2)
        (45, 10, 5),  # 4.5 -> 5 (banker's rounding would give 4)
        (24, 10, 2),
        (26, 10, 3),
        (1, 2, 1),  # 0.5 -> 1 (banker's: 0)
        (5, 2, 3),  # 2.5 -> 3 (banker's: 2)
        (7, 2, 4),
        (10, 3, 3),
        (11, 3, 4),
        (110_000_110, 50, 2_200_002),  # 2200002.2
        (165_000, 10_000, 17),  # 16.5 -> 17 (banker's: 16)
        (10**20 + 5, 10, 10**19 + 1),
    ],
)
def test_round_half_up_div(numerator, denominator, expected):
    assert round_half_up_div(numerator, denominator) == expected


@pytest.mark.parametrize(("numerator", "denominator"), [(-1, 2), (1, 0), (1, -2)])
def test_round_half_up_div_refuses_negative_or_zero(numerator, denominator):
    with pytest.raises(ValueError):
        round_half_up_div(numerator, denominator)


# == the repayment schedule, payments and delinquency rules ==============================


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


def weeks_paid_by(terms: LoanTerms, paid_weeks: int, amount_cents: int, today) -> int:
    """How many installments a payment pays after ``paid_weeks`` whole ones, by the core's rule."""
    return accept_payment(terms, paid_through(terms, paid_weeks), amount_cents, today) - paid_weeks


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
    assert "all 2 overdue installments are 220000.00" in message
    assert "the full payoff is 5500000.00" in message


def test_refusal_after_some_paid_names_remaining_payoff(odd):
    with pytest.raises(PaymentNotAccepted) as info:
        weeks_paid_by(odd, 48, 1, days(365))
    message = info.value.message
    assert "one installment is 22000.02" in message
    assert "all 2 overdue installments are 44000.14" in message
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


# == hypothesis properties, checked against an independent Decimal oracle ================


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
                if missed == 1:
                    assert f"the 1 overdue installment is {overdue}" in message
                else:
                    assert f"all {missed} overdue installments are {overdue}" in message
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
