"""Peewee models: users, loans, payments, delinquency history, the event log and the security tables.

A loan row carries its terms plus a running summary of its non-reversed
payments (amount and installments paid, due date of the second unpaid
installment, latest value date), so every read of the loan as it stands is
one indexed lookup and today's delinquency list is one index range scan.
Payments are the ledger: each carries the loan's running total in value-date
order, so the loan as of any past date is one indexed lookup too. The
summary, the running totals and the delinquency spans change in the same
transaction as the payments, so they always equal what the payments say
(the crash and property tests check exactly that).
"""

from __future__ import annotations

from peewee import (
    AutoField,
    BigAutoField,
    BigIntegerField,
    CharField,
    Check,
    DateField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)


class BaseModel(Model):
    """Every model; ``open_database`` binds them all to the database the process serves."""

    class Meta:
        legacy_table_names = False


class User(BaseModel):
    """An account. ``user_id`` is the public id; ``id`` never leaves the service."""

    id = AutoField()
    user_id = CharField(max_length=36, unique=True)
    username = CharField(max_length=150)
    username_key = CharField(max_length=150, unique=True)  # lower-cased for uniqueness
    # Schema v1 kept the address here in clear; since v2 it is always "" (the
    # server seals any leftover on start) and the address lives in email_sealed.
    email = CharField(max_length=254)
    password_hash = CharField(max_length=255)
    create_time_us = BigIntegerField()  # microseconds since the Unix epoch, UTC
    # -- schema v2 (nullable: added to existing tables without a rebuild) --
    role = CharField(max_length=16, null=True)  # NULL: an ordinary user; "operator"
    email_sealed = TextField(null=True)  # AES-GCM sealed (core.crypto); NULL once erased
    erased_time_us = BigIntegerField(null=True)  # set by `users erase`: the account is blocked


class Loan(BaseModel):
    """A loan: agreed terms (amounts in cents) and a summary of what has been paid."""

    id = AutoField()
    owner = ForeignKeyField(User, on_delete="RESTRICT", index=False)
    loan_id = CharField(max_length=64)
    principal_cents = BigIntegerField()
    rate_e4 = IntegerField()  # flat interest in 1/10000ths
    term_weeks = IntegerField()
    start_date = DateField()
    total_cents = BigIntegerField()
    weekly_cents = BigIntegerField()
    final_cents = BigIntegerField()
    paid_weeks = IntegerField(default=0)
    paid_cents = BigIntegerField(default=0)
    # Due date of the second unpaid installment: delinquent on any later day.
    # NULL once fewer than two installments remain.
    second_unpaid_due_date = DateField(null=True)
    create_time_us = BigIntegerField()
    # -- schema v3 (nullable: added to the existing table without a rebuild) --
    # The latest value date of a non-reversed payment: the summary above is the
    # loan as it stood at the end of any day from this one on. NULL: no payment.
    last_value_date = DateField(null=True)
    # The first day of the delinquency the event log last announced (NULL: it
    # last said "not delinquent"); the daily close and every write compare it
    # with today's standing and emit the change.
    announced_delinquent_since = DateField(null=True)

    class Meta:
        indexes = (
            (("owner", "loan_id"), True),
            (("owner", "second_unpaid_due_date", "id"), False),
            # v2: the operators' portfolio-wide delinquency scan.
            (("second_unpaid_due_date", "id"), False),
        )
        constraints = [
            Check("paid_weeks >= 0 AND paid_weeks <= term_weeks"),
            Check("paid_cents >= 0 AND paid_cents <= total_cents"),
        ]


# The daily close's queue: loans whose delinquency the event log has not announced.
Loan.add_index(Loan.index(Loan.second_unpaid_due_date, where=Loan.announced_delinquent_since.is_null()))


class Payment(BaseModel):
    """One payment, as recorded; reversed ones stay, marked, and stop counting.

    ``first_week``, ``last_week`` and ``outstanding_after_cents`` describe the
    loan when the payment was recorded. ``running_paid_cents`` is the loan's
    total of non-reversed payments up to and including this one in value-date
    order (then recording order), kept true as back-dated payments and
    reversals arrive: the loan as of any date is the last such total valued on
    or before it.
    """

    id = AutoField()
    payment_id = CharField(max_length=36, unique=True)
    loan = ForeignKeyField(Loan, on_delete="RESTRICT", index=False)
    owner = ForeignKeyField(User, on_delete="RESTRICT", index=False)  # the loan's owner
    request_id = CharField(max_length=128, null=True)
    amount_cents = BigIntegerField()
    first_week = IntegerField()
    last_week = IntegerField()
    outstanding_after_cents = BigIntegerField()
    payment_time_us = BigIntegerField()
    # -- schema v3 --
    recorded_by = ForeignKeyField(User, on_delete="RESTRICT", index=False)  # the borrower or an operator
    value_date = DateField()  # when the money was received, in the service time zone
    running_paid_cents = BigIntegerField()
    reverse_time_us = BigIntegerField(null=True)  # NULL: counts
    reversal_reason = TextField(null=True)

    class Meta:
        indexes = (
            # AIP-155 idempotency: one payment per (caller, request_id).
            (("recorded_by", "request_id"), True),
        )
        constraints = [
            Check("amount_cents > 0"),
            Check("first_week >= 1 AND last_week >= first_week"),
        ]


