"""BillingCore: loans, payments and reversals, each change one transaction with its audit row and events."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import unicodedata
import uuid
from collections.abc import Callable

from lending_grpc.core import audit, event_log, fields, ledger, pagination, standing
from lending_grpc.core.clock import Clock
from lending_grpc.core.errors import AlreadyExists, InvalidArgument, LendingError, NotFound
from lending_grpc.core.money import parse_money, parse_rate
from lending_grpc.core.schedule import (
    MAX_PRINCIPAL_CENTS,
    MAX_TERM_WEEKS,
    MAX_TOTAL_CENTS,
    MIN_TERM_WEEKS,
    LoanTerms,
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
MAX_REASON_CHARS = 500
# Control characters, and lone surrogates (not text at all; PostgreSQL cannot store them).
_NOT_TEXT = frozenset({"Cc", "Cs"})

# LoanTerms' fields are named after the loan columns that store them: one mapping, both ways.
_TERM_COLUMNS = tuple(field.name for field in dataclasses.fields(LoanTerms))

# The statements every hot RPC runs: prepared once per database (storage/prepared.py).
_LOAN_BY_KEY = Select(
    Loan, lambda p: Loan.select().where((Loan.owner == p.owner) & (Loan.loan_id == p.loan_id))
)
# Locked until commit where the backend has row locks: concurrent changes to one loan take turns.
_LOAN_BY_KEY_LOCKED = Select(
    Loan, lambda p: Loan.select().where((Loan.owner == p.owner) & (Loan.loan_id == p.loan_id)), lock=True
)
_LOAN_BY_ID_LOCKED = Select(Loan, lambda p: Loan.select().where(Loan.id == p.loan), lock=True)
_PAYMENT_BY_REQUEST = Select(
    Payment,
    lambda p: (
        Payment.select().join(Loan).where((Payment.recorded_by == p.caller) & (Payment.request_id == p.key))
    ),
    columns=(*Payment._meta.sorted_fields, Loan.loan_id),
)
_PAYMENT_BY_ID = Select(
    Payment,
    lambda p: (
        Payment.select()
        .join(Loan)
        .switch(Payment)
        .join(User, on=(Payment.owner == User.id))
        .where(Payment.payment_id == p.payment_id)
    ),
    columns=(*Payment._meta.sorted_fields, Loan.loan_id, User.user_id),
)
_PAYMENTS_IN_VALUE_ORDER = ledger.counting_payments_in_value_order(
    Payment.payment_id, Payment.payment_time_us, Payment.running_paid_cents
)
_USER_ID = Select(User, lambda p: User.select().where(User.id == p.user), columns=(User.user_id,))
_LOAN_COLUMNS = tuple(field for field in Loan._meta.sorted_fields if field.name != "id")
_INSERT_LOAN = Statement(
    lambda p: Loan.insert({field: getattr(p, field.name) for field in _LOAN_COLUMNS}).returning(Loan.id)
)
_PAYMENT_COLUMNS = tuple(field for field in Payment._meta.sorted_fields if field.name != "id")
_INSERT_PAYMENT = Statement(
    lambda p: Payment.insert({field: getattr(p, field.name) for field in _PAYMENT_COLUMNS}).returning(
        Payment.id
    )
)
_MARK_REVERSED = Statement(
    lambda p: Payment.update(reverse_time_us=p.now, reversal_reason=p.reason).where(
        (Payment.id == p.payment) & Payment.reverse_time_us.is_null()
    )
)
_ANNOUNCE = Statement(
    lambda p: Loan.update(announced_delinquent_since=p.since).where(
        (Loan.id == p.loan) & (Loan.announced_delinquent_since == p.before)
    )
)
_ANNOUNCE_FROM_NONE = Statement(
    lambda p: Loan.update(announced_delinquent_since=p.since).where(
        (Loan.id == p.loan) & Loan.announced_delinquent_since.is_null()
    )
)


def _check_term_weeks(term_weeks: int) -> None:
    if not 0 <= term_weeks <= MAX_TERM_WEEKS:
        raise InvalidArgument(
            "term_weeks",
            f"must be between {MIN_TERM_WEEKS} and {MAX_TERM_WEEKS} (0 means {DEFAULT_TERM_WEEKS})",
        )


@functools.lru_cache(maxsize=4096)
def unpaid_installments(terms: LoanTerms) -> tuple[InstallmentView, ...]:
    """Every installment of ``terms``, none paid yet (views are immutable: cached per terms)."""
    return tuple(
        InstallmentView(week, terms.due_date(week), terms.installment_cents(week), None, None)
        for week in range(1, terms.term_weeks + 1)
    )


def terms_of(row) -> LoanTerms:
    """A loan row's terms."""
    return LoanTerms(**{name: getattr(row, name) for name in _TERM_COLUMNS})


