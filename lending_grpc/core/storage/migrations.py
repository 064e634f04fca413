"""Versioned schema migrations that run the same way on SQLite and PostgreSQL.

Each migration is a function of the database, applied once, in its own
transaction, and recorded in ``schema_version``. A released migration never
changes: the baseline (version 1) creates tables from model classes frozen
here, not from the live models in ``models.py``, so a database created today
and one upgraded step by step end up identical.

Migrations hold a lock while they run (an advisory lock on PostgreSQL, the
write lock on SQLite), so several server processes starting together
migrate exactly once.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from zoneinfo import ZoneInfo

from peewee import (
    AutoField,
    BigAutoField,
    BigIntegerField,
    CharField,
    Check,
    Database,
    DateField,
    ForeignKeyField,
    IntegerField,
    Model,
    PostgresqlDatabase,
    TextField,
    fn,
)
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as apply_operations

from lending_grpc.core import standing
from lending_grpc.core.schedule import LoanTerms
from lending_grpc.core.storage.database import DatabaseError, is_database_failure

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every lending-grpc process.
_MIGRATION_LOCK_KEY = 0x6C656E64  # "lend"


class SchemaVersion(Model):
    """One row per applied migration."""

    version = IntegerField(primary_key=True)
    applied_time_us = BigIntegerField()

    class Meta:
        table_name = "schema_version"


# -- version 1: the baseline, frozen as released ------------------------------


def _v1_baseline(db: Database, time_zone: str) -> None:
    # Classes named like the live models: Peewee derives index names from them.
    class User(Model):
        id = AutoField()
        user_id = CharField(max_length=36, unique=True)
        username = CharField(max_length=150)
        username_key = CharField(max_length=150, unique=True)
        email = CharField(max_length=254)
        password_hash = CharField(max_length=255)
        create_time_us = BigIntegerField()

        class Meta:
            table_name = "user"

    class Loan(Model):
        id = AutoField()
        owner = ForeignKeyField(User, on_delete="RESTRICT", index=False, column_name="owner_id")
        loan_id = CharField(max_length=64)
        principal_cents = BigIntegerField()
        rate_e4 = IntegerField()
        term_weeks = IntegerField()
        start_date = DateField()
        total_cents = BigIntegerField()
        weekly_cents = BigIntegerField()
        final_cents = BigIntegerField()
        paid_weeks = IntegerField(default=0)
        paid_cents = BigIntegerField(default=0)
        second_unpaid_due_date = DateField(null=True)
        create_time_us = BigIntegerField()

        class Meta:
            table_name = "loan"
            indexes = (
                (("owner", "loan_id"), True),
                (("owner", "second_unpaid_due_date", "id"), False),
            )
            constraints = [
                Check("paid_weeks >= 0 AND paid_weeks <= term_weeks"),
                Check("paid_cents >= 0 AND paid_cents <= total_cents"),
            ]

    class Payment(Model):
        id = AutoField()
        payment_id = CharField(max_length=36, unique=True)
        loan = ForeignKeyField(Loan, on_delete="RESTRICT", index=False, column_name="loan_id")
        owner = ForeignKeyField(User, on_delete="RESTRICT", index=False, column_name="owner_id")
        request_id = CharField(max_length=128, null=True)
        amount_cents = BigIntegerField()
        first_week = IntegerField()
        last_week = IntegerField()
        outstanding_after_cents = BigIntegerField()
        payment_time_us = BigIntegerField()

        class Meta:
            table_name = "payment"
            indexes = (
                (("owner", "request_id"), True),
                (("loan", "first_week"), True),
            )
            constraints = [
                Check("amount_cents > 0"),
                Check("first_week >= 1 AND last_week >= first_week"),
            ]

    models = (User, Loan, Payment)
    with db.bind_ctx(models, bind_refs=False, bind_backrefs=False):
        db.create_tables(models)


# -- version 2: roles, sealed emails, erasure, sign-in throttle, token families, audit --


_AUDIT_APPEND_ONLY = """
CREATE FUNCTION audit_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_event is append-only';
END $$;
CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_event
    FOR EACH STATEMENT EXECUTE FUNCTION audit_event_append_only();