# The value-ordered ledger of each loan: its non-reversed payments, for "as of" lookups.
Payment.add_index(
    Payment.index(Payment.loan, Payment.value_date, Payment.id, where=Payment.reverse_time_us.is_null())
)


class DelinquencySpan(BaseModel):
    """One calendar month of a finished stretch of delinquent days of a loan with constant payments.

    A loan's delinquency as of a past date D is in the span covering D; a
    span is stored once per month it overlaps, so "every loan delinquent as
    of D" is one index range in D's month, not a scan of the history. The
    stretch still running is the loan row itself (``second_unpaid_due_date``
    from ``last_value_date`` on). Rebuilt from the payments whenever a
    back-dated payment or a reversal rewrites a loan's past.
    """

    id = AutoField()
    month = DateField()  # the first day of a month that [start_date, end_date) overlaps
    loan = ForeignKeyField(Loan, on_delete="RESTRICT")
    owner = ForeignKeyField(User, on_delete="RESTRICT", index=False)
    start_date = DateField()  # first delinquent day
    end_date = DateField()  # first day no longer in this stretch
    second_unpaid_due_date = DateField()  # constant within the stretch: the "most overdue" order

    class Meta:
        indexes = (
            (("month", "second_unpaid_due_date", "loan"), False),
            (("owner", "month", "second_unpaid_due_date", "loan"), False),
        )


class LoginThrottle(BaseModel):
    """Failed sign-ins of one account, shared by every server process through the database."""

    id = AutoField()
    user = ForeignKeyField(User, on_delete="RESTRICT", unique=True)
    failures = IntegerField()  # in the current window
    window_start_us = BigIntegerField()  # first failure of the current window
    locked_until_us = BigIntegerField()  # 0: not locked
    lockouts = IntegerField()  # consecutive lockouts since the last successful sign-in


class TokenFamily(BaseModel):
    """The refresh tokens descended from one login; only the newest (``current_jti``) may be used."""

    id = AutoField()
    family_id = CharField(max_length=32, unique=True)
    user = ForeignKeyField(User, on_delete="RESTRICT")
    current_jti = CharField(max_length=32)
    create_time_us = BigIntegerField()
    revoked_time_us = BigIntegerField(null=True)
    revoked_reason = CharField(max_length=32, null=True)  # logout, reuse, erased


class AuditEvent(BaseModel):
    """One append-only audit record. The service inserts these and never updates or deletes them."""

    id = AutoField()
    time_us = BigIntegerField(index=True)
    event = CharField(max_length=64)  # e.g. login.failure, payment.accepted
    outcome = CharField(max_length=16)  # ok, refused, denied
    actor = CharField(max_length=64)  # public user id, "cli:<os user>" or "" (anonymous)
    subject = CharField(max_length=64, index=True)  # the user the event is about, or ""
    peer = CharField(max_length=128)
    rpc = CharField(max_length=128)
    request_id = CharField(max_length=128)
    loan_id = CharField(max_length=64)
    summary = TextField()  # JSON: what changed; never passwords, tokens or emails


class Event(BaseModel):
    """One entry of the loan event log, written in the transaction of the change it describes.

    ``sequence`` is what consumers resume from: unique, increasing in commit
    order. SQLite has one writer, so it is the row id, given at insert. On
    PostgreSQL a transaction holding a lower id can commit after one holding
    a higher id, so ``sequence`` stays NULL until the sequencer
    (core/event_log.py) numbers committed events in order; readers never see
    an event without one.
    """

    id = BigAutoField()
    sequence = BigIntegerField(null=True, unique=True)
    type = CharField(max_length=32)  # EventType name without its prefix, e.g. PAYMENT_ACCEPTED
    loan = ForeignKeyField(Loan, on_delete="RESTRICT", index=False, column_name="loan_row_id")
    loan_id = CharField(max_length=64)  # the client's loan id, as the event shows it
    owner = ForeignKeyField(User, on_delete="RESTRICT", index=False)
    owner_user_id = CharField(max_length=36)  # the owner's public id, as the event shows it
    occur_time_us = BigIntegerField()
    effective_date = DateField()
    payload = TextField()  # JSON of the resource the event is about (core views)

    class Meta:
        indexes = (
            (("owner", "sequence"), False),
            (("loan_id", "sequence"), False),
        )


# The sequencer's queue: events not numbered yet (PostgreSQL only ever has any for long).
Event.add_index(Event.index(Event.id, where=Event.sequence.is_null()))


class DayClose(BaseModel):
    """A day the daily close has finished: the delinquencies that began that day were announced."""

    day = DateField(primary_key=True)
    closed_time_us = BigIntegerField()
    delinquencies_started = IntegerField()


ALL_MODELS = (User, Loan, Payment, DelinquencySpan, LoginThrottle, TokenFamily, AuditEvent, Event, DayClose)
