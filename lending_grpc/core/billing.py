"""BillingCore: loans, payments, schedules and delinquency, each operation one transaction."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from peewee import Database, Tuple

from lending_grpc.core import audit, fields, pagination
from lending_grpc.core.clock import Clock
from lending_grpc.core.errors import (
    Aborted,
    AlreadyExists,
    InvalidArgument,
    LendingError,
    NotFound,
    Unavailable,
)
from lending_grpc.core.money import parse_money, parse_rate
from lending_grpc.core.schedule import (
    MAX_PRINCIPAL_CENTS,
    MAX_TERM_WEEKS,
    MAX_TOTAL_CENTS,
    MIN_TERM_WEEKS,
    LoanTerms,
    delinquency,
    weeks_paid_by,
)
from lending_grpc.core.storage.database import run_in_write_transaction
from lending_grpc.core.storage.models import Loan, Payment, User
from lending_grpc.core.storage.prepared import Prepared, PreparedSelect
from lending_grpc.core.views import (
    DelinquencyView,
    InstallmentView,
    LoanView,
    Page,
    PaymentView,
    ScheduleView,
)

DEFAULT_TERM_WEEKS = 50
DEFAULT_RATE_E4 = 1000  # 0.10


# LoanTerms' fields are named after the loan columns that store them: one mapping, both ways.
_TERM_COLUMNS = tuple(field.name for field in dataclasses.fields(LoanTerms))


# The statements every hot RPC runs, built into SQL once per database (see prepared.py).
# Samples stand for the parameters while the SQL is built: distinctive values of the right type.
_OWNER, _LOAN_PK, _PAID_WEEKS = -987_654_321, -123_456_789, -7
_LOAN_KEY, _REQUEST_ID = "\0loan_id", "\0request_id"
_LOAN_BY_KEY = PreparedSelect(
    Loan,
    Loan._meta.sorted_fields,
    lambda query, owner, loan_id: query.where((Loan.owner == owner) & (Loan.loan_id == loan_id)).limit(1),
    _OWNER,
    _LOAN_KEY,
)
# Locked until commit where the backend has row locks: concurrent payments on one loan take turns.
_LOAN_BY_KEY_FOR_UPDATE = PreparedSelect(
    Loan,
    Loan._meta.sorted_fields,
    lambda query, owner, loan_id: query.where((Loan.owner == owner) & (Loan.loan_id == loan_id)).limit(1),
    _OWNER,
    _LOAN_KEY,
    for_update=True,
)
_PAYMENT_BY_REQUEST = PreparedSelect(
    Payment,
    [*Payment._meta.sorted_fields, Loan.loan_id],
    lambda query, owner, key: (
        query.join(Loan).where((Payment.owner == owner) & (Payment.request_id == key)).limit(1)
    ),
    _OWNER,
    _REQUEST_ID,
)
_PAYMENTS_OF_LOAN = PreparedSelect(
    Payment,
    Payment._meta.sorted_fields,
    lambda query, loan: query.where(Payment.loan == loan).order_by(Payment.first_week),
    _LOAN_PK,
)
_LOAN_FIELDS = tuple(field for field in Loan._meta.sorted_fields if field.name != "id")
_INSERT_LOAN = Prepared(
    lambda *values: Loan.insert({field: value for field, value in zip(_LOAN_FIELDS, values, strict=True)}),
    *(f"\0{field.name}" for field in _LOAN_FIELDS),
)
_PAYMENT_FIELDS = tuple(field for field in Payment._meta.sorted_fields if field.name != "id")
_INSERT_PAYMENT = Prepared(
    lambda *values: Payment.insert(
        {field: value for field, value in zip(_PAYMENT_FIELDS, values, strict=True)}
    ),
    *(f"\0{field.name}" for field in _PAYMENT_FIELDS),
)
_UPDATE_SUMMARY = Prepared(
    lambda paid_weeks, paid_cents, second_unpaid, loan, expected: Loan.update(
        paid_weeks=paid_weeks, paid_cents=paid_cents, second_unpaid_due_date=second_unpaid
    ).where((Loan.id == loan) & (Loan.paid_weeks == expected)),
    -1_111,
    -2_222,
    "\0second_unpaid_due_date",
    _LOAN_PK,
    _PAID_WEEKS,
)


def _term_columns(terms: LoanTerms) -> dict:
    return {name: getattr(terms, name) for name in _TERM_COLUMNS}


def _loan_view(row: Loan) -> LoanView:
    terms = LoanTerms(**{name: getattr(row, name) for name in _TERM_COLUMNS})
    return LoanView(row.loan_id, terms, row.paid_weeks, row.paid_cents, row.create_time_us)


def _standing(row: Loan, day: dt.date, owner: str = "") -> DelinquencyView:
    view = _loan_view(row)
    return DelinquencyView(view.loan_id, delinquency(view.terms, view.paid_weeks, day), owner)


def _payment_view(row: Payment, loan_id: str) -> PaymentView:
    return PaymentView(
        payment_id=row.payment_id,
        loan_id=loan_id,
        amount_cents=row.amount_cents,
        payment_time_us=row.payment_time_us,
        first_week=row.first_week,
        last_week=row.last_week,
        outstanding_after_cents=row.outstanding_after_cents,
        request_id=row.request_id,
    )


class BillingCore:
    """The billing rules over the database. ``owner`` is always the caller's internal user id."""

    def __init__(self, db: Database, clock: Clock, page_tokens: pagination.PageTokens) -> None:
        self._db = db
        self._clock = clock
        self._page_tokens = page_tokens

    # -- loans ---------------------------------------------------------------

    def create_loan(
        self,
        owner: int,
        loan_id: str,
        principal_amount: str,
        start_date: str = "",
        term_weeks: int = 0,
        interest_rate: str = "",
    ) -> LoanView:
        """Create a loan, or return the existing one when ``loan_id`` is reused with the same terms."""
        loan_id = fields.loan_id(loan_id)
        principal = parse_money(principal_amount, "principal_amount", max_cents=MAX_PRINCIPAL_CENTS)
        if not 0 <= term_weeks <= MAX_TERM_WEEKS:
            raise InvalidArgument(
                "term_weeks",
                f"must be between {MIN_TERM_WEEKS} and {MAX_TERM_WEEKS} (0 means {DEFAULT_TERM_WEEKS})",
            )
        rate = parse_rate(interest_rate, "interest_rate") if interest_rate else None
        start = (
            fields.calendar_date(
                start_date, "start_date", low=fields.MIN_START_DATE, high=fields.MAX_START_DATE
            )
            if start_date
            else None
        )

        def create() -> LoanView:
            existing = _LOAN_BY_KEY.first(self._db, owner, loan_id)
            if existing is not None:
                # A retry: compare only the terms this request states.
                stated = {
                    "principal_amount": (existing.principal_cents, principal),
                    "term_weeks": (existing.term_weeks, term_weeks or None),
                    "interest_rate": (existing.rate_e4, rate),
                    "start_date": (existing.start_date, start),
                }
                differing = [name for name, (old, new) in stated.items() if new is not None and old != new]
                if differing:
                    raise AlreadyExists(
                        f"loan {loan_id!r} already exists with a different {', '.join(differing)}"
                    )
                return _loan_view(existing)
            terms = LoanTerms.build(
                principal,
                DEFAULT_RATE_E4 if rate is None else rate,
                term_weeks or DEFAULT_TERM_WEEKS,
                start or self._clock.today(),
            )
            row = Loan(
                owner=owner,
                loan_id=loan_id,
                **_term_columns(terms),
                paid_weeks=0,
                paid_cents=0,
                second_unpaid_due_date=terms.second_unpaid_due_date(0),
                create_time_us=self._clock.now_us(),
            )
            _INSERT_LOAN.execute(
                self._db, *(field.db_value(row.__data__[field.name]) for field in _LOAN_FIELDS)
            )
            audit.record(
                "loan.create",
                subject=audit.context().actor,
                loan_id=loan_id,
                summary={
                    "principal_cents": terms.principal_cents,
                    "rate_e4": terms.rate_e4,
                    "term_weeks": terms.term_weeks,
                    "start_date": terms.start_date.isoformat(),
                    "total_cents": terms.total_cents,
                },
            )
            return _loan_view(row)

        return run_in_write_transaction(self._db, create)

    def resolve_owner(self, user_id: str, loan_id: str) -> int:
        """The internal id of the user ``user_id`` (an operator naming a loan's owner).

        An unknown owner is NotFound for the loan, as an unknown loan would be.
        """
        row = User.select(User.id).where(User.user_id == user_id[:36]).first()
        if row is None:
            raise NotFound(f"loan {loan_id!r} not found")
        return row.id

    def _loan_row(self, owner: int, loan_id: str, *, for_update: bool = False) -> Loan:
        statement = _LOAN_BY_KEY_FOR_UPDATE if for_update else _LOAN_BY_KEY
        row = statement.first(self._db, owner, fields.loan_id(loan_id))
        if row is None:
            raise NotFound(f"loan {loan_id!r} not found")
        return row

    def get_loan(self, owner: int, loan_id: str) -> LoanView:
        """One of the owner's loans, or NotFound (also for other users' loans)."""
        return _loan_view(self._loan_row(owner, loan_id))

    def list_loans(self, owner: int, page_size: int = 0, page_token: str = "") -> Page:
        """The owner's loans, oldest first, keyset-paginated."""
        size = pagination.page_size(page_size)
        scope = f"loans|{owner}"
        rows, token = self._id_page(Loan.select().where(Loan.owner == owner), Loan, size, scope, page_token)
        return Page([_loan_view(row) for row in rows], token)

    def _id_page(self, query, model, size: int, scope: str, page_token: str) -> tuple[list, str]:
        """One page of ``query`` in ``model.id`` order, resuming after the token's id."""
        if page_token:
            after = self._page_tokens.decode(page_token, scope)
            query = query.where(model.id > int(after["id"]))
        rows = list(query.order_by(model.id).limit(size + 1))
        if len(rows) <= size:
            return rows, ""
        rows = rows[:size]
        return rows, self._page_tokens.encode(scope, {"id": rows[-1].id})

    def get_schedule(self, owner: int, loan_id: str) -> ScheduleView:
        """Every installment with its due date, amount and covering payment."""
        loan = self._loan_row(owner, loan_id)
        terms = _loan_view(loan).terms
        covered: dict[int, Payment] = {}
        for payment in _PAYMENTS_OF_LOAN.all(self._db, loan.id):
            for week in range(payment.first_week, payment.last_week + 1):
                covered[week] = payment
        installments = []
        for week in range(1, terms.term_weeks + 1):
            payment = covered.get(week)
            installments.append(
                InstallmentView(
                    week=week,
                    due_date=terms.due_date(week),
                    due_cents=terms.installment_cents(week),
                    payment_id=payment.payment_id if payment else None,
                    payment_time_us=payment.payment_time_us if payment else None,
                )
            )
        return ScheduleView(loan.loan_id, terms.total_cents, installments)

    # -- payments ------------------------------------------------------------

    def make_payment(self, owner: int, loan_id: str, amount: str, request_id: str = "") -> PaymentView:
        """Record a payment of the next whole installments; idempotent on ``request_id``.

        Accepted payments are audited in their own transaction; refused ones
        (any rule or validation error, not transient contention) afterwards.
        """
        try:
            return self._make_payment(owner, loan_id, amount, request_id)
        except (Unavailable, Aborted):
            raise
        except LendingError as exc:
            audit.record_alone(
                self._db,
                "payment.refused",
                audit.REFUSED,
                subject=audit.context().actor,
                loan_id=loan_id,
                summary={"amount": amount[:40], "reason": type(exc).__name__, "message": exc.message[:300]},
            )
            raise

    def _make_payment(self, owner: int, loan_id: str, amount: str, request_id: str) -> PaymentView:
        loan_id = fields.loan_id(loan_id)
        amount_cents = parse_money(amount, "amount", max_cents=MAX_TOTAL_CENTS)
        key = fields.request_id(request_id)
        today = self._clock.today()

        def pay() -> PaymentView:
            if key is not None:
                earlier = _PAYMENT_BY_REQUEST.first(self._db, owner, key)
                if earlier is not None:
                    if earlier.loan_loan_id != loan_id or earlier.amount_cents != amount_cents:
                        raise AlreadyExists(f"request_id {key!r} was already used for a different payment")
                    return _payment_view(earlier, loan_id)
            # Locked until commit: concurrent payments on one loan take turns.
            loan = self._loan_row(owner, loan_id, for_update=True)
            view = _loan_view(loan)
            weeks = weeks_paid_by(view.terms, loan.paid_weeks, amount_cents, today)
            paid_weeks = loan.paid_weeks + weeks
            paid_cents = loan.paid_cents + amount_cents
            payment = Payment(
                payment_id=str(uuid.uuid4()),
                loan=loan.id,
                owner=owner,
                request_id=key,
                amount_cents=amount_cents,
                first_week=loan.paid_weeks + 1,
                last_week=paid_weeks,
                outstanding_after_cents=view.terms.total_cents - paid_cents,
                payment_time_us=self._clock.now_us(),
            )
            _INSERT_PAYMENT.execute(
                self._db,
                *(field.db_value(payment.__data__[field.name]) for field in _PAYMENT_FIELDS),
            )
            # Guarded on the summary read above as well: a lost update stays
            # impossible even if the lock were ever dropped.
            second_unpaid = view.terms.second_unpaid_due_date(paid_weeks)
            updated = _UPDATE_SUMMARY.execute(
                self._db,
                paid_weeks,
                paid_cents,
                Loan.second_unpaid_due_date.db_value(second_unpaid),
                loan.id,
                loan.paid_weeks,
            ).rowcount
            if updated != 1:
                raise RuntimeError("loan summary changed during a payment transaction")
            audit.record(
                "payment.accepted",
                subject=audit.context().actor,
                loan_id=loan_id,
                summary={
                    "payment_id": payment.payment_id,
                    "amount_cents": amount_cents,
                    "weeks": [payment.first_week, payment.last_week],
                    "outstanding_after_cents": payment.outstanding_after_cents,
                    "request_id": key,
                },
            )
            return _payment_view(payment, loan_id)

        return run_in_write_transaction(self._db, pay)

    def list_payments(self, owner: int, loan_id: str, page_size: int = 0, page_token: str = "") -> Page:
        """A loan's payments, oldest first, keyset-paginated."""
        size = pagination.page_size(page_size)
        loan = self._loan_row(owner, loan_id)
        scope = f"payments|{owner}|{loan.id}"
        query = Payment.select().where(Payment.loan == loan.id)
        rows, token = self._id_page(query, Payment, size, scope, page_token)
        return Page([_payment_view(row, loan.loan_id) for row in rows], token)

    # -- delinquency ---------------------------------------------------------

    def _as_of(self, as_of: str) -> dt.date:
        return fields.optional_date(as_of, "as_of", self._clock.today())

    def get_delinquency(self, owner: int, loan_id: str, as_of: str = "") -> DelinquencyView:
        """A loan's standing as of a date (default today): missed installments and overdue amount."""
        day = self._as_of(as_of)
        return _standing(self._loan_row(owner, loan_id), day)

    def list_delinquent(
        self, owner: int | None, as_of: str = "", page_size: int = 0, page_token: str = ""
    ) -> Page:
        """The owner's loans (every owner's when ``owner`` is None) delinquent as of a date.

        Most overdue first. Delinquent as of D means the second unpaid
        installment fell due before D, so this is one range scan on the stored
        ``second_unpaid_due_date`` (per owner, or across the portfolio).
        """
        size = pagination.page_size(page_size)
        scope = f"delinquent|{'all' if owner is None else owner}"
        day = self._as_of(as_of)
        if owner is None:
            query = Loan.select(Loan, User.user_id).join(User)
        else:
            query = Loan.select().where(Loan.owner == owner)
        if page_token:
            after = self._page_tokens.decode(page_token, scope)
            token_day = dt.date.fromisoformat(after["as_of"])
            if as_of and token_day != day:
                raise InvalidArgument("as_of", "differs from the as_of of the page token")
            day = token_day
            last_due = dt.date.fromisoformat(after["due"])
            # A row-value comparison, not "due > d OR (due = d AND id > i)": both
            # SQLite and PostgreSQL turn it into one index range, where the OR
            # made PostgreSQL fetch and sort every delinquent loan of the owner.
            query = query.where(
                Tuple(Loan.second_unpaid_due_date, Loan.id) > Tuple(last_due, int(after["id"]))
            )
        rows = list(
            query.where(Loan.second_unpaid_due_date < day)
            .order_by(Loan.second_unpaid_due_date, Loan.id)
            .limit(size + 1)
        )
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            token = self._page_tokens.encode(
                scope,
                {"as_of": day.isoformat(), "due": last.second_unpaid_due_date.isoformat(), "id": last.id},
            )
        return Page([_standing(row, day, row.owner.user_id if owner is None else "") for row in rows], token)
