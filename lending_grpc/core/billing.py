"""BillingCore: loans, payments, schedules and delinquency, each operation one transaction."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from peewee import Tuple

from lending_grpc.core import audit, fields, pagination
from lending_grpc.core.clock import Clock
from lending_grpc.core.errors import (
    AlreadyExists,
    InvalidArgument,
    LendingError,
    NotFound,
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
from lending_grpc.core.storage.database import LendingDatabase
from lending_grpc.core.storage.models import Loan, Payment, User
from lending_grpc.core.storage.prepared import Select, Statement
from lending_grpc.core.views import (
    Actor,
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

# The statements every hot RPC runs: prepared once per database (storage/prepared.py).
_LOAN_BY_KEY = Select(
    Loan, lambda p: Loan.select().where((Loan.owner == p.owner) & (Loan.loan_id == p.loan_id))
)
# Locked until commit where the backend has row locks: concurrent payments on one loan take turns.
_LOAN_BY_KEY_LOCKED = Select(
    Loan, lambda p: Loan.select().where((Loan.owner == p.owner) & (Loan.loan_id == p.loan_id)), lock=True
)
_PAYMENT_BY_REQUEST = Select(
    Payment,
    lambda p: Payment.select().join(Loan).where((Payment.owner == p.owner) & (Payment.request_id == p.key)),
    columns=(*Payment._meta.sorted_fields, Loan.loan_id),
)
_PAYMENTS_OF_LOAN = Select(
    Payment, lambda p: Payment.select().where(Payment.loan == p.loan).order_by(Payment.first_week)
)
_LOAN_COLUMNS = tuple(field for field in Loan._meta.sorted_fields if field.name != "id")
_INSERT_LOAN = Statement(lambda p: Loan.insert({field: getattr(p, field.name) for field in _LOAN_COLUMNS}))
_PAYMENT_COLUMNS = tuple(field for field in Payment._meta.sorted_fields if field.name != "id")
_INSERT_PAYMENT = Statement(
    lambda p: Payment.insert({field: getattr(p, field.name) for field in _PAYMENT_COLUMNS})
)
# Guarded on the summary read under the lock as well: a lost update stays
# impossible even if the lock were ever dropped.
_UPDATE_SUMMARY = Statement(
    lambda p: Loan.update(
        paid_weeks=p.paid_weeks, paid_cents=p.paid_cents, second_unpaid_due_date=p.second_unpaid
    ).where((Loan.id == p.loan) & (Loan.paid_weeks == p.expected_paid_weeks))
)


def _term_columns(terms: LoanTerms) -> dict:
    return {name: getattr(terms, name) for name in _TERM_COLUMNS}


def _loan_view(row) -> LoanView:
    terms = LoanTerms(**{name: getattr(row, name) for name in _TERM_COLUMNS})
    return LoanView(row.loan_id, terms, row.paid_weeks, row.paid_cents, row.create_time_us)


def _standing(row, day: dt.date, owner: str = "") -> DelinquencyView:
    view = _loan_view(row)
    return DelinquencyView(view.loan_id, delinquency(view.terms, view.paid_weeks, day), owner)


def _payment_view(row, loan_id: str) -> PaymentView:
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
    """The billing rules over the database.

    Reads take ``owner``, the internal id of the user whose loans they read
    (the caller, or the owner an operator names); changes take the `Actor`
    that makes them, which the audit trail records.
    """

    def __init__(self, db: LendingDatabase, clock: Clock, page_tokens: pagination.PageTokens) -> None:
        self._db = db
        self._clock = clock
        self._page_tokens = page_tokens

    # -- loans ---------------------------------------------------------------

    def create_loan(
        self,
        actor: Actor,
        loan_id: str,
        principal_amount: str,
        start_date: str = "",
        term_weeks: int = 0,
        interest_rate: str = "",
    ) -> LoanView:
        """Create a loan for the caller; the existing one when ``loan_id`` is reused with the same terms."""
        owner = actor.user.id
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
            existing = self._db.first(_LOAN_BY_KEY, owner=owner, loan_id=loan_id)
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
            values = {
                "owner": owner,
                "loan_id": loan_id,
                **_term_columns(terms),
                "paid_weeks": 0,
                "paid_cents": 0,
                "second_unpaid_due_date": terms.second_unpaid_due_date(0),
                "create_time_us": self._clock.now_us(),
            }
            self._db.run(_INSERT_LOAN, **values)
            audit.record(
                self._db,
                actor,
                "loan.create",
                subject=actor.name,
                loan_id=loan_id,
                summary={
                    "principal_cents": terms.principal_cents,
                    "rate_e4": terms.rate_e4,
                    "term_weeks": terms.term_weeks,
                    "start_date": terms.start_date.isoformat(),
                    "total_cents": terms.total_cents,
                },
            )
            return LoanView(loan_id, terms, 0, 0, values["create_time_us"])

        return self._db.write_transaction(create)

    def resolve_owner(self, user_id: str, loan_id: str) -> int:
        """The internal id of the user ``user_id`` (an operator naming a loan's owner).

        An unknown owner is NotFound for the loan, as an unknown loan would be.
        """
        row = User.select(User.id).where(User.user_id == user_id[:36]).first()
        if row is None:
            raise NotFound(f"loan {loan_id!r} not found")
        return row.id

    def _loan_row(self, owner: int, loan_id: str, *, for_update: bool = False):
        statement = _LOAN_BY_KEY_LOCKED if for_update else _LOAN_BY_KEY
        row = self._db.first(statement, owner=owner, loan_id=fields.loan_id(loan_id))
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
        for payment in self._db.all(_PAYMENTS_OF_LOAN, loan=loan.id):
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

    def make_payment(self, actor: Actor, loan_id: str, amount: str, request_id: str = "") -> PaymentView:
        """Record a payment of the next whole installments; idempotent on ``request_id``.

        Accepted payments are audited in their own transaction; refused ones
        (any rule or validation error, not a database failure) afterwards.
        """
        try:
            return self._make_payment(actor, loan_id, amount, request_id)
        except LendingError as exc:  # database failures are not LendingErrors until the unit of work
            audit.record_alone(
                self._db,
                actor,
                "payment.refused",
                audit.REFUSED,
                subject=actor.name,
                loan_id=loan_id,
                summary={"amount": amount[:40], "reason": type(exc).__name__, "message": exc.message[:300]},
            )
            raise

    def _make_payment(self, actor: Actor, loan_id: str, amount: str, request_id: str) -> PaymentView:
        owner = actor.user.id
        loan_id = fields.loan_id(loan_id)
        amount_cents = parse_money(amount, "amount", max_cents=MAX_TOTAL_CENTS)
        key = fields.request_id(request_id)
        today = self._clock.today()

        def pay() -> PaymentView:
            if key is not None:
                earlier = self._db.first(_PAYMENT_BY_REQUEST, owner=owner, key=key)
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
            payment = PaymentView(
                payment_id=str(uuid.uuid4()),
                loan_id=loan_id,
                amount_cents=amount_cents,
                payment_time_us=self._clock.now_us(),
                first_week=loan.paid_weeks + 1,
                last_week=paid_weeks,
                outstanding_after_cents=view.terms.total_cents - paid_cents,
                request_id=key,
            )
            self._db.run(
                _INSERT_PAYMENT,
                payment_id=payment.payment_id,
                loan=loan.id,
                owner=owner,
                request_id=key,
                amount_cents=amount_cents,
                first_week=payment.first_week,
                last_week=payment.last_week,
                outstanding_after_cents=payment.outstanding_after_cents,
                payment_time_us=payment.payment_time_us,
            )
            updated = self._db.run(
                _UPDATE_SUMMARY,
                paid_weeks=paid_weeks,
                paid_cents=paid_cents,
                second_unpaid=view.terms.second_unpaid_due_date(paid_weeks),
                loan=loan.id,
                expected_paid_weeks=loan.paid_weeks,
            ).rowcount
            if updated != 1:
                raise RuntimeError("loan summary changed during a payment transaction")
            audit.record(
                self._db,
                actor,
                "payment.accepted",
                subject=actor.name,
                loan_id=loan_id,
                summary={
                    "payment_id": payment.payment_id,
                    "amount_cents": amount_cents,
                    "weeks": [payment.first_week, payment.last_week],
                    "outstanding_after_cents": payment.outstanding_after_cents,
                    "request_id": key,
                },
            )
            return payment

        return self._db.write_transaction(pay)

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