"""


def _v2_security(db: Database, time_zone: str) -> None:
    # Nullable columns: SQLite adds them in place (a NOT NULL one would mean
    # rebuilding "user", which loans and payments reference).
    migrator = SchemaMigrator.from_database(db)
    apply_operations(
        migrator.add_column("user", "role", CharField(max_length=16, null=True)),
        migrator.add_column("user", "email_sealed", TextField(null=True)),
        migrator.add_column("user", "erased_time_us", BigIntegerField(null=True)),
        migrator.add_index("loan", ("second_unpaid_due_date", "id"), False),
    )

    class User(Model):  # referenced only; never created here
        id = AutoField()

        class Meta:
            table_name = "user"

    class LoginThrottle(Model):
        id = AutoField()
        user = ForeignKeyField(User, on_delete="RESTRICT", unique=True, column_name="user_id")
        failures = IntegerField()
        window_start_us = BigIntegerField()
        locked_until_us = BigIntegerField()
        lockouts = IntegerField()

        class Meta:
            table_name = "login_throttle"
            legacy_table_names = False  # index names as the live models make them

    class TokenFamily(Model):
        id = AutoField()
        family_id = CharField(max_length=32, unique=True)
        user = ForeignKeyField(User, on_delete="RESTRICT", column_name="user_id")
        current_jti = CharField(max_length=32)
        create_time_us = BigIntegerField()
        revoked_time_us = BigIntegerField(null=True)
        revoked_reason = CharField(max_length=32, null=True)

        class Meta:
            table_name = "token_family"
            legacy_table_names = False  # index names as the live models make them

    class AuditEvent(Model):
        id = AutoField()
        time_us = BigIntegerField(index=True)
        event = CharField(max_length=64)
        outcome = CharField(max_length=16)
        actor = CharField(max_length=64)
        subject = CharField(max_length=64, index=True)
        peer = CharField(max_length=128)
        rpc = CharField(max_length=128)
        request_id = CharField(max_length=128)
        loan_id = CharField(max_length=64)
        summary = TextField()

        class Meta:
            table_name = "audit_event"
            legacy_table_names = False  # index names as the live models make them

    models = (LoginThrottle, TokenFamily, AuditEvent)
    with db.bind_ctx((User, *models), bind_refs=False, bind_backrefs=False):
        db.create_tables(models)
    if isinstance(db, PostgresqlDatabase):
        # Belt and braces: the code has no UPDATE or DELETE of audit rows, and
        # the database refuses them too. (SQLite: the file's owner can do anything.)
        db.execute_sql(_AUDIT_APPEND_ONLY)


# -- version 3: value dates, reversals, the running totals and delinquency spans --


def _v3_payment(table_name: str) -> type[Model]:
    """The payment table of version 3, under ``table_name`` (SQLite rebuilds it under another name)."""

    class User(Model):  # referenced only
        id = AutoField()

        class Meta:
            table_name = "user"

    class Loan(Model):  # referenced only
        id = AutoField()

        class Meta:
            table_name = "loan"

    class Payment(Model):
        id = AutoField()
        payment_id = CharField(max_length=36, unique=True)
        loan = ForeignKeyField(Loan, on_delete="RESTRICT", index=False, column_name="loan_id")
        owner = ForeignKeyField(User, on_delete="RESTRICT", index=False, column_name="owner_id")
        request_id = CharField(max_length=128, null=True)
        amount_cents = BigIntegerField()
        first_week = IntegerField()
        last_week = IntegerField()
        outstanding_after_cents = BigIntegerField()
        payment_time_us = BigIntegerField()
        recorded_by = ForeignKeyField(User, on_delete="RESTRICT", index=False, column_name="recorded_by_id")
        value_date = DateField()
        running_paid_cents = BigIntegerField()
        reverse_time_us = BigIntegerField(null=True)
        reversal_reason = TextField(null=True)

        class Meta:
            legacy_table_names = False
            indexes = ((("recorded_by", "request_id"), True),)
            constraints = [
                Check("amount_cents > 0"),
                Check("first_week >= 1 AND last_week >= first_week"),
            ]

    Payment._meta.table_name = table_name
    Payment.add_index(
        Payment.index(Payment.loan, Payment.value_date, Payment.id, where=Payment.reverse_time_us.is_null())
    )
    return Payment


_V3_PAYMENT_COLUMNS = (
    "id, payment_id, loan_id, owner_id, request_id, amount_cents, first_week, last_week, "
    "outstanding_after_cents, payment_time_us, recorded_by_id, value_date, running_paid_cents, "
    "reverse_time_us, reversal_reason"
)


def _v3_payments_sqlite(db: Database, time_zone: str) -> None:
    """SQLite cannot add NOT NULL columns in place: rebuild the table with them, filled in."""
    zone = ZoneInfo(time_zone)

    def local_date(micros: int) -> str:
        return dt.datetime.fromtimestamp(micros / 1_000_000, zone).date().isoformat()

    db.connection().create_function("lending_local_date", 1, local_date, deterministic=True)
    rebuilt = _v3_payment("payment_v3")
    with db.bind_ctx([rebuilt], bind_refs=False, bind_backrefs=False):
        rebuilt._schema.create_table()
    # Until version 3 every payment was valued the day it was recorded and none
    # was ever reversed, so each payment's running total is the loan's total
    # minus what was outstanding after it.
    db.execute_sql(
        f"INSERT INTO payment_v3 ({_V3_PAYMENT_COLUMNS}) "
        "SELECT p.id, p.payment_id, p.loan_id, p.owner_id, p.request_id, p.amount_cents, p.first_week, "
        "p.last_week, p.outstanding_after_cents, p.payment_time_us, p.owner_id, "
        "lending_local_date(p.payment_time_us), l.total_cents - p.outstanding_after_cents, NULL, NULL "
        "FROM payment p JOIN loan l ON l.id = p.loan_id"
    )
    db.execute_sql("DROP TABLE payment")
    db.execute_sql('ALTER TABLE "payment_v3" RENAME TO "payment"')
    final = _v3_payment("payment")
    with db.bind_ctx([final], bind_refs=False, bind_backrefs=False):
        final._schema.create_indexes()


def _v3_payments_postgresql(db: Database, time_zone: str) -> None:
    target = _v3_payment("payment")
    db.execute_sql("DROP INDEX payment_owner_id_request_id")
    db.execute_sql("DROP INDEX payment_loan_id_first_week")
    # Nullable first, filled in below, then NOT NULL.
    db.execute_sql(
        'ALTER TABLE payment ADD COLUMN recorded_by_id INTEGER REFERENCES "user" (id) ON DELETE RESTRICT, '
        "ADD COLUMN value_date DATE, ADD COLUMN running_paid_cents BIGINT, "
        "ADD COLUMN reverse_time_us BIGINT, ADD COLUMN reversal_reason TEXT"
    )
    # Until version 3 every payment was valued the day it was recorded and none
    # was ever reversed: see the SQLite twin above.
    db.execute_sql(
        "UPDATE payment p SET recorded_by_id = p.owner_id, "
        "value_date = (to_timestamp(p.payment_time_us / 1000000.0) AT TIME ZONE %s)::date, "
        "running_paid_cents = l.total_cents - p.outstanding_after_cents "
        "FROM loan l WHERE l.id = p.loan_id",
        (time_zone,),
    )
    for column in ("recorded_by_id", "value_date", "running_paid_cents"):
        db.execute_sql(f"ALTER TABLE payment ALTER COLUMN {column} SET NOT NULL")
    with db.bind_ctx([target], bind_refs=False, bind_backrefs=False):
        target._schema.create_indexes(safe=True)


def _v3_servicing(db: Database, time_zone: str) -> None:
    if isinstance(db, PostgresqlDatabase):
        _v3_payments_postgresql(db, time_zone)
    else:
        _v3_payments_sqlite(db, time_zone)
    migrator = SchemaMigrator.from_database(db)
    apply_operations(
        migrator.add_column("loan", "last_value_date", DateField(null=True)),
        migrator.add_column("loan", "announced_delinquent_since", DateField(null=True)),
    )
    db.execute_sql(
        'CREATE INDEX "loan_second_unpaid_due_date" ON "loan" ("second_unpaid_due_date") '
        'WHERE ("announced_delinquent_since" IS NULL)'
    )

    class User(Model):  # referenced only
        id = AutoField()

        class Meta:
            table_name = "user"

    class Loan(Model):  # referenced only
        id = AutoField()

        class Meta:
            table_name = "loan"

    class DelinquencySpan(Model):
        id = AutoField()
        month = DateField()
        loan = ForeignKeyField(Loan, on_delete="RESTRICT", column_name="loan_id")
        owner = ForeignKeyField(User, on_delete="RESTRICT", index=False, column_name="owner_id")
        start_date = DateField()
        end_date = DateField()
        second_unpaid_due_date = DateField()

        class Meta:
            table_name = "delinquency_span"
            legacy_table_names = False
            indexes = (
                (("month", "second_unpaid_due_date", "loan"), False),
                (("owner", "month", "second_unpaid_due_date", "loan"), False),
            )

    with db.bind_ctx([User, Loan, DelinquencySpan], bind_refs=False, bind_backrefs=False):
        db.create_tables([DelinquencySpan])
    _v3_backfill(db, time_zone)


def _as_date(value) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(value)


def _v3_backfill(db: Database, time_zone: str) -> None:
    """Each loan's latest value date, its finished delinquent spans, and what counts as announced.

    Loans already delinquent today count as announced (since today): the
    event log starts with this version, and consumers learn of a delinquency
    that began before it only when it ends.
    """
    today = dt.datetime.now(ZoneInfo(time_zone)).date()
    placeholder = "%s" if isinstance(db, PostgresqlDatabase) else "?"
    loans = db.execute_sql(
        "SELECT id, owner_id, principal_cents, rate_e4, term_weeks, start_date, total_cents, weekly_cents, "
        "final_cents, second_unpaid_due_date FROM loan ORDER BY id"
    ).fetchall()
    for loan_pk, owner_pk, principal, rate, term, start, total, weekly, final, second_unpaid in loans:
        terms = LoanTerms(principal, rate, term, _as_date(start), total, weekly, final)
        steps = standing.steps(
            (_as_date(day), running)
            for day, running in db.execute_sql(
                f"SELECT value_date, running_paid_cents FROM payment WHERE loan_id = {placeholder} "
                "AND reverse_time_us IS NULL ORDER BY value_date, id",
                (loan_pk,),
            ).fetchall()
        )
        if steps:
            db.execute_sql(
                f"UPDATE loan SET last_value_date = {placeholder} WHERE id = {placeholder}",
                (steps[-1].value_date, loan_pk),
            )
        if second_unpaid is not None and _as_date(second_unpaid) < today:
            db.execute_sql(
                f"UPDATE loan SET announced_delinquent_since = {placeholder} WHERE id = {placeholder}",
                (today, loan_pk),
            )
        for span in standing.delinquent_spans(terms, steps):
            if span.end is None:
                continue
            month = span.start.replace(day=1)
            while month < span.end:
                db.execute_sql(
                    "INSERT INTO delinquency_span (month, loan_id, owner_id, start_date, end_date, "
                    f"second_unpaid_due_date) VALUES ({', '.join([placeholder] * 6)})",
                    (month, loan_pk, owner_pk, span.start, span.end, span.second_unpaid_due_date),
                )
                month = (month + dt.timedelta(days=32)).replace(day=1)


# -- version 4: the event log and the daily close ---------------------------------------


def _v4_events(db: Database, time_zone: str) -> None:
    class User(Model):  # referenced only
        id = AutoField()

        class Meta:
            table_name = "user"

    class Loan(Model):  # referenced only
        id = AutoField()

        class Meta:
            table_name = "loan"

    class Event(Model):
        id = BigAutoField()
        sequence = BigIntegerField(null=True, unique=True)
        type = CharField(max_length=32)
        loan = ForeignKeyField(Loan, on_delete="RESTRICT", index=False, column_name="loan_row_id")
        loan_id = CharField(max_length=64)
        owner = ForeignKeyField(User, on_delete="RESTRICT", index=False, column_name="owner_id")
        owner_user_id = CharField(max_length=36)
        occur_time_us = BigIntegerField()
        effective_date = DateField()
        payload = TextField()

        class Meta:
            table_name = "event"
            legacy_table_names = False
            indexes = (
                (("owner", "sequence"), False),
                (("loan_id", "sequence"), False),
            )

    Event.add_index(Event.index(Event.id, where=Event.sequence.is_null()))

    class DayClose(Model):
        day = DateField(primary_key=True)
        closed_time_us = BigIntegerField()
        delinquencies_started = IntegerField()

        class Meta:
            table_name = "day_close"
            legacy_table_names = False

    with db.bind_ctx([User, Loan, Event, DayClose], bind_refs=False, bind_backrefs=False):
        db.create_tables([Event, DayClose])


# Append only.
MIGRATIONS: tuple[tuple[int, Callable[[Database, str], None]], ...] = (
    (1, _v1_baseline),
    (2, _v2_security),
    (3, _v3_servicing),
    (4, _v4_events),
)
LATEST_VERSION = MIGRATIONS[-1][0]


def migrate(db: Database, time_zone: str = "Asia/Jakarta") -> list[int]:
    """Apply pending migrations, each in its own locked transaction; returns the versions applied.

    ``time_zone`` is the service's: version 3 dates existing payments by it.

    Refuses a database whose schema is newer than this release knows, rather
    than serving it with rules that may no longer match. Any database failure
    (a locked or corrupt file, an unreachable server) becomes DatabaseError.
    """
    try:
        with db.bind_ctx([SchemaVersion]):
            return _apply_migrations(db, time_zone)
    except DatabaseError:
        raise
    except Exception as exc:
        if not is_database_failure(exc):
            raise
        raise DatabaseError(f"cannot migrate the database: {exc}") from None


def _lock_for_migration(db: Database) -> None:
    if isinstance(db, PostgresqlDatabase):
        # The request timeouts set on every connection do not apply here: a
        # process starting while another migrates waits for it, however long
        # a step (an index build) takes.
        db.execute_sql("SET LOCAL lock_timeout = 0")
        db.execute_sql("SET LOCAL statement_timeout = 0")
        # Released at commit; SQLite's BEGIN IMMEDIATE already excludes other writers.
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))


def _apply_migrations(db: Database, time_zone: str) -> list[int]:
    applied: list[int] = []
    for version, step in MIGRATIONS:
        with db.write_lock():
            _lock_for_migration(db)
            db.create_tables([SchemaVersion], safe=True)
            newest = SchemaVersion.select(fn.MAX(SchemaVersion.version)).scalar() or 0
            if newest > LATEST_VERSION:
                raise DatabaseError(
                    f"the database schema is version {newest}, newer than this release's {LATEST_VERSION}"
                )
            if SchemaVersion.get_or_none(SchemaVersion.version == version) is not None:
                continue
            step(db, time_zone)
            SchemaVersion.create(version=version, applied_time_us=time.time_ns() // 1000)
            applied.append(version)
            log.info("applied schema migration %d", version)
    return applied
