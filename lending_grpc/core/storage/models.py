"""Peewee models: users, loans, payments, and the security tables (sign-in throttle, token families, audit).

A loan row carries its terms plus a running summary (installments paid,
amount paid, due date of the second unpaid installment), so every read is one
indexed lookup and the portfolio delinquency query is one index range scan.
Payments are the ledger: the summary is updated in the same transaction as
each payment insert, so it always equals their sums (the crash and property
tests check exactly that).
"""

from __future__ import annotations

from peewee import (
    AutoField,
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


class Payment(BaseModel):
    """One accepted payment covering installments first_week..last_week."""

    id = AutoField()
    payment_id = CharField(max_length=36, unique=True)
    loan = ForeignKeyField(Loan, on_delete="RESTRICT", index=False)
    owner = ForeignKeyField(User, on_delete="RESTRICT", index=False)
    request_id = CharField(max_length=128, null=True)
    amount_cents = BigIntegerField()
    first_week = IntegerField()
    last_week = IntegerField()
    outstanding_after_cents = BigIntegerField()
    payment_time_us = BigIntegerField()

    class Meta:
        indexes = (
            # AIP-155 idempotency: one payment per (owner, request_id).
            (("owner", "request_id"), True),
            # No installment can be paid twice, whatever the application does.
            (("loan", "first_week"), True),
        )
        constraints = [
            Check("amount_cents > 0"),
            Check("first_week >= 1 AND last_week >= first_week"),
        ]


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


ALL_MODELS = (User, Loan, Payment, LoginThrottle, TokenFamily, AuditEvent)
