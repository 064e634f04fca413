"""Protobuf messages <-> the client's plain values. The only module that knows both shapes.

Money travels as decimal strings; converting through float would lose cents,
so float is refused outright on the way in.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from google.protobuf.timestamp_pb2 import Timestamp
from lending.v1 import auth_pb2, billing_pb2

from lending_grpc.client.types import (
    DelinquencyStatus,
    Installment,
    Loan,
    LoanState,
    Outstanding,
    Payment,
    Schedule,
    Tokens,
    User,
)

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


def loan_state(value: int) -> LoanState:
    name = billing_pb2.LoanState.Name(value) if value in billing_pb2.LoanState.values() else ""
    try:
        return LoanState(name.removeprefix("LOAN_STATE_"))
    except ValueError:  # a state added by a newer server
        return LoanState.UNSPECIFIED


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
    )
