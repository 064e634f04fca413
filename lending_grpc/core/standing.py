"""A loan's standing over time, from its terms and its value-dated payments (DESIGN.md sections 1 and 5).

Everything about a loan as of a date follows from its terms and the running
total of its non-reversed payments valued on or before that date, taken in
value-date order, then recording order. Payments clear whole installments
oldest first, so the running total says how many installments are paid;
after a reversal it may end part-way into an installment (the unapplied
amount) until a later payment completes it.

Between two value dates the number of paid installments is constant: the
loan's timeline is a sequence of *segments*, and within a segment the loan
turns delinquent once, on the day after its second unpaid installment fell
due. The delinquent parts of the segments, joined where they touch, are the
loan's delinquency periods. Nothing here touches the database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence

from lending_grpc.core.errors import LoanPaidOff, PaymentNotAccepted
from lending_grpc.core.money import format_cents
from lending_grpc.core.schedule import Delinquency, LoanTerms, delinquency, overdue_installments

ONE_DAY = dt.timedelta(days=1)


def paid_through(terms: LoanTerms, installments: int) -> int:
    """Cents that pay the first ``installments`` installments in full."""
    if installments >= terms.term_weeks:
        return terms.total_cents
    return terms.weekly_cents * installments


def installments_paid(terms: LoanTerms, paid_cents: int) -> int:
    """How many installments ``paid_cents`` covers in full, oldest first."""
    if paid_cents >= terms.total_cents:
        return terms.term_weeks
    return min(terms.term_weeks - 1, paid_cents // terms.weekly_cents)


def unapplied_cents(terms: LoanTerms, paid_cents: int) -> int:
    """The part of ``paid_cents`` beyond the last installment it completes (after a reversal)."""
    return paid_cents - paid_through(terms, installments_paid(terms, paid_cents))


def second_unpaid_due_date(terms: LoanTerms, paid_cents: int) -> dt.date | None:
    """Due date of the second unpaid installment: delinquent on any later day; None if < 2 remain."""
    return terms.second_unpaid_due_date(installments_paid(terms, paid_cents))


def accept_payment(terms: LoanTerms, paid_cents: int, amount_cents: int, today: dt.date) -> int:
    """The installments paid once ``amount_cents`` is added, or why the amount is refused.

    A payment is accepted when it brings the total paid exactly to the end
    of an installment beyond those already paid. Refusals name the amounts
    that would be accepted next.
    """
    paid = installments_paid(terms, paid_cents)
    if paid >= terms.term_weeks:
        raise LoanPaidOff("the loan is paid off and accepts no more payments")
    outstanding = terms.total_cents - paid_cents
    if amount_cents > outstanding:
        raise PaymentNotAccepted(
            f"{format_cents(amount_cents)} exceeds the outstanding balance {format_cents(outstanding)}; "
            f"{acceptable_amounts_hint(terms, paid_cents, today)}"
        )
    after = paid_cents + amount_cents
    covered = installments_paid(terms, after)
    if covered > paid and paid_through(terms, covered) == after:
        return covered
    raise PaymentNotAccepted(
        f"{format_cents(amount_cents)} is not a whole number of installments; "
        f"{acceptable_amounts_hint(terms, paid_cents, today)}"
    )


def acceptable_amounts_hint(terms: LoanTerms, paid_cents: int, today: dt.date) -> str:
    """Name the amounts the next payment could be: one installment, the overdue ones, full payoff."""
    paid = installments_paid(terms, paid_cents)
    parts = [f"one installment is {format_cents(paid_through(terms, paid + 1) - paid_cents)}"]
    missed = max(0, terms.weeks_due_before(today) - paid)
    if missed:
        overdue = format_cents(paid_through(terms, paid + missed) - paid_cents)
        parts.append(overdue_installments(missed, overdue))
    parts.append(f"the full payoff is {format_cents(terms.total_cents - paid_cents)}")
    remaining = terms.term_weeks - paid
    if remaining > 2 and paid_through(terms, paid) == paid_cents:
        parts.append(f"or k x {format_cents(terms.weekly_cents)} for any k below {remaining}")
    return "accepted: " + ", ".join(parts)


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """The running total of non-reversed payments at the end of ``value_date``."""

    value_date: dt.date
    paid_cents: int


def steps(payments: Iterable[tuple[dt.date, int]]) -> list[Step]:
    """Collapse (value_date, running total) pairs, in value order, to one step per value date."""
    collapsed: list[Step] = []
    for value_date, running in payments:
        if collapsed and collapsed[-1].value_date == value_date:
            collapsed[-1] = Step(value_date, running)
        else:
            collapsed.append(Step(value_date, running))
    return collapsed


def standing_of(terms: LoanTerms, paid_cents: int, day: dt.date) -> Delinquency:
    """The standing on ``day`` with ``paid_cents`` counting (overdue net of a part-paid installment)."""
    return delinquency(terms, installments_paid(terms, paid_cents), day, unapplied_cents(terms, paid_cents))


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of days [start, end) with the same installments paid; ``end`` None: open-ended."""

    start: dt.date | None  # None: from the beginning of time (before the first payment)
    end: dt.date | None
    paid_cents: int


