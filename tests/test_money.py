"""Exact unit tests of money and rate parsing, formatting and half-up rounding (DESIGN.md section 1)."""

from __future__ import annotations

import pytest

from lending_grpc.core.errors import InvalidArgument
from lending_grpc.core.money import (
    format_cents,
    format_rate,
    parse_money,
    parse_rate,
    round_half_up_div,
)
from lending_grpc.core.schedule import MAX_PRINCIPAL_CENTS, MAX_TOTAL_CENTS

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
