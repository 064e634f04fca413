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

import logging
import time
from collections.abc import Callable

from peewee import (
    AutoField,
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


def _v1_baseline(db: Database) -> None:
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


def _v2_security(db: Database) -> None:
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


# Append only.
MIGRATIONS: tuple[tuple[int, Callable[[Database], None]], ...] = (
    (1, _v1_baseline),
    (2, _v2_security),
)
LATEST_VERSION = MIGRATIONS[-1][0]


def migrate(db: Database) -> list[int]:
    """Apply pending migrations, each in its own locked transaction; returns the versions applied.

    Refuses a database whose schema is newer than this release knows, rather
    than serving it with rules that may no longer match. Any database failure
    (a locked or corrupt file, an unreachable server) becomes DatabaseError.
    """
    try:
        with db.bind_ctx([SchemaVersion]):
            return _apply_migrations(db)
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


def _apply_migrations(db: Database) -> list[int]:
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
            step(db)
            SchemaVersion.create(version=version, applied_time_us=time.time_ns() // 1000)
            applied.append(version)
            log.info("applied schema migration %d", version)
    return applied
