"""Delinquency reads: a loan's standing as of a date, the delinquent loans as of a date, history, reports.

As of a date D means the loan as it stood at the end of D, as known now:
payments count by value date, reversed ones not at all (DESIGN.md sections
1 and 5). A loan's row holds its standing from its latest value date on;
before that, each loan's payments (running totals in value order) and its
stored delinquent spans answer with index lookups, never a scan of the book.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from peewee import Tuple

from lending_grpc.core import fields, ledger, pagination, reporting, standing
from lending_grpc.core.billing import BillingCore, terms_of
from lending_grpc.core.clock import Clock
from lending_grpc.core.errors import InvalidArgument
from lending_grpc.core.storage.database import LendingDatabase
from lending_grpc.core.storage.models import DelinquencySpan, Loan, User
from lending_grpc.core.views import DelinquencyView, HistoryView, Page, PortfolioReportView


@dataclasses.dataclass(frozen=True, slots=True)
class _Candidate:
    """A loan delinquent as of the day, with what orders the list and what it had paid then."""

    second_unpaid: dt.date
    loan_pk: int
    row: object  # the loan row
    paid_cents: int | None  # what counted as of the day; None: look it up (a finished span)
    owner_user_id: str


class DelinquencyCore:
    """Standing, delinquent lists and history; ``owner`` is the internal id of the loans' owner."""

    def __init__(
        self, db: LendingDatabase, clock: Clock, page_tokens: pagination.PageTokens, billing: BillingCore
    ) -> None:
        self._db = db
        self._clock = clock
        self._page_tokens = page_tokens
        self._billing = billing

    def _as_of(self, as_of: str) -> dt.date:
        return fields.optional_date(as_of, "as_of", self._clock.today())

    def _paid_as_of(self, row, day: dt.date) -> int:
        """The loan's paid amount at the end of ``day``: its row's from its latest value date on."""
        if row.last_value_date is None or day >= row.last_value_date:
            return row.paid_cents
        return ledger.paid_as_of(self._db, row.id, day)

    def get_delinquency(self, owner: int, loan_id: str, as_of: str = "") -> DelinquencyView:
        """A loan's standing as of a date (default today): missed installments and overdue amount."""
        day = self._as_of(as_of)
        row = self._billing.loan_row(owner, loan_id)
        terms = terms_of(row)
        return DelinquencyView(row.loan_id, standing.standing_of(terms, self._paid_as_of(row, day), day))

    def get_history(self, owner: int, loan_id: str) -> HistoryView:
        """The periods in which the loan was delinquent, oldest first, that started by today."""
        row = self._billing.loan_row(owner, loan_id)
        terms = terms_of(row)
        steps = ledger.timeline(self._db, row.id) if row.last_value_date is not None else []
        return HistoryView(row.loan_id, standing.delinquency_history(terms, steps, self._clock.today()))

    def portfolio_report(self, owner: int | None, as_of: str = "") -> PortfolioReportView:
        """The funding-quality report as of a date (default today), of one owner or the whole book."""
        return reporting.portfolio_report(self._db, self._as_of(as_of), owner)

    def list_delinquent(
        self, owner: int | None, as_of: str = "", page_size: int = 0, page_token: str = ""
    ) -> Page:
        """The owner's loans (every owner's when ``owner`` is None) delinquent as of a date.

        Most overdue first: by the due date of the second unpaid installment
        as of that date, then by loan. Two index ranges merged: loans whose
        row already holds their standing on that date (no payment valued
        later), and the stored delinquent spans covering that date (loans
        that have been paid since).
        """
        size = pagination.page_size(page_size)
        scope = f"delinquent|{'all' if owner is None else owner}"
        day = self._as_of(as_of)
        after: tuple[dt.date, int] | None = None
        if page_token:
            position = self._page_tokens.decode(page_token, scope)
            token_day = dt.date.fromisoformat(position["as_of"])
            if as_of and token_day != day:
                raise InvalidArgument("as_of", "differs from the as_of of the page token")
            day = token_day
            after = (dt.date.fromisoformat(position["due"]), int(position["id"]))
        found = self._current(owner, day, after, size + 1)
        if day < self._clock.today():  # a finished span never covers today or later
            found += self._spans(owner, day, after, size + 1)
        found.sort(key=lambda c: (c.second_unpaid, c.loan_pk))
        page, token = found[:size], ""
        if len(found) > size:
            last = page[-1]
            token = self._page_tokens.encode(
                scope, {"as_of": day.isoformat(), "due": last.second_unpaid.isoformat(), "id": last.loan_pk}
            )
        # A finished span is the past: what its loans had paid that day, for the page's loans only.
        paid_then = ledger.paid_as_of_many([c.loan_pk for c in page if c.paid_cents is None], day)
        return Page(
            [
                DelinquencyView(
                    c.row.loan_id,
                    standing.standing_of(
                        terms_of(c.row), paid_then[c.loan_pk] if c.paid_cents is None else c.paid_cents, day
                    ),
                    c.owner_user_id if owner is None else "",
                )
                for c in page
            ],
            token,
        )

    def _current(self, owner: int | None, day: dt.date, after, limit: int) -> list[_Candidate]:
        """Loans delinquent as of ``day`` by their row: no payment valued after it."""
        query = (
            Loan.select(Loan, User.user_id).join(User)
            if owner is None
            else Loan.select().where(Loan.owner == owner)
        )
        if after is not None:
            # A row-value comparison, not "due > d OR (due = d AND id > i)": both
            # SQLite and PostgreSQL turn it into one index range.
            query = query.where(Tuple(Loan.second_unpaid_due_date, Loan.id) > Tuple(*after))
        rows = (
            query.where(
                (Loan.second_unpaid_due_date < day)
                & (Loan.last_value_date.is_null() | (Loan.last_value_date <= day))
            )
            .order_by(Loan.second_unpaid_due_date, Loan.id)
            .limit(limit)
        )
        return [
            _Candidate(
                row.second_unpaid_due_date,
                row.id,
                row,
                row.paid_cents,
                row.owner.user_id if owner is None else "",
            )
            for row in rows
        ]

    def _spans(self, owner: int | None, day: dt.date, after, limit: int) -> list[_Candidate]:
        """Loans delinquent as of ``day`` in a stretch that a later payment ended."""
        query = DelinquencySpan.select(DelinquencySpan, Loan, User.user_id).join(Loan).switch(DelinquencySpan)
        query = query.join(User, on=(DelinquencySpan.owner == User.id))
        query = query.where(DelinquencySpan.month == day.replace(day=1))
        if owner is not None:
            query = query.where(DelinquencySpan.owner == owner)
        if after is not None:
            query = query.where(
                Tuple(DelinquencySpan.second_unpaid_due_date, DelinquencySpan.loan) > Tuple(*after)
            )
        rows = (
            query.where((DelinquencySpan.start_date <= day) & (DelinquencySpan.end_date > day))
            .order_by(DelinquencySpan.second_unpaid_due_date, DelinquencySpan.loan)
            .limit(limit)
        )
        candidates = []
        for span in rows:
            loan = span.loan
            candidates.append(
                _Candidate(span.second_unpaid_due_date, loan.id, loan, None, span.owner.user_id)
            )
        return candidates
