"""A loan's ledger in the database: its value-ordered payments and what is derived from them.

Every change to a loan's payments goes through here, inside the change's
transaction and under the loan's row lock, so the derived data always equals
what the payments say (``standing.py`` holds the rules, this module the rows):

- each non-reversed payment's ``running_paid_cents`` (value-date order);
- the loan's summary: paid amount and installments, second unpaid due date,
  latest value date;
- the loan's finished delinquent stretches (``delinquency_span``, one row per
  month each overlaps), which answer "delinquent as of a past date" with an
  index range.

The common payment, valued today after every earlier one, only appends: the
loan's current stretch ends where the new one begins, so at most one span is
written and no payment is read. A back-dated payment or a reversal rewrites
the loan's past: the running totals after it shift and the spans are rebuilt
from the payments (cost grows with the loan's own payments, never the book's).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from lending_grpc.core import standing
from lending_grpc.core.schedule import LoanTerms
from lending_grpc.core.storage.database import LendingDatabase
from lending_grpc.core.storage.models import DelinquencySpan, Loan, Payment
from lending_grpc.core.storage.prepared import Select, Statement


def counting_payments_in_value_order(*columns) -> Select:
    """A loan's (``p.loan``) payments that count, not reversed, in value order: ``columns`` of each."""
    return Select(
        Payment,
        lambda p: (
            Payment.select()
            .where((Payment.loan == p.loan) & Payment.reverse_time_us.is_null())
            .order_by(Payment.value_date, Payment.id)
        ),
        columns=columns,
    )


_TIMELINE = counting_payments_in_value_order(Payment.value_date, Payment.running_paid_cents)
_RUNNING_AT = Select(
    Payment,
    lambda p: (
        Payment.select()
        .where((Payment.loan == p.loan) & Payment.reverse_time_us.is_null() & (Payment.value_date <= p.day))
        .order_by(Payment.value_date.desc(), Payment.id.desc())
        .limit(1)
    ),
    columns=(Payment.running_paid_cents,),
)
_SHIFT_AFTER_DAY = Statement(
    lambda p: Payment.update(running_paid_cents=Payment.running_paid_cents + p.delta).where(
        (Payment.loan == p.loan) & Payment.reverse_time_us.is_null() & (Payment.value_date > p.day)
    )
)
_SHIFT_AFTER_PAYMENT = Statement(
    lambda p: Payment.update(running_paid_cents=Payment.running_paid_cents + p.delta).where(
        (Payment.loan == p.loan)
        & Payment.reverse_time_us.is_null()
        & ((Payment.value_date > p.day) | ((Payment.value_date == p.day) & (Payment.id > p.payment)))
    )
)
_SPAN_COLUMNS = ("month", "loan", "owner", "start_date", "end_date", "second_unpaid_due_date")
_INSERT_SPAN = Statement(
    lambda p: DelinquencySpan.insert(
        {getattr(DelinquencySpan, name): getattr(p, name) for name in _SPAN_COLUMNS}
    )
)
_DELETE_SPANS = Statement(lambda p: DelinquencySpan.delete().where(DelinquencySpan.loan == p.loan))
# Compare-and-set on the amount read under the lock: a lost update stays
# impossible even if the lock were ever dropped.
_UPDATE_SUMMARY = Statement(
    lambda p: Loan.update(
        paid_weeks=p.paid_weeks,
        paid_cents=p.paid_cents,
        second_unpaid_due_date=p.second_unpaid,
        last_value_date=p.last_value_date,
    ).where((Loan.id == p.loan) & (Loan.paid_cents == p.expected_paid_cents))
)


class LedgerConflict(RuntimeError):
    """The loan's summary changed under a transaction that held its lock: a bug, never weather."""


@dataclasses.dataclass(frozen=True, slots=True)
class Summary:
    """The loan's summary as the payments say: what it stores on its row."""

    paid_cents: int
    paid_weeks: int
    second_unpaid_due_date: dt.date | None
    last_value_date: dt.date | None


def summary_of(terms: LoanTerms, paid_cents: int, last_value_date: dt.date | None) -> Summary:
    """The summary of a loan with ``paid_cents`` of non-reversed payments, the latest valued then."""
    return Summary(
        paid_cents,
        standing.installments_paid(terms, paid_cents),
        standing.second_unpaid_due_date(terms, paid_cents),
        last_value_date,
    )


def timeline(db: LendingDatabase, loan_pk: int) -> list[standing.Step]:
    """The loan's running totals, one step per value date, oldest first."""
    return standing.steps((row.value_date, row.running_paid_cents) for row in db.all(_TIMELINE, loan=loan_pk))


def paid_as_of(db: LendingDatabase, loan_pk: int, day: dt.date) -> int:
    """The loan's non-reversed payments valued on or before ``day``, in cents (one index lookup)."""
    row = db.first(_RUNNING_AT, loan=loan_pk, day=Payment.value_date.db_value(day))
    return 0 if row is None else row.running_paid_cents