def segments(timeline: Sequence[Step]) -> list[Segment]:
    """The timeline as segments: before the first value date, then from each value date to the next."""
    result = []
    start, paid = None, 0
    for step in timeline:
        if start is None or step.value_date > start:
            result.append(Segment(start, step.value_date, paid))
        start, paid = step.value_date, step.paid_cents
    result.append(Segment(start, None, paid))
    return result


@dataclasses.dataclass(frozen=True, slots=True)
class DelinquentSpan:
    """The days [start, end) of one segment on which the loan was delinquent; ``end`` None: still."""

    start: dt.date
    end: dt.date | None
    second_unpaid_due_date: dt.date  # constant within the segment: what "most overdue" orders by
    installments_paid: int


def delinquent_spans(terms: LoanTerms, timeline: Sequence[Step]) -> list[DelinquentSpan]:
    """Each segment's delinquent days, oldest first (the last one may be open-ended)."""
    spans = []
    for segment in segments(timeline):
        paid = installments_paid(terms, segment.paid_cents)
        second_unpaid = terms.second_unpaid_due_date(paid)
        if second_unpaid is None:
            continue
        first_delinquent = second_unpaid + ONE_DAY
        start = first_delinquent if segment.start is None else max(segment.start, first_delinquent)
        if segment.end is None or start < segment.end:
            spans.append(DelinquentSpan(start, segment.end, second_unpaid, paid))
    return spans


@dataclasses.dataclass(frozen=True, slots=True)
class DelinquencyPeriod:
    """Days [start, end) on which the loan was delinquent; ``end`` None while it still is."""

    start: dt.date
    end: dt.date | None
    max_missed_payments: int


def delinquency_history(
    terms: LoanTerms, timeline: Sequence[Step], today: dt.date
) -> list[DelinquencyPeriod]:
    """The periods in which the loan was delinquent, oldest first, that started on or before ``today``.

    Within a span the missed installments only grow, so a span's worst day is
    its last (or ``today`` for the one still running).
    """
    periods: list[DelinquencyPeriod] = []
    for span in delinquent_spans(terms, timeline):
        if span.start > today:
            break
        # Spans end on value dates, which are never after today.
        last_day = today if span.end is None else span.end - ONE_DAY
        missed = max(0, terms.weeks_due_before(last_day) - span.installments_paid)
        if periods and periods[-1].end == span.start:
            previous = periods[-1]
            periods[-1] = DelinquencyPeriod(
                previous.start, span.end, max(previous.max_missed_payments, missed)
            )
        else:
            periods.append(DelinquencyPeriod(span.start, span.end, missed))
    return periods


def is_delinquent_today(terms: LoanTerms, paid_cents: int, today: dt.date) -> bool:
    """Whether the loan is delinquent as of ``today`` (every payment counts: none is valued later)."""
    second_unpaid = second_unpaid_due_date(terms, paid_cents)
    return second_unpaid is not None and second_unpaid < today