def loan_view(row) -> LoanView:
    """A loan row as it stands now."""
    return LoanView(row.loan_id, terms_of(row), row.paid_weeks, row.paid_cents, row.create_time_us)


def payment_view(row, loan_id: str) -> PaymentView:
    """A payment row."""
    return PaymentView(
        payment_id=row.payment_id,
        loan_id=loan_id,
        amount_cents=row.amount_cents,
        payment_time_us=row.payment_time_us,
        first_week=row.first_week,
        last_week=row.last_week,
        outstanding_after_cents=row.outstanding_after_cents,
        request_id=row.request_id,
        value_date=row.value_date,
        reverse_time_us=row.reverse_time_us,
        reversal_reason=row.reversal_reason,
    )


def reason_text(value: str, field: str = "reason") -> str:
    """A reversal reason: 1-500 characters, not blank, one line without control characters.

    Control characters (Unicode category Cc: NUL, line breaks, tabs, escapes)
    would break the one-line records the reason is shown in (listings, the
    audit export, logs). Format characters such as the zero-width joiner of
    an emoji or a right-to-left mark are text and pass.
    """
    if not value.strip():
        raise InvalidArgument(field, "is required")
    if len(value) > MAX_REASON_CHARS:
        raise InvalidArgument(field, f"must be at most {MAX_REASON_CHARS} characters")
    if any(unicodedata.category(ch) in _NOT_TEXT for ch in value):
        raise InvalidArgument(field, "must be one line without control characters")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class _Loan:
    """What a change needs of the loan it changes: its row (read under its lock) and terms."""

    row: object
    terms: LoanTerms
    owner_user_id: str


