"""Read-only results of core operations (billing and auth), free of database and transport types."""

from __future__ import annotations

import dataclasses
import datetime as dt

from lending_grpc.core import standing
from lending_grpc.core.schedule import Delinquency, LoanTerms


@dataclasses.dataclass(frozen=True, slots=True)
class LoanView:
    """A loan with its terms and payment summary."""

    loan_id: str
    terms: LoanTerms
    paid_weeks: int
    paid_cents: int
    create_time_us: int

    @property
    def outstanding_cents(self) -> int:
        return self.terms.total_cents - self.paid_cents

    @property
    def unapplied_cents(self) -> int:
        """Paid beyond the last completed installment (only ever after a reversal)."""
        return self.paid_cents - standing.paid_through(self.terms, self.paid_weeks)

    @property
    def is_paid_off(self) -> bool:
        return self.paid_weeks >= self.terms.term_weeks


@dataclasses.dataclass(frozen=True, slots=True)
class PaymentView:
    """One recorded payment; weeks and outstanding balance as they were when it was recorded."""

    payment_id: str
    loan_id: str
    amount_cents: int
    payment_time_us: int
    first_week: int
    last_week: int
    outstanding_after_cents: int
    request_id: str | None
    value_date: dt.date
    reverse_time_us: int | None = None
    reversal_reason: str | None = None

    @property
    def is_reversed(self) -> bool:
        return self.reverse_time_us is not None


@dataclasses.dataclass(frozen=True, slots=True)
class InstallmentView:
    """One week of a schedule, with the payment that covered it, if any."""

    week: int
    due_date: dt.date
    due_cents: int
    payment_id: str | None
    payment_time_us: int | None

    @property
    def paid(self) -> bool:
        return self.payment_id is not None


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduleView:
    """A loan's full schedule.

    Every installment's week, due date and amount follow from ``terms``
    alone; only which payment completed it changes as payments come.
    """

    loan_id: str
    terms: LoanTerms
    installments: list[InstallmentView]

    @property
    def total_cents(self) -> int:
        return self.terms.total_cents


@dataclasses.dataclass(frozen=True, slots=True)
class DelinquencyView:
    """A loan's delinquency standing as of a date."""

    loan_id: str
    standing: Delinquency
    owner: str = ""  # the owner's public user id, filled in portfolio-wide lists


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryView:
    """A loan's delinquency periods, oldest first."""

    loan_id: str
    periods: list[standing.DelinquencyPeriod]


FUNDING_QUALITIES = ("CURRENT", "SPECIAL_MENTION", "SUBSTANDARD", "DOUBTFUL", "LOSS")


@dataclasses.dataclass(frozen=True, slots=True)
class QualityView:
    """One funding-quality category of a report: how many loans, how much outstanding."""

    quality: str  # one of FUNDING_QUALITIES
    loans: int
    outstanding_cents: int


@dataclasses.dataclass(frozen=True, slots=True)
class PortfolioReportView:
    """The funding-quality report as of a date; ``twp90`` and ``tkb90`` are percentages as text."""

    as_of: dt.date
    loans: int
    outstanding_cents: int
    categories: list[QualityView]
    twp90: str
    tkb90: str


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """One page of a list and the token for the next (empty on the last page)."""

    items: list
    next_page_token: str


OPERATOR = "operator"
ROLES = (OPERATOR,)


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: internal id for queries, public id for logs and tokens.

    ``family`` is the token family of the access token that authenticated
    the call (what Logout revokes); ``role`` is None for ordinary users.
    """

    id: int
    user_id: str
    role: str | None = None
    family: str = ""

    @property
    def is_operator(self) -> bool:
        return self.role == OPERATOR


@dataclasses.dataclass(frozen=True, slots=True)
class Actor:
    """Who acts, and through which request: every core operation that changes data is told, never guesses.

    The API layer builds one per call (``principal`` is the authenticated
    caller, None for anonymous calls such as Login); the operator commands
    build one with ``name`` ``cli:<os user>``. The audit trail records
    ``name`` (the caller's public user id when signed in), ``peer``, ``rpc``
    and ``request_id``.
    """

    principal: Principal | None = None
    name: str = ""
    peer: str = ""
    rpc: str = ""
    request_id: str = ""

    def acting_as(self, name: str) -> Actor:
        """The same request, recorded under the name of the user it concerns (one who just signed in)."""
        return dataclasses.replace(self, name=name)

    @property
    def user(self) -> Principal:
        """The authenticated caller; only operations behind authentication ask for it."""
        if self.principal is None:
            raise RuntimeError("this operation needs an authenticated caller")
        return self.principal


SERVER_ACTOR = Actor(name="server")  # what the service does on its own (start-up, the daily close)


@dataclasses.dataclass(frozen=True, slots=True)
class UserView:
    """A registered user, without any secret."""

    user_id: str
    username: str
    email: str
    create_time_us: int


@dataclasses.dataclass(frozen=True, slots=True)
class TokenPair:
    """A freshly issued access and refresh token."""

    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
