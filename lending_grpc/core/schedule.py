"""Pure repayment-schedule rules: installments, due dates, payments and delinquency.

A loan's whole state follows from its terms and the number of installments
paid, because payments clear whole installments oldest first. Nothing here
touches the database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from lending_grpc.core.errors import InvalidArgument
from lending_grpc.core.money import RATE_SCALE, format_cents, round_half_up_div
from lending_grpc.core.plural import count

DAYS_PER_WEEK = 7
MIN_TERM_WEEKS = 1
MAX_TERM_WEEKS = 520
MAX_PRINCIPAL_CENTS = 1_000_000_000_000 * 100
# The largest total any loan can reach (principal at interest rate 1).
MAX_TOTAL_CENTS = 2 * MAX_PRINCIPAL_CENTS
# A loan is delinquent once this many installments are missed.
DELINQUENT_AFTER_MISSED = 2


@dataclasses.dataclass(frozen=True, slots=True)
class LoanTerms:
    """The agreed terms of a loan, with every derived amount in integer cents."""

    principal_cents: int
    rate_e4: int  # flat interest over the whole term, in 1/10000ths
    term_weeks: int
    start_date: dt.date
    total_cents: int
    weekly_cents: int
    final_cents: int

    @classmethod
    def build(cls, principal_cents: int, rate_e4: int, term_weeks: int, start_date: dt.date) -> LoanTerms:
        """Derive total and installments; refuse terms whose installments fall below one cent."""
        if not MIN_TERM_WEEKS <= term_weeks <= MAX_TERM_WEEKS:
            raise InvalidArgument("term_weeks", f"must be between {MIN_TERM_WEEKS} and {MAX_TERM_WEEKS}")
        total = round_half_up_div(principal_cents * (RATE_SCALE + rate_e4), RATE_SCALE)
        weekly = round_half_up_div(total, term_weeks)
        final = total - weekly * (term_weeks - 1)
        if weekly < 1 or final < 1:
            raise InvalidArgument(
                "principal_amount",
                f"a total of {format_cents(total)} over {count(term_weeks, 'week')} gives an installment "
                "below 0.01; lend more or choose fewer weeks",
            )
        return cls(principal_cents, rate_e4, term_weeks, start_date, total, weekly, final)

    def installment_cents(self, week: int) -> int:
        """Amount due in 1-based ``week``."""
        return self.final_cents if week == self.term_weeks else self.weekly_cents

    def due_date(self, week: int) -> dt.date:
        """Due date of 1-based ``week``: start_date + 7*week days."""
        return self.start_date + dt.timedelta(days=DAYS_PER_WEEK * week)

    @property
    def maturity_date(self) -> dt.date:
        """Due date of the last installment."""
        return self.due_date(self.term_weeks)

    def cents_for_next(self, paid_weeks: int, count: int) -> int:
        """Sum of the ``count`` installments after the first ``paid_weeks``."""
        last = paid_weeks + count
        if last < self.term_weeks:
            return self.weekly_cents * count
        return self.weekly_cents * (count - 1) + self.final_cents

    def outstanding_cents(self, paid_weeks: int) -> int:
        """What is still owed once ``paid_weeks`` installments are paid."""
        remaining = self.term_weeks - paid_weeks
        return self.cents_for_next(paid_weeks, remaining) if remaining else 0

    def weeks_due_before(self, day: dt.date) -> int:
        """Number of installments whose due date is strictly before ``day``."""
        days = (day - self.start_date).days
        if days <= 0:
            return 0
        return min(self.term_weeks, (days - 1) // DAYS_PER_WEEK)

    def second_unpaid_due_date(self, paid_weeks: int) -> dt.date | None:
        """Due date of the second unpaid installment; the loan is delinquent on any later day.

        None when fewer than two installments remain, so the loan can never be
        delinquent again. Stored on the loan row so that the portfolio query is
        one indexed range scan.
        """
        week = paid_weeks + DELINQUENT_AFTER_MISSED
        return self.due_date(week) if week <= self.term_weeks else None


def overdue_installments(missed: int, amount: str) -> str:
    """'the 1 overdue installment is 110000.00', 'all 2 overdue installments are 220000.00'."""
    if missed == 1:
        return f"the {count(missed, 'overdue installment')} is {amount}"
    return f"all {count(missed, 'overdue installment')} are {amount}"


@dataclasses.dataclass(frozen=True, slots=True)
class Delinquency:
    """A loan's standing as of a date."""

    as_of: dt.date
    missed_payments: int
    overdue_cents: int
    days_past_due: int
    next_due_date: dt.date | None

    @property
    def is_delinquent(self) -> bool:
        return self.missed_payments >= DELINQUENT_AFTER_MISSED


def delinquency(terms: LoanTerms, paid_weeks: int, as_of: dt.date, unapplied_cents: int = 0) -> Delinquency:
    """Judge a loan as of ``as_of``: installments due before it and not paid in full are missed.

    ``unapplied_cents`` is paid beyond the last whole installment (a reversal
    can leave that): it is part of the first missed installment already, so
    the overdue amount, what it takes to be current again, is net of it.
    """
    missed = max(0, terms.weeks_due_before(as_of) - paid_weeks)
    first_unpaid = paid_weeks + 1
    next_due = terms.due_date(first_unpaid) if first_unpaid <= terms.term_weeks else None
    return Delinquency(
        as_of=as_of,
        missed_payments=missed,
        overdue_cents=terms.cents_for_next(paid_weeks, missed) - unapplied_cents if missed else 0,
        days_past_due=(as_of - next_due).days if missed else 0,
        next_due_date=next_due,
    )
