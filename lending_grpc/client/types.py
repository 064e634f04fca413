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
    # Paid beyond the last installment completed: only a reversal can leave some; it counts
    # toward the next installment.
    unapplied_amount: Decimal = Decimal("0.00")


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
    unapplied_amount: Decimal = Decimal("0.00")  # see Loan.unapplied_amount


@dataclasses.dataclass(frozen=True, slots=True)
class Payment:
    """A recorded payment covering weeks first_week..last_week when it was recorded.

    ``value_date`` is when the money was received (what standings as of a date
    count by); a reversed payment no longer counts anywhere and says when and why.
    """

    payment_id: str
    loan_id: str
    amount: Decimal
    payment_time: dt.datetime | None
    first_week: int
    last_week: int
    outstanding_balance: Decimal
    request_id: str
    value_date: dt.date | None = None
    reversed: bool = False
    reverse_time: dt.datetime | None = None
    reversal_reason: str = ""


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
    owner: str = ""  # the owner's public user id, in operators' portfolio-wide lists and in events


@dataclasses.dataclass(frozen=True, slots=True)
class DelinquencyPeriod:
    """A run of delinquent days: ``end_date`` is the first day current again (None while it lasts)."""

    start_date: dt.date
    end_date: dt.date | None
    max_missed_payments: int


@dataclasses.dataclass(frozen=True, slots=True)
class DelinquencyHistory:
    """Every period in which a loan was delinquent, oldest first."""

    loan_id: str
    periods: tuple[DelinquencyPeriod, ...]


class FundingQuality(enum.Enum):
    """A funding-quality category by days past due (lending.v1.FundingQuality without the prefix)."""

    UNSPECIFIED = "UNSPECIFIED"
    CURRENT = "CURRENT"  # 0 days past due
    SPECIAL_MENTION = "SPECIAL_MENTION"  # 1-30
    SUBSTANDARD = "SUBSTANDARD"  # 31-60
    DOUBTFUL = "DOUBTFUL"  # 61-90
    LOSS = "LOSS"  # over 90: what TWP90 measures


@dataclasses.dataclass(frozen=True, slots=True)
class FundingQualityCategory:
    """One category of a portfolio report: how many loans, how much outstanding."""

    quality: FundingQuality
    loans: int
    outstanding_amount: Decimal


@dataclasses.dataclass(frozen=True, slots=True)
class PortfolioReport:
    """The funding-quality report as of a date; ``twp90`` and ``tkb90`` are percentages (2 places)."""

    as_of: dt.date
    loans: int
    outstanding_amount: Decimal
    categories: tuple[FundingQualityCategory, ...]
    twp90: Decimal
    tkb90: Decimal

    def category(self, quality: FundingQuality) -> FundingQualityCategory:
        """The category ``quality`` (an empty one if the server did not list it)."""
        for item in self.categories:
            if item.quality is quality:
                return item
        return FundingQualityCategory(quality, 0, Decimal("0.00"))


class EventType(enum.Enum):
    """What happened to a loan (lending.v1.EventType without the prefix)."""

    UNSPECIFIED = "UNSPECIFIED"
    LOAN_CREATED = "LOAN_CREATED"
    PAYMENT_ACCEPTED = "PAYMENT_ACCEPTED"
    PAYMENT_REVERSED = "PAYMENT_REVERSED"
    LOAN_PAID_OFF = "LOAN_PAID_OFF"
    LOAN_REOPENED = "LOAN_REOPENED"
    DELINQUENCY_STARTED = "DELINQUENCY_STARTED"
    DELINQUENCY_ENDED = "DELINQUENCY_ENDED"


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One entry of the loan event log; resume after its ``sequence``.

    ``resource`` is what the event is about, right after the change: the Loan
    (LOAN_CREATED, LOAN_PAID_OFF, LOAN_REOPENED), the Payment (PAYMENT_*) or the
    DelinquencyStatus as of ``effective_date`` (DELINQUENCY_*); None for a kind
    this client does not know.
    """

    sequence: int
    type: EventType
    loan_id: str
    owner: str
    occur_time: dt.datetime | None
    effective_date: dt.date | None
    resource: Loan | Payment | DelinquencyStatus | None


@dataclasses.dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list call; pass `next_page_token` back for the next one (empty on the last)."""

    items: tuple[T, ...]
    next_page_token: str