class BillingCore:
    """The billing rules over the database.

    Reads take ``owner``, the internal id of the user whose loans they read
    (the caller, or the owner an operator names); changes take the `Actor`
    that makes them, which the audit trail records. ``on_events`` is told
    after a transaction that wrote events committed (the event hub wakes its
    watchers and numbers them).
    """

    def __init__(
        self,
        db: LendingDatabase,
        clock: Clock,
        page_tokens: pagination.PageTokens,
        *,
        on_events: Callable[[], None] | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._page_tokens = page_tokens
        self._on_events = on_events or (lambda: None)

    def _write(self, work):
        """Run ``work`` in a write transaction, then tell the event hub its events committed."""
        result = self._db.write_transaction(work)
        self._on_events()
        return result

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
        checks = fields.FieldChecks()  # every bad field named at once: a form is fixed in one round trip
        loan_id = checks.run(fields.loan_id, loan_id)
        principal = checks.run(
            parse_money, principal_amount, "principal_amount", max_cents=MAX_PRINCIPAL_CENTS
        )
        checks.run(_check_term_weeks, term_weeks)
        rate = checks.run(parse_rate, interest_rate, "interest_rate") if interest_rate else None
        start = (
            checks.run(
                fields.calendar_date,
                start_date,
                "start_date",
                low=fields.MIN_START_DATE,
                high=fields.MAX_START_DATE,
            )
            if start_date
            else None
        )
        checks.raise_any()

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
                return loan_view(existing)
            today = self._clock.today()
            terms = LoanTerms.build(
                principal,
                DEFAULT_RATE_E4 if rate is None else rate,
                term_weeks or DEFAULT_TERM_WEEKS,
                start or today,
            )
            now = self._clock.now_us()
            second_unpaid = terms.second_unpaid_due_date(0)
            values = {
                "owner": owner,
                "loan_id": loan_id,
                **{name: getattr(terms, name) for name in _TERM_COLUMNS},
                "paid_weeks": 0,
                "paid_cents": 0,
                "second_unpaid_due_date": second_unpaid,
                "create_time_us": now,
                "last_value_date": None,
                "announced_delinquent_since": None,
            }
            pk = self._db.run(
                _INSERT_LOAN, **{name: Loan._meta.fields[name].db_value(v) for name, v in values.items()}
            ).fetchone()[0]
            view = LoanView(loan_id, terms, 0, 0, now)
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
            owner_user_id = actor.user.user_id
            self._event(
                event_log.LOAN_CREATED, pk, loan_id, owner, owner_user_id, terms.start_date, view, now
            )
            # A back-dated start may make the loan delinquent from the outset: since the day after
            # its second installment fell due, as the daily close would have said then.
            second_unpaid = standing.second_unpaid_due_date(terms, 0)
            self._announce(
                pk, loan_id, owner, owner_user_id, terms, 0, None, today, now,
                started_on=second_unpaid + standing.ONE_DAY if second_unpaid is not None else None,
            )  # fmt: skip
            return view

        return self._write(create)

    def resolve_owner(self, user_id: str, loan_id: str) -> int:
        """The internal id of the user ``user_id`` (an operator naming a loan's owner).

        ``loan_id`` is checked first, exactly as without an owner. An unknown
        owner is then NotFound for the loan, as an unknown loan would be (the
        contract's word); text that cannot be a user id is unknown without a
        query (PostgreSQL text cannot even hold a NUL to compare).
        """
        loan_id = fields.loan_id(loan_id)
        if not fields.is_user_id(user_id):
            raise NotFound(f"loan {loan_id!r} not found")
        row = User.select(User.id).where(User.user_id == user_id).first()
        if row is None:
            raise NotFound(f"loan {loan_id!r} not found")
        return row.id

    def loan_row(self, owner: int, loan_id: str, *, for_update: bool = False):
        """The owner's loan row, or NotFound (also for other users' loans)."""
        statement = _LOAN_BY_KEY_LOCKED if for_update else _LOAN_BY_KEY
        row = self._db.first(statement, owner=owner, loan_id=fields.loan_id(loan_id))
        if row is None:
            raise NotFound(f"loan {loan_id!r} not found")
        return row

    def get_loan(self, owner: int, loan_id: str) -> LoanView:
        """One of the owner's loans, or NotFound (also for other users' loans)."""
        return loan_view(self.loan_row(owner, loan_id))

    def list_loans(self, owner: int, page_size: int = 0, page_token: str = "") -> Page:
        """The owner's loans, oldest first, keyset-paginated."""
        size = pagination.page_size(page_size)
        scope = f"loans|{owner}"
        rows, token = self._id_page(Loan.select().where(Loan.owner == owner), Loan, size, scope, page_token)
        return Page([loan_view(row) for row in rows], token)

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
        """Every installment with its due date, amount and the payment that completed it.

        Installment k is paid when the non-reversed payments, in value-date
        order, cover installments 1..k in full; the payment that completed it
        is the first whose running total reached that far.
        """
        loan = self.loan_row(owner, loan_id)
        terms = terms_of(loan)
        unpaid = unpaid_installments(terms)
        if not loan.paid_weeks:
            return ScheduleView(loan.loan_id, terms, list(unpaid))
        payments = self._db.all(_PAYMENTS_IN_VALUE_ORDER, loan=loan.id)
        installments, index = [], 0
        for due in unpaid[: loan.paid_weeks]:
            needed = standing.paid_through(terms, due.week)
            while index < len(payments) and payments[index].running_paid_cents < needed:
                index += 1
            if index == len(payments):  # the summary and the payments disagree: show only what is proven
                break
            completing = payments[index]
            installments.append(
                dataclasses.replace(
                    due, payment_id=completing.payment_id, payment_time_us=completing.payment_time_us
                )
            )
        installments += unpaid[len(installments) :]
        return ScheduleView(loan.loan_id, terms, installments)

    # -- payments ------------------------------------------------------------

    def make_payment(
        self,
        actor: Actor,
        loan_id: str,
        amount: str,
        request_id: str = "",
        *,
        owner: int | None = None,
        value_date: str = "",
    ) -> PaymentView:
        """Record a payment of the next whole installments; idempotent on ``request_id``.

        ``owner`` and ``value_date`` are for operators (the servicer checks the
        role): a collection on any borrower's loan, valued from the loan's
        start date to today. Accepted payments are audited in their own
        transaction; refused ones (any rule or validation error, not a
        database failure) afterwards.
        """
        try:
            return self._make_payment(actor, loan_id, amount, request_id, owner, value_date)
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

    def _make_payment(
        self, actor: Actor, loan_id: str, amount: str, request_id: str, owner: int | None, value_date: str
    ) -> PaymentView:
        caller = actor.user
        loan_owner = caller.id if owner is None else owner
        loan_id = fields.loan_id(loan_id)
        amount_cents = parse_money(amount, "amount", max_cents=MAX_TOTAL_CENTS)
        key = fields.request_id(request_id)
        today = self._clock.today()
        stated_value_date = (
            fields.calendar_date(value_date, "value_date", low=fields.MIN_START_DATE, high=today)
            if value_date
            else None
        )

        def pay() -> PaymentView:
            if key is not None:
                earlier = self._db.first(_PAYMENT_BY_REQUEST, caller=caller.id, key=key)
                if earlier is not None:
                    same = (
                        earlier.loan_loan_id == loan_id
                        and earlier.owner == loan_owner
                        and earlier.amount_cents == amount_cents
                        and (stated_value_date is None or earlier.value_date == stated_value_date)
                    )
                    if not same:
                        raise AlreadyExists(f"request_id {key!r} was already used for a different payment")
                    return payment_view(earlier, loan_id)
            # Locked until commit: concurrent changes to one loan take turns.
            row = self.loan_row(loan_owner, loan_id, for_update=True)
            loan = _Loan(row, terms_of(row), self._owner_user_id(actor, loan_owner))
            day = stated_value_date or today
            if stated_value_date is not None and stated_value_date < loan.terms.start_date:
                raise InvalidArgument(
                    "value_date",
                    f"must not be before the loan's start date {loan.terms.start_date.isoformat()}",
                )
            covered = standing.accept_payment(loan.terms, row.paid_cents, amount_cents, today)
            now = self._clock.now_us()
            announced = self._catch_up(row, loan.terms, loan.owner_user_id, today, now)
            running, summary = ledger.add_payment(self._db, row, loan.terms, amount_cents, day)
            payment = PaymentView(
                payment_id=str(uuid.uuid4()),
                loan_id=loan_id,
                amount_cents=amount_cents,
                payment_time_us=now,
                first_week=row.paid_weeks + 1,
                last_week=covered,
                outstanding_after_cents=loan.terms.total_cents - summary.paid_cents,
                request_id=key,
                value_date=day,
            )
            self._db.run(
                _INSERT_PAYMENT,
                payment_id=payment.payment_id,
                loan=row.id,
                owner=loan_owner,
                request_id=key,
                amount_cents=amount_cents,
                first_week=payment.first_week,
                last_week=payment.last_week,
                outstanding_after_cents=payment.outstanding_after_cents,
                payment_time_us=now,
                recorded_by=caller.id,
                value_date=Payment.value_date.db_value(day),
                running_paid_cents=running,
                reverse_time_us=None,
                reversal_reason=None,
            )
            if row.last_value_date is not None and day < row.last_value_date:
                ledger.after_insert_backdated(self._db, row, loan.terms)
            audit.record(
                self._db,
                actor,
                "payment.accepted",
                subject=loan.owner_user_id,
                loan_id=loan_id,
                summary={
                    "payment_id": payment.payment_id,
                    "amount_cents": amount_cents,
                    "weeks": [payment.first_week, payment.last_week],
                    "outstanding_after_cents": payment.outstanding_after_cents,
                    "request_id": key,
                    "value_date": day.isoformat(),
                },
            )
            self._event(
                event_log.PAYMENT_ACCEPTED, row.id, loan_id, loan_owner, loan.owner_user_id, day, payment, now
            )
            if summary.paid_weeks == loan.terms.term_weeks:
                after = LoanView(
                    loan_id, loan.terms, summary.paid_weeks, summary.paid_cents, row.create_time_us
                )
                self._event(
                    event_log.LOAN_PAID_OFF, row.id, loan_id, loan_owner, loan.owner_user_id, day, after, now
                )
            self._announce(
                row.id,
                loan_id,
                loan_owner,
                loan.owner_user_id,
                loan.terms,
                summary.paid_cents,
                announced,
                today,
                now,
                ended_on=day,  # a cure takes effect on the value date of the payment that cured it
            )
            return payment

        return self._write(pay)

    def _owner_user_id(self, actor: Actor, owner: int) -> str:
        if owner == actor.user.id:
            return actor.user.user_id
        return self._db.first(_USER_ID, user=owner).user_id

    def reverse_payment(self, actor: Actor, payment_id: str, reason: str) -> PaymentView:
        """Reverse a payment (operators; the servicer checks the role): it stops counting.

        The record stays, marked. The loan's later payments are re-applied
        oldest first, a paid-off loan reopens, and its schedule, standing,
        history and reports change as if the payment had never been made.
        Reversing a reversed payment returns it unchanged.
        """
        payment_id = fields.payment_id(payment_id)
        reason = reason_text(reason)
        today = self._clock.today()

        def reverse() -> PaymentView:
            found = self._db.first(_PAYMENT_BY_ID, payment_id=payment_id)
            if found is None:
                raise NotFound(f"payment {payment_id!r} not found")
            row = self._db.first(_LOAN_BY_ID_LOCKED, loan=found.loan)
            # Read again under the loan's lock: a racing reversal may have won.
            payment = self._db.first(_PAYMENT_BY_ID, payment_id=payment_id)
            if payment.reverse_time_us is not None:
                return payment_view(payment, payment.loan_loan_id)
            terms = terms_of(row)
            now = self._clock.now_us()
            owner_user_id = payment.user_user_id
            announced = self._catch_up(row, terms, owner_user_id, today, now)
            self._db.run(_MARK_REVERSED, payment=payment.id, now=now, reason=reason)
            summary = ledger.remove_payment(self._db, row, terms, payment)
            view = dataclasses.replace(
                payment_view(payment, row.loan_id), reverse_time_us=now, reversal_reason=reason
            )
            audit.record(
                self._db,
                actor,
                "payment.reverse",
                subject=owner_user_id,
                loan_id=row.loan_id,
                summary={
                    "payment_id": payment_id,
                    "amount_cents": payment.amount_cents,
                    "value_date": payment.value_date.isoformat(),
                    "reason": reason[:MAX_REASON_CHARS],
                    "outstanding_after_cents": terms.total_cents - summary.paid_cents,
                },
            )
            effective = payment.value_date
            self._event(
                event_log.PAYMENT_REVERSED,
                row.id,
                row.loan_id,
                row.owner,
                owner_user_id,
                effective,
                view,
                now,
            )
            if row.paid_weeks == terms.term_weeks and summary.paid_weeks < terms.term_weeks:
                after = LoanView(
                    row.loan_id, terms, summary.paid_weeks, summary.paid_cents, row.create_time_us
                )
                self._event(
                    event_log.LOAN_REOPENED,
                    row.id,
                    row.loan_id,
                    row.owner,
                    owner_user_id,
                    effective,
                    after,
                    now,
                )
            self._announce(
                row.id,
                row.loan_id,
                row.owner,
                owner_user_id,
                terms,
                summary.paid_cents,
                announced,
                today,
                now,
                started_on=lambda: self._open_period_start(row.id, terms, today),
            )
            return view

        return self._write(reverse)

    def list_payments(self, owner: int, loan_id: str, page_size: int = 0, page_token: str = "") -> Page:
        """A loan's payments in recording order, reversed ones included, keyset-paginated."""
        size = pagination.page_size(page_size)
        loan = self.loan_row(owner, loan_id)
        scope = f"payments|{owner}|{loan.id}"
        query = Payment.select().where(Payment.loan == loan.id)
        rows, token = self._id_page(query, Payment, size, scope, page_token)
        return Page([payment_view(row, loan.loan_id) for row in rows], token)

    # -- events --------------------------------------------------------------

    def _event(
        self,
        event_type: str,
        loan_pk: int,
        loan_id: str,
        owner: int,
        owner_user_id: str,
        effective: dt.date,
        resource,
        now_us: int,
    ) -> None:
        event_log.record(
            self._db,
            event_type,
            loan_pk=loan_pk,
            loan_id=loan_id,
            owner_pk=owner,
            owner_user_id=owner_user_id,
            occur_time_us=now_us,
            effective_date=effective,
            resource=resource,
        )

    def _catch_up(self, row, terms: LoanTerms, owner_user_id: str, today: dt.date, now_us: int):
        """Announce a delinquency that days passing began and no daily close has announced yet.

        Called under the loan's lock before a change, so that the change's
        own events follow it: every change of today's standing gets its own
        event, in the order they happened. Returns what is now announced.
        """
        announced = row.announced_delinquent_since
        second_unpaid = standing.second_unpaid_due_date(terms, row.paid_cents)
        if announced is None and second_unpaid is not None and second_unpaid < today:
            since = second_unpaid + standing.ONE_DAY
            self._delinquency_event(
                event_log.DELINQUENCY_STARTED, row.id, row.loan_id, row.owner, owner_user_id, terms,
                row.paid_cents, since, now_us, None,
            )  # fmt: skip
            return since
        return announced

    def _announce(
        self,
        loan_pk: int,
        loan_id: str,
        owner: int,
        owner_user_id: str,
        terms: LoanTerms,
        paid_cents: int,
        announced_since: dt.date | None,
        today: dt.date,
        now_us: int,
        *,
        started_on: dt.date | Callable[[], dt.date | None] | None = None,
        ended_on: dt.date | None = None,
    ) -> None:
        """Tell the event log when today's standing now differs from what it last announced.

        The event's effective date is the day the standing changed as known
        now: ``started_on`` (or a function giving it, called only when a
        delinquency starts) and ``ended_on``, else today. An end is never
        dated before the start it ends was announced from.
        """
        delinquent = standing.is_delinquent_today(terms, paid_cents, today)
        if delinquent and announced_since is None:
            since = started_on() if callable(started_on) else started_on
            self._delinquency_event(
                event_log.DELINQUENCY_STARTED, loan_pk, loan_id, owner, owner_user_id, terms,
                paid_cents, since or today, now_us, None,
            )  # fmt: skip
        elif not delinquent and announced_since is not None:
            self._delinquency_event(
                event_log.DELINQUENCY_ENDED, loan_pk, loan_id, owner, owner_user_id, terms,
                paid_cents, max(ended_on or today, announced_since), now_us, announced_since,
            )  # fmt: skip

    def _open_period_start(self, loan_pk: int, terms: LoanTerms, today: dt.date) -> dt.date | None:
        """The first day of the delinquency still running today, by value dates (None if none runs)."""
        periods = standing.delinquency_history(terms, ledger.timeline(self._db, loan_pk), today)
        if periods and periods[-1].end is None:
            return periods[-1].start
        return None

    def _delinquency_event(
        self,
        event_type: str,
        loan_pk: int,
        loan_id: str,
        owner: int,
        owner_user_id: str,
        terms: LoanTerms,
        paid_cents: int,
        effective: dt.date,
        now_us: int,
        announced_before: dt.date | None,
    ) -> None:
        status = DelinquencyView(loan_id, standing.standing_of(terms, paid_cents, effective), owner_user_id)
        self._event(event_type, loan_pk, loan_id, owner, owner_user_id, effective, status, now_us)
        since = Loan.announced_delinquent_since.db_value(
            effective if event_type == event_log.DELINQUENCY_STARTED else None
        )
        if announced_before is None:
            self._db.run(_ANNOUNCE_FROM_NONE, loan=loan_pk, since=since)
        else:
            self._db.run(
                _ANNOUNCE,
                loan=loan_pk,
                since=since,
                before=Loan.announced_delinquent_since.db_value(announced_before),
            )