def paid_as_of_many(loan_pks: list[int], day: dt.date) -> dict[int, int]:
    """`paid_as_of` for several loans in one query (one index lookup per loan inside it)."""
    if not loan_pks:
        return {}
    latest = Payment.alias()
    running = (
        latest.select(latest.running_paid_cents)
        .where((latest.loan == Loan.id) & latest.reverse_time_us.is_null() & (latest.value_date <= day))
        .order_by(latest.value_date.desc(), latest.id.desc())
        .limit(1)
    )
    rows = Loan.select(Loan.id, running.alias("paid")).where(Loan.id.in_(loan_pks)).tuples()
    return {pk: paid or 0 for pk, paid in rows}


def _month(day: dt.date) -> dt.date:
    return day.replace(day=1)


def _months(start: dt.date, end: dt.date) -> list[dt.date]:
    """First days of the months that [start, end) overlaps."""
    months, month = [], _month(start)
    last = _month(end - standing.ONE_DAY)
    while month <= last:
        months.append(month)
        month = (month + dt.timedelta(days=32)).replace(day=1)
    return months


def _insert_span(db: LendingDatabase, loan_pk: int, owner_pk: int, span: standing.DelinquentSpan) -> None:
    for month in _months(span.start, span.end):
        db.run(
            _INSERT_SPAN,
            month=DelinquencySpan.month.db_value(month),
            loan=loan_pk,
            owner=owner_pk,
            start_date=DelinquencySpan.start_date.db_value(span.start),
            end_date=DelinquencySpan.end_date.db_value(span.end),
            second_unpaid_due_date=DelinquencySpan.second_unpaid_due_date.db_value(
                span.second_unpaid_due_date
            ),
        )


def rebuild_spans(
    db: LendingDatabase, loan_pk: int, owner_pk: int, terms: LoanTerms, steps: list[standing.Step]
) -> None:
    """Replace the loan's stored spans with the finished ones its payments give."""
    db.run(_DELETE_SPANS, loan=loan_pk)
    for span in standing.delinquent_spans(terms, steps):
        if span.end is not None:
            _insert_span(db, loan_pk, owner_pk, span)


def _close_current_stretch(
    db: LendingDatabase, loan, terms: LoanTerms, paid_cents: int, until: dt.date
) -> None:
    """The loan's current segment (from its latest value date, at ``paid_cents``) ends at ``until``.

    Stores its delinquent part, if it has one, as a finished span.
    """
    paid = standing.installments_paid(terms, paid_cents)
    second_unpaid = terms.second_unpaid_due_date(paid)
    if second_unpaid is None:
        return
    start = second_unpaid + standing.ONE_DAY
    if loan.last_value_date is not None:
        start = max(start, loan.last_value_date)
    if start < until:
        _insert_span(db, loan.id, loan.owner, standing.DelinquentSpan(start, until, second_unpaid, paid))


def _store_summary(db: LendingDatabase, loan, summary: Summary) -> None:
    updated = db.run(
        _UPDATE_SUMMARY,
        paid_weeks=summary.paid_weeks,
        paid_cents=summary.paid_cents,
        second_unpaid=Loan.second_unpaid_due_date.db_value(summary.second_unpaid_due_date),
        last_value_date=Loan.last_value_date.db_value(summary.last_value_date),
        loan=loan.id,
        expected_paid_cents=loan.paid_cents,
    ).rowcount
    if updated != 1:
        raise LedgerConflict(f"the summary of loan {loan.id} changed while its row was locked")


def add_payment(
    db: LendingDatabase, loan, terms: LoanTerms, amount_cents: int, value_date: dt.date
) -> tuple[int, Summary]:
    """Account for a new payment (already accepted by the rules) before it is inserted.

    Returns the running total to store on the new payment and the loan's new
    summary (stored here). ``loan`` is the loan's row as read under its lock.
    """
    paid = loan.paid_cents + amount_cents
    if loan.last_value_date is None or value_date >= loan.last_value_date:
        if loan.last_value_date is None or value_date > loan.last_value_date:
            _close_current_stretch(db, loan, terms, loan.paid_cents, value_date)
        summary = summary_of(terms, paid, value_date)
        _store_summary(db, loan, summary)
        return paid, summary
    # Back-dated: it comes before some payments in value order, which now count it too.
    day = Payment.value_date.db_value(value_date)
    running = paid_as_of(db, loan.id, value_date) + amount_cents
    db.run(_SHIFT_AFTER_DAY, loan=loan.id, day=day, delta=amount_cents)
    summary = summary_of(terms, paid, loan.last_value_date)
    _store_summary(db, loan, summary)
    return running, summary


def after_insert_backdated(db: LendingDatabase, loan, terms: LoanTerms) -> None:
    """Rebuild the spans once a back-dated payment is in the table (its past changed)."""
    rebuild_spans(db, loan.id, loan.owner, terms, timeline(db, loan.id))


def remove_payment(db: LendingDatabase, loan, terms: LoanTerms, payment) -> Summary:
    """Account for a payment that has just been marked reversed: it stops counting from its value date."""
    db.run(
        _SHIFT_AFTER_PAYMENT,
        loan=loan.id,
        day=Payment.value_date.db_value(payment.value_date),
        payment=payment.id,
        delta=-payment.amount_cents,
    )
    steps = timeline(db, loan.id)
    last_value_date = steps[-1].value_date if steps else None
    summary = summary_of(terms, loan.paid_cents - payment.amount_cents, last_value_date)
    _store_summary(db, loan, summary)
    rebuild_spans(db, loan.id, loan.owner, terms, steps)
    return summary
