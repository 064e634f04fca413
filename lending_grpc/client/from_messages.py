"""Protobuf messages <-> the client's plain values. The only module that knows both shapes.

Money travels as decimal strings; converting through float would lose cents,
so float is refused outright on the way in.
"""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal
from typing import TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from lending.v1 import auth_pb2, billing_pb2, events_pb2

from lending_grpc.client.types import (
    DelinquencyHistory,
    DelinquencyPeriod,
    DelinquencyStatus,
    Event,
    EventType,
    FundingQuality,
    FundingQualityCategory,
    Installment,
    Loan,
    LoanState,
    Outstanding,
    Payment,
    PortfolioReport,
    Schedule,
    Tokens,
    User,
)

E = TypeVar("E", bound=enum.Enum)

DecimalLike = Decimal | int | str
DateLike = dt.date | str


def decimal_text(value: DecimalLike, name: str) -> str:
    """A Decimal, int or decimal string as the wire's plain decimal string; float and bool are refused."""
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(
            f"{name} must be a Decimal, int or str, not {type(value).__name__} (floats lose cents)"
        )
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    raise TypeError(f"{name} must be a Decimal, int or str, not {type(value).__name__}")


def date_text(value: DateLike | None) -> str:
    """A date as `YYYY-MM-DD`; None is the empty string (the server's default)."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        raise TypeError("pass a datetime.date, not a datetime")
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def money(text: str) -> Decimal:
    return Decimal(text) if text else Decimal("0.00")


def day(text: str) -> dt.date | None:
    return dt.date.fromisoformat(text) if text else None


def instant(message, field: str) -> dt.datetime | None:
    """An aware UTC datetime from a Timestamp field, or None when the field is unset."""
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=dt.UTC)


def user(msg: auth_pb2.User) -> User:
    return User(msg.user_id, msg.username, msg.email, instant(msg, "create_time"))


def tokens(msg: auth_pb2.Tokens, now: float) -> Tokens:
    return Tokens(
        access_token=msg.access_token,
        refresh_token=msg.refresh_token,
        access_expires_at=now + msg.expires_in,
        refresh_expires_at=now + msg.refresh_expires_in,
        token_type=msg.token_type or "Bearer",
    )


def _enum(wire, value: int, prefix: str, cls: type[E]) -> E:
    """A wire enum number as ``cls`` (its names without ``prefix``); UNSPECIFIED for one added later."""
    name = wire.Name(value) if value in wire.values() else ""
    try:
        return cls(name.removeprefix(prefix))
    except ValueError:  # a value added by a newer server
        return cls("UNSPECIFIED")


def loan_state(value: int) -> LoanState:
    return _enum(billing_pb2.LoanState, value, "LOAN_STATE_", LoanState)


def loan(msg: billing_pb2.Loan) -> Loan:
    return Loan(
        loan_id=msg.loan_id,
        principal_amount=money(msg.principal_amount),
        interest_rate=Decimal(msg.interest_rate or "0"),
        term_weeks=msg.term_weeks,
        weekly_payment=money(msg.weekly_payment),
        final_payment=money(msg.final_payment),
        total_amount=money(msg.total_amount),
        outstanding_balance=money(msg.outstanding_balance),
        paid_amount=money(msg.paid_amount),
        installments_paid=msg.installments_paid,
        start_date=dt.date.fromisoformat(msg.start_date),
        maturity_date=day(msg.maturity_date),
        state=loan_state(msg.state),
        create_time=instant(msg, "create_time"),
        unapplied_amount=money(msg.unapplied_amount),
    )


def schedule(msg: billing_pb2.Schedule) -> Schedule:
    return Schedule(
        loan_id=msg.loan_id,
        installments=tuple(
            Installment(
                week=item.week,
                due_date=dt.date.fromisoformat(item.due_date),
                due_amount=money(item.due_amount),
                paid=item.paid,
                payment_time=instant(item, "payment_time"),
                payment_id=item.payment_id or None,
            )
            for item in msg.installments
        ),
        total_amount=money(msg.total_amount),
    )


def outstanding(msg: billing_pb2.Outstanding) -> Outstanding:
    return Outstanding(
        loan_id=msg.loan_id,
        outstanding_balance=money(msg.outstanding_balance),
        paid_amount=money(msg.paid_amount),
        total_amount=money(msg.total_amount),
        installments_paid=msg.installments_paid,
        installments_remaining=msg.installments_remaining,
        unapplied_amount=money(msg.unapplied_amount),
    )


def payment(msg: billing_pb2.Payment) -> Payment:
    return Payment(
        payment_id=msg.payment_id,
        loan_id=msg.loan_id,
        amount=money(msg.amount),
        payment_time=instant(msg, "payment_time"),
        first_week=msg.first_week,
        last_week=msg.last_week,
        outstanding_balance=money(msg.outstanding_balance),
        request_id=msg.request_id,
        value_date=day(msg.value_date),
        reversed=msg.reversed,
        reverse_time=instant(msg, "reverse_time"),
        reversal_reason=msg.reversal_reason,
    )


def delinquency(msg: billing_pb2.DelinquencyStatus) -> DelinquencyStatus:
    return DelinquencyStatus(
        loan_id=msg.loan_id,
        is_delinquent=msg.is_delinquent,
        missed_payments=msg.missed_payments,
        overdue_amount=money(msg.overdue_amount),
        days_past_due=msg.days_past_due,
        next_due_date=day(msg.next_due_date),
        as_of=dt.date.fromisoformat(msg.as_of),
        owner=msg.owner,
    )


def history(msg: billing_pb2.DelinquencyHistory) -> DelinquencyHistory:
    return DelinquencyHistory(
        loan_id=msg.loan_id,
        periods=tuple(
            DelinquencyPeriod(
                start_date=dt.date.fromisoformat(period.start_date),
                end_date=day(period.end_date),
                max_missed_payments=period.max_missed_payments,
            )
            for period in msg.periods
        ),
    )


def funding_quality(value: int) -> FundingQuality:
    return _enum(billing_pb2.FundingQuality, value, "FUNDING_QUALITY_", FundingQuality)


def portfolio_report(msg: billing_pb2.PortfolioReport) -> PortfolioReport:
    return PortfolioReport(
        as_of=dt.date.fromisoformat(msg.as_of),
        loans=msg.loans,
        outstanding_amount=money(msg.outstanding_amount),
        categories=tuple(
            FundingQualityCategory(funding_quality(item.quality), item.loans, money(item.outstanding_amount))
            for item in msg.categories
        ),
        twp90=Decimal(msg.twp90 or "0.00"),
        tkb90=Decimal(msg.tkb90 or "100.00"),
    )


def event_type(value: int) -> EventType:
    return _enum(events_pb2.EventType, value, "EVENT_TYPE_", EventType)


def event(msg: events_pb2.Event) -> Event:
    kind = msg.WhichOneof("resource")
    resource: Loan | Payment | DelinquencyStatus | None = None
    if kind == "loan":
        resource = loan(msg.loan)
    elif kind == "payment":
        resource = payment(msg.payment)
    elif kind == "delinquency":
        resource = delinquency(msg.delinquency)
    return Event(
        sequence=msg.sequence,
        type=event_type(msg.type),
        loan_id=msg.loan_id,
        owner=msg.owner,
        occur_time=instant(msg, "occur_time"),
        effective_date=day(msg.effective_date),
        resource=resource,
    )
