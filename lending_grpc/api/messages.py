"""Core views -> protobuf messages. The only place that knows both shapes."""

from __future__ import annotations

import functools
import json

from google.protobuf.timestamp_pb2 import Timestamp
from lending.v1 import audit_pb2, auth_pb2, billing_pb2, events_pb2

from lending_grpc.core.audit import AuditView
from lending_grpc.core.billing import unpaid_installments
from lending_grpc.core.event_log import EventView
from lending_grpc.core.money import format_cents, format_rate
from lending_grpc.core.schedule import LoanTerms
from lending_grpc.core.views import (
    DelinquencyView,
    HistoryView,
    LoanView,
    PaymentView,
    PortfolioReportView,
    ScheduleView,
    TokenPair,
    UserView,
)


def timestamp(micros: int) -> Timestamp:
    """A protobuf Timestamp from microseconds since the Unix epoch."""
    seconds, rest = divmod(micros, 1_000_000)
    return Timestamp(seconds=seconds, nanos=rest * 1000)


def user(view: UserView) -> auth_pb2.User:
    return auth_pb2.User(
        user_id=view.user_id,
        username=view.username,
        email=view.email,
        create_time=timestamp(view.create_time_us),
    )


def tokens(pair: TokenPair) -> auth_pb2.Tokens:
    return auth_pb2.Tokens(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        token_type="Bearer",
        expires_in=pair.expires_in,
        refresh_expires_in=pair.refresh_expires_in,
    )


def loan(view: LoanView) -> billing_pb2.Loan:
    terms = view.terms
    return billing_pb2.Loan(
        loan_id=view.loan_id,
        principal_amount=format_cents(terms.principal_cents),
        interest_rate=format_rate(terms.rate_e4),
        term_weeks=terms.term_weeks,
        weekly_payment=format_cents(terms.weekly_cents),
        final_payment=format_cents(terms.final_cents),
        total_amount=format_cents(terms.total_cents),
        outstanding_balance=format_cents(view.outstanding_cents),
        paid_amount=format_cents(view.paid_cents),
        installments_paid=view.paid_weeks,
        start_date=terms.start_date.isoformat(),
        maturity_date=terms.maturity_date.isoformat(),
        state=billing_pb2.LOAN_STATE_PAID_OFF if view.is_paid_off else billing_pb2.LOAN_STATE_ACTIVE,
        create_time=timestamp(view.create_time_us),
        unapplied_amount=format_cents(view.unapplied_cents),
    )


def outstanding(view: LoanView) -> billing_pb2.Outstanding:
    return billing_pb2.Outstanding(
        loan_id=view.loan_id,
        outstanding_balance=format_cents(view.outstanding_cents),
        paid_amount=format_cents(view.paid_cents),
        total_amount=format_cents(view.terms.total_cents),
        installments_paid=view.paid_weeks,
        installments_remaining=view.terms.term_weeks - view.paid_weeks,
        unapplied_amount=format_cents(view.unapplied_cents),
    )


def payment(view: PaymentView) -> billing_pb2.Payment:
    message = billing_pb2.Payment(
        payment_id=view.payment_id,
        loan_id=view.loan_id,
        amount=format_cents(view.amount_cents),
        payment_time=timestamp(view.payment_time_us),
        first_week=view.first_week,
        last_week=view.last_week,
        outstanding_balance=format_cents(view.outstanding_after_cents),
        request_id=view.request_id or "",
        value_date=view.value_date.isoformat(),
    )
    if view.reverse_time_us is not None:
        message.reversed = True
        message.reverse_time.CopyFrom(timestamp(view.reverse_time_us))
        message.reversal_reason = view.reversal_reason or ""
    return message


def schedule(view: ScheduleView) -> billing_pb2.Schedule:
    message = billing_pb2.Schedule()
    message.CopyFrom(_unpaid_schedule(view.terms))
    message.loan_id = view.loan_id
    for item, entry in zip(view.installments, message.installments, strict=True):
        if item.payment_id is None:  # the template's entry, as every unpaid week is
            continue
        entry.paid = True
        entry.payment_id = item.payment_id
        if item.payment_time_us is not None:
            entry.payment_time.CopyFrom(timestamp(item.payment_time_us))
    return message


@functools.lru_cache(maxsize=1024)
def _unpaid_schedule(terms: LoanTerms) -> billing_pb2.Schedule:
    """The schedule of ``terms`` with nothing paid: copied, then the paid weeks filled in.

    Building fifty entries field by field was a third of GetSchedule's cost;
    a week's due date and amount depend on the terms alone. Never handed
    out: callers get a copy.
    """
    message = billing_pb2.Schedule(total_amount=format_cents(terms.total_cents))
    for item in unpaid_installments(terms):
        message.installments.add(
            week=item.week, due_date=item.due_date.isoformat(), due_amount=format_cents(item.due_cents)
        )
    return message


def delinquency(view: DelinquencyView) -> billing_pb2.DelinquencyStatus:
    standing = view.standing
    return billing_pb2.DelinquencyStatus(
        loan_id=view.loan_id,
        is_delinquent=standing.is_delinquent,
        missed_payments=standing.missed_payments,
        overdue_amount=format_cents(standing.overdue_cents),
        days_past_due=standing.days_past_due,
        next_due_date=standing.next_due_date.isoformat() if standing.next_due_date else "",
        as_of=standing.as_of.isoformat(),
        owner=view.owner,
    )


def audit_event(view: AuditView) -> audit_pb2.AuditEvent:
    return audit_pb2.AuditEvent(
        sequence=view.seq,
        event_time=timestamp(view.time_us),
        event=view.event,
        outcome=view.outcome,
        actor=view.actor,
        subject=view.subject,
        peer=view.peer,
        rpc=view.rpc,
        request_id=view.request_id,
        loan_id=view.loan_id,
        summary=json.dumps(view.summary, separators=(",", ":"), sort_keys=True),
    )


def history(view: HistoryView) -> billing_pb2.DelinquencyHistory:
    return billing_pb2.DelinquencyHistory(
        loan_id=view.loan_id,
        periods=[
            billing_pb2.DelinquencyPeriod(
                start_date=period.start.isoformat(),
                end_date=period.end.isoformat() if period.end else "",
                max_missed_payments=period.max_missed_payments,
            )
            for period in view.periods
        ],
    )


def portfolio_report(view: PortfolioReportView) -> billing_pb2.PortfolioReport:
    return billing_pb2.PortfolioReport(
        as_of=view.as_of.isoformat(),
        loans=view.loans,
        outstanding_amount=format_cents(view.outstanding_cents),
        categories=[
            billing_pb2.FundingQualityCategory(
                quality=billing_pb2.FundingQuality.Value(f"FUNDING_QUALITY_{category.quality}"),
                loans=category.loans,
                outstanding_amount=format_cents(category.outstanding_cents),
            )
            for category in view.categories
        ],
        twp90=view.twp90,
        tkb90=view.tkb90,
    )


def event(view: EventView) -> events_pb2.Event:
    message = events_pb2.Event(
        sequence=view.sequence,
        type=events_pb2.EventType.Value(f"EVENT_TYPE_{view.type}"),
        loan_id=view.loan_id,
        owner=view.owner,
        occur_time=timestamp(view.occur_time_us),
        effective_date=view.effective_date.isoformat(),
    )
    resource = view.resource
    if isinstance(resource, LoanView):
        message.loan.CopyFrom(loan(resource))
    elif isinstance(resource, PaymentView):
        message.payment.CopyFrom(payment(resource))
    else:
        message.delinquency.CopyFrom(delinquency(resource))
    return message
