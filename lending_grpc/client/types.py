"""Plain Python values returned by the client: Decimal money, date and aware UTC datetime, never float."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from decimal import Decimal
from typing import Generic, TypeVar

T = TypeVar("T")


class LoanState(enum.Enum):
    """Where a loan is in its life (lending.v1.LoanState without the prefix)."""

    UNSPECIFIED = "UNSPECIFIED"
    ACTIVE = "ACTIVE"
    PAID_OFF = "PAID_OFF"


@dataclasses.dataclass(frozen=True, slots=True)
class User:
    """A registered account."""

    user_id: str
    username: str
    email: str
    create_time: dt.datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class Tokens:
    """An access/refresh token pair with their expiry as Unix times (seconds, this machine's clock)."""

    access_token: str
    refresh_token: str
    access_expires_at: float
    refresh_expires_at: float
    token_type: str = "Bearer"


@dataclasses.dataclass(frozen=True, slots=True)
class Loan:
    """A loan's terms and current balance."""

    loan_id: str
    principal_amount: Decimal
    interest_rate: Decimal
    term_weeks: int
    weekly_payment: Decimal
    final_payment: Decimal
    total_amount: Decimal
    outstanding_balance: Decimal
    paid_amount: Decimal
    installments_paid: int
    start_date: dt.date
    maturity_date: dt.date | None
    state: LoanState
    create_time: dt.datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class Installment:
    """One week of a schedule; `payment_time` and `payment_id` are None while unpaid."""

    week: int
    due_date: dt.date
    due_amount: Decimal
    paid: bool
    payment_time: dt.datetime | None
    payment_id: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Schedule:
    """A loan's full repayment schedule, week 1 first."""

    loan_id: str
    installments: tuple[Installment, ...]
    total_amount: Decimal


@dataclasses.dataclass(frozen=True, slots=True)
class Outstanding:
    """What has been paid on a loan and what is still owed."""

    loan_id: str
    outstanding_balance: Decimal
    paid_amount: Decimal
    total_amount: Decimal
    installments_paid: int
    installments_remaining: int


@dataclasses.dataclass(frozen=True, slots=True)
class Payment:
    """A recorded payment covering weeks first_week..last_week."""

    payment_id: str
    loan_id: str
    amount: Decimal
    payment_time: dt.datetime | None
    first_week: int
    last_week: int
    outstanding_balance: Decimal
    request_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class DelinquencyStatus:
    """A loan's standing as of a date; `next_due_date` is None once paid off."""

    loan_id: str
    is_delinquent: bool
    missed_payments: int
    overdue_amount: Decimal
    days_past_due: int
    next_due_date: dt.date | None
    as_of: dt.date


@dataclasses.dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list call; pass `next_page_token` back for the next one (empty on the last)."""

    items: tuple[T, ...]
    next_page_token: str
