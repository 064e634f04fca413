"""Counted nouns for messages people read: '1 installment', '2 installments', '0 loans'."""

from __future__ import annotations


def count(number: int, noun: str, plural: str | None = None) -> str:
    """``number`` and ``noun``, plural unless the number is 1 (``plural`` when not just noun + 's')."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
