"""Exact money and rate handling.

Amounts live as integer cents everywhere inside the service; decimal strings
exist only at the edge. Parsing is strict: a plain decimal, no sign, no
exponent, no separators, no surrounding spaces.
"""

from __future__ import annotations

import re

from lending_grpc.core.errors import InvalidArgument

CENTS_PER_UNIT = 100
RATE_SCALE = 10_000  # interest rates carry at most 4 fraction digits

# Strings longer than this are refused before any regex work.
_MAX_TEXT = 32
_MONEY_RE = re.compile(r"(?P<units>[0-9]+)(?:\.(?P<frac>[0-9]{1,2}))?")
_MONEY_FRACTION_RE = re.compile(r"[0-9]+\.[0-9]{3,}")
_RATE_RE = re.compile(r"(?P<units>[0-9]+)(?:\.(?P<frac>[0-9]{1,4}))?")


def parse_money(text: str, field: str, *, max_cents: int) -> int:
    """Parse a positive decimal amount like ``"110000.00"`` into integer cents.

    Raises InvalidArgument naming ``field`` for anything that is not a plain
    decimal with at most two fraction digits, for zero, and above ``max_cents``.
    """
    if not text:
        raise InvalidArgument(field, "is required")
    if len(text) > _MAX_TEXT:
        raise InvalidArgument(field, "is absurdly large or not a plain decimal amount")
    match = _MONEY_RE.fullmatch(text)
    if match is None:
        if _MONEY_FRACTION_RE.fullmatch(text):
            raise InvalidArgument(field, f"{text!r} has more than 2 fraction digits")
        raise InvalidArgument(field, f"{text!r} is not a plain decimal amount like 110000.00")
    cents = int(match["units"]) * CENTS_PER_UNIT + int((match["frac"] or "").ljust(2, "0"))
    if cents <= 0:
        raise InvalidArgument(field, "must be greater than zero")
    if cents > max_cents:
        raise InvalidArgument(field, f"must be at most {format_cents(max_cents)}")
    return cents


def format_cents(cents: int) -> str:
    """Format integer cents as a decimal string with exactly two fraction digits."""
    sign = "-" if cents < 0 else ""
    units, frac = divmod(abs(cents), CENTS_PER_UNIT)
    return f"{sign}{units}.{frac:02d}"


def parse_rate(text: str, field: str) -> int:
    """Parse an interest rate from ``"0"`` to ``"1"`` (at most 4 fraction digits) into 1/10000ths."""
    if len(text) > _MAX_TEXT:
        raise InvalidArgument(field, "is not a decimal from 0 to 1")
    match = _RATE_RE.fullmatch(text)
    if match is None:
        raise InvalidArgument(field, f"{text!r} is not a decimal from 0 to 1 with at most 4 fraction digits")
    scaled = int(match["units"]) * RATE_SCALE + int((match["frac"] or "").ljust(4, "0"))
    if scaled > RATE_SCALE:
        raise InvalidArgument(field, "must be between 0 and 1")
    return scaled


def format_rate(scaled: int) -> str:
    """Format a rate in 1/10000ths with 2 to 4 fraction digits: ``"0.10"``, ``"0.125"``, ``"0.1234"``."""
    units, frac = divmod(scaled, RATE_SCALE)
    digits = f"{frac:04d}".rstrip("0").ljust(2, "0")
    return f"{units}.{digits}"


def round_half_up_div(numerator: int, denominator: int) -> int:
    """Divide non-negative integers, rounding half up (never banker's rounding)."""
    if numerator < 0 or denominator <= 0:
        raise ValueError("round_half_up_div takes a non-negative numerator and positive denominator")
    return (2 * numerator + denominator) // (2 * denominator)
