"""Fill a database with many loans for benchmarks: `python -m bench.seed --loans N --database-url URL`.

Loans get varied start dates, terms, principals and payment histories, built
with the same rules as BillingCore (LoanTerms.build, second_unpaid_due_date,
installment amounts), so every seeded loan reconciles with its payments
exactly as a loan paid through the API does. Rows go in with executemany in
batches, one write transaction per batch, with explicit ids (payments need
their loan's id without a round trip per row); on PostgreSQL the id
sequences are moved past them at the end.

Seeded users all share one password (``SEED_PASSWORD`` unless told
otherwise), hashed once, so a benchmark can log in as any of them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import time
import uuid
from collections.abc import Iterator
from typing import TextIO

from peewee import Database, SqliteDatabase, fn

from lending_grpc.cli.progress import progress as progress_bar
from lending_grpc.core import fields, standing
from lending_grpc.core.passwords import Passwords
from lending_grpc.core.schedule import LoanTerms
from lending_grpc.core.storage.models import DelinquencySpan, Loan, Payment, User

SEED_PASSWORD = "bench password"
USERNAME_PREFIX = "seed-"
LOAN_ID_PREFIX = "S-"
_TERMS = (4, 12, 25, 50, 50, 50, 52, 104)
_RATES_E4 = (0, 500, 1000, 1000, 1000, 1500, 2500)
MAX_USERS = 10_000
_MAX_PAYMENTS_PER_LOAN = 6  # a history covers its installments in at most this many payments


@dataclasses.dataclass(frozen=True)
class SeedReport:
    """What a seeding run inserted and how long it took."""

    users: int
    loans: int
    payments: int
    seconds: float


def _epoch_us(day: dt.date, seconds: int = 0) -> int:
    return (int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) + seconds) * 1_000_000


def _paid_weeks(rng: random.Random, terms: LoanTerms, as_of: dt.date) -> int:
    """A varied history: most loans on time, some behind (many delinquent), some ahead or paid off."""
    due = terms.weeks_due_before(as_of)
    roll = rng.random()
    if roll < 0.55:
        paid = due
    elif roll < 0.65:
        paid = due - 1
    elif roll < 0.85:
        paid = due - rng.randint(2, 10)
    elif roll < 0.95:
        paid = due + rng.randint(1, 4)
    else:
        paid = terms.term_weeks
    return max(0, min(terms.term_weeks, paid))


def _history(rng: random.Random, paid_weeks: int) -> list[tuple[int, int]]:
    """Split installments 1..paid_weeks into consecutive (first_week, last_week) payments."""
    if paid_weeks == 0:
        return []
    count = rng.randint(1, min(paid_weeks, _MAX_PAYMENTS_PER_LOAN))
    cuts = sorted(rng.sample(range(1, paid_weeks), count - 1)) if count > 1 else []
    bounds = [0, *cuts, paid_weeks]
    return [(bounds[i] + 1, bounds[i + 1]) for i in range(count)]


@dataclasses.dataclass
class _Batch:
    """Rows of one batch, ready for executemany."""

    loans: list[tuple] = dataclasses.field(default_factory=list)
    payments: list[tuple] = dataclasses.field(default_factory=list)
    spans: list[tuple] = dataclasses.field(default_factory=list)


def _months(start: dt.date, end: dt.date) -> list[dt.date]:
    months, month = [], start.replace(day=1)
    while month < end:
        months.append(month)
        month = (month + dt.timedelta(days=32)).replace(day=1)
    return months


def _rows(
    rng: random.Random,
    first_id: int,
    count: int,
    user_ids: list[int],
    as_of: dt.date,
    first_payment_id: int,
) -> _Batch:
    """``count`` loan rows (ids from ``first_id``), their payments and their delinquent spans.

    Most payments are valued on the due date of the first installment they
    cover, some (late catch-ups) on that of the last; never after today.
    About one in ten was
    recorded a few days after its value date (a field collection entered
    late), and about one in forty is preceded by a bounced attempt of the
    same amount that an operator reversed a few days later: the reversed
    rows stay, as in a real book, and count for nothing.
    """
    batch = _Batch()
    payment_id = first_payment_id
    for loan_pk in range(first_id, first_id + count):
        owner = user_ids[loan_pk % len(user_ids)]
        term_weeks = rng.choice(_TERMS)
        start = as_of - dt.timedelta(days=rng.randint(-28, 730))
        terms = LoanTerms.build(rng.randint(1000, 10_000_000) * 100, rng.choice(_RATES_E4), term_weeks, start)
        paid_weeks = _paid_weeks(rng, terms, as_of)
        paid_cents = 0
        running: list[tuple[dt.date, int]] = []
        for first, last in _history(rng, paid_weeks):
            amount = terms.cents_for_next(first - 1, last - first + 1)
            # Most pay on time (the first installment's due date, the rest ahead);
            # some catch up late, on the last one's, delinquent in between.
            value_date = min(terms.due_date(last if rng.random() < 0.15 else first), as_of)
            if rng.random() < 0.025 and value_date > start:
                bounced_on = max(start, value_date - dt.timedelta(days=rng.randint(1, 6)))
                reversed_us = _epoch_us(min(bounced_on + dt.timedelta(days=3), as_of), 7200)
                batch.payments.append(
                    (payment_id, str(uuid.uuid4()), loan_pk, owner, None, amount, first, last,
                     terms.total_cents - paid_cents - amount, _epoch_us(bounced_on, 3600), owner,
                     bounced_on, paid_cents + amount, reversed_us, "bounced transfer (seeded)")
                )  # fmt: skip
                payment_id += 1
            paid_cents += amount
            late_days = rng.randint(1, 5) if rng.random() < 0.1 else 0
            recorded_on = min(value_date + dt.timedelta(days=late_days), as_of)
            batch.payments.append(
                (payment_id, str(uuid.uuid4()), loan_pk, owner, None, amount, first, last,
                 terms.total_cents - paid_cents, _epoch_us(recorded_on, 3600 + first), owner,
                 value_date, paid_cents, None, None)
            )  # fmt: skip
            payment_id += 1
            running.append((value_date, paid_cents))
        steps = standing.steps(running)
        for span in standing.delinquent_spans(terms, steps):
            if span.end is not None:
                for month in _months(span.start, span.end):
                    batch.spans.append(
                        (month, loan_pk, owner, span.start, span.end, span.second_unpaid_due_date)
                    )
        second_unpaid = terms.second_unpaid_due_date(paid_weeks)
        # Delinquencies older than the seeding count as announced, as the
        # migration to the event log treats the loans it finds.
        announced = second_unpaid + standing.ONE_DAY if second_unpaid and second_unpaid < as_of else None
        batch.loans.append(
            (
                loan_pk,
                owner,
                f"{LOAN_ID_PREFIX}{loan_pk:08d}",
                terms.principal_cents,
                terms.rate_e4,
                terms.term_weeks,
                start,
                terms.total_cents,
                terms.weekly_cents,
                terms.final_cents,
                paid_weeks,
                paid_cents,
                second_unpaid,
                _epoch_us(start),
                steps[-1].value_date if steps else None,
                announced,
            )
        )
    return batch


_LOAN_COLUMNS = (
    Loan.id,
    Loan.owner,
    Loan.loan_id,
    Loan.principal_cents,
    Loan.rate_e4,
    Loan.term_weeks,
    Loan.start_date,
    Loan.total_cents,
    Loan.weekly_cents,
    Loan.final_cents,
    Loan.paid_weeks,
    Loan.paid_cents,
    Loan.second_unpaid_due_date,
    Loan.create_time_us,
    Loan.last_value_date,
    Loan.announced_delinquent_since,
)
_PAYMENT_COLUMNS = (
    Payment.id,
    Payment.payment_id,
    Payment.loan,
    Payment.owner,
    Payment.request_id,
    Payment.amount_cents,
    Payment.first_week,
    Payment.last_week,
    Payment.outstanding_after_cents,
    Payment.payment_time_us,
    Payment.recorded_by,
    Payment.value_date,
    Payment.running_paid_cents,
    Payment.reverse_time_us,
    Payment.reversal_reason,
)
_SPAN_COLUMNS = (
    DelinquencySpan.month,
    DelinquencySpan.loan,
    DelinquencySpan.owner,
    DelinquencySpan.start_date,
    DelinquencySpan.end_date,
    DelinquencySpan.second_unpaid_due_date,
)


def _insert_sql(db: Database, model, columns) -> str:
    names = ", ".join(f'"{column.column_name}"' for column in columns)
    marks = ", ".join([db.param] * len(columns))
    return f'INSERT INTO "{model._meta.table_name}" ({names}) VALUES ({marks})'


def _to_db(columns, rows: list[tuple]) -> Iterator[tuple]:
    # Peewee's own conversions (dates to ISO text on SQLite), without building a query per row.
    converters = [column.db_value for column in columns]
    for row in rows:
        yield tuple(convert(value) for convert, value in zip(converters, row, strict=True))


def _user_ids(names: list[str]) -> dict[str, int]:
    query = User.select(User.id, User.username_key).where(User.username_key.in_(names))
    return {row.username_key: row.id for row in query}


def _ensure_users(db: Database, users: int, password: str) -> list[int]:
    """Ids of users seed-0..seed-(users-1), creating the missing ones with ``password``."""
    names = [f"{USERNAME_PREFIX}{i}" for i in range(users)]
    existing = _user_ids(names)
    missing = [name for name in names if name not in existing]
    if missing:
        password_hash = Passwords().hash(fields.password(password))
        now = time.time_ns() // 1000
        with db.write_lock():
            for start in range(0, len(missing), 500):
                User.insert_many(
                    [
                        {
                            "user_id": str(uuid.uuid4()),
                            "username": name,
                            "username_key": fields.username_key(name),
                            "email": f"{name}@seed.invalid",
                            "password_hash": password_hash,
                            "create_time_us": now,
                        }
                        for name in missing[start : start + 500]
                    ]
                ).execute()
        existing = _user_ids(names)
    return [existing[name] for name in names]


def _advance_sequences(db: Database) -> None:
    # Explicit ids do not move PostgreSQL's sequences; SQLite's AUTOINCREMENT-free ids need nothing.
    if isinstance(db, SqliteDatabase):
        return
    for model in (Loan, Payment):
        table = model._meta.table_name
        db.execute_sql(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f'(SELECT COALESCE(MAX(id), 1) FROM "{table}"))'
        )


def seed(
    db: Database,
    loans: int,
    *,
    users: int = 10,
    batch_size: int = 10_000,
    as_of: dt.date | None = None,
    random_seed: int = 1,
    password: str = SEED_PASSWORD,
    progress: bool = True,
    stream: TextIO | None = None,
) -> SeedReport:
    """Add ``loans`` loans spread round-robin over ``users`` seed users (seed-0, seed-1, ...).

    Each batch of ``batch_size`` loans and their payments is one write
    transaction. Start dates fall from two years before ``as_of`` (default
    today) to four weeks after it; histories are judged as of ``as_of``.
    Loan ids are ``S-<8 digits>`` from the loan row id, so seeding again adds
    new loans instead of colliding. With ``progress``, a bar on ``stream``
    (stderr) counts the loans when that stream is a terminal; nothing is
    written otherwise.
    """
    if loans < 0 or not 1 <= users <= MAX_USERS or batch_size < 1:
        raise ValueError(f"loans must be >= 0, users 1..{MAX_USERS}, batch_size >= 1")
    started = time.perf_counter()
    as_of = as_of or dt.date.today()
    rng = random.Random(random_seed)
    user_ids = _ensure_users(db, users, password)
    next_loan = (Loan.select(fn.MAX(Loan.id)).scalar() or 0) + 1
    next_payment = (Payment.select(fn.MAX(Payment.id)).scalar() or 0) + 1
    loan_sql = _insert_sql(db, Loan, _LOAN_COLUMNS)
    payment_sql = _insert_sql(db, Payment, _PAYMENT_COLUMNS)
    span_sql = _insert_sql(db, DelinquencySpan, _SPAN_COLUMNS)
    payments_total = 0
    with progress_bar(
        total=loans, desc="seeding loans", unit=" loans", stream=stream, enabled=progress
    ) as bar:
        for done in range(0, loans, batch_size):
            count = min(batch_size, loans - done)
            rows = _rows(rng, next_loan, count, user_ids, as_of, next_payment)
            with db.write_lock():
                cursor = db.cursor()
                cursor.executemany(loan_sql, list(_to_db(_LOAN_COLUMNS, rows.loans)))
                if rows.payments:
                    cursor.executemany(payment_sql, list(_to_db(_PAYMENT_COLUMNS, rows.payments)))
                if rows.spans:
                    cursor.executemany(span_sql, list(_to_db(_SPAN_COLUMNS, rows.spans)))
            next_loan += count
            next_payment += len(rows.payments)
            payments_total += len(rows.payments)
            bar.update(count)
    _advance_sequences(db)
    return SeedReport(users, loans, payments_total, time.perf_counter() - started)


def table_bytes(db: Database) -> dict[str, int]:
    """Bytes each table occupies with its indexes (SQLite pages via dbstat; PostgreSQL relation sizes)."""
    names = [model._meta.table_name for model in (User, Loan, Payment, DelinquencySpan)]
    if isinstance(db, SqliteDatabase):
        query = (
            "SELECT m.tbl_name, SUM(d.pgsize) FROM dbstat d JOIN sqlite_master m ON m.name = d.name "
            "GROUP BY m.tbl_name"
        )
    else:
        query = (
            "SELECT relname, pg_total_relation_size(oid) FROM pg_class "
            "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
        )
    sizes = {name: int(size) for name, size in db.execute_sql(query).fetchall()}
    return {name: sizes.get(name, 0) for name in names} | {
        "other": sum(size for name, size in sizes.items() if name not in names)
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.seed`: migrate, seed, and print what was added and the size per loan."""
    import argparse

    from lending_grpc.config import DEFAULT_DATABASE_URL
    from lending_grpc.core.storage.database import close_database, open_database
    from lending_grpc.core.storage.migrations import migrate

    parser = argparse.ArgumentParser(prog="python -m bench.seed", description=main.__doc__)
    parser.add_argument("--loans", type=int, required=True, help="number of loans to add")
    parser.add_argument("--users", type=int, default=10, help="spread the loans over this many seed users")
    parser.add_argument("--batch-size", type=int, default=10_000, help="loans per transaction")
    parser.add_argument(
        "--as-of", type=dt.date.fromisoformat, default=None, help="judge histories as of this date (today)"
    )
    parser.add_argument("--random-seed", type=int, default=1, help="seed of the random generator")
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar (there is none unless stderr is a terminal)",
    )
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="SQLite or PostgreSQL URL")
    args = parser.parse_args(argv)
    db = open_database(args.database_url)
    try:
        migrate(db)
        report = seed(
            db,
            args.loans,
            users=args.users,
            batch_size=args.batch_size,
            as_of=args.as_of,
            random_seed=args.random_seed,
            progress=args.progress,
        )
        loans, payments = Loan.select().count(), Payment.select().count()
        sizes = table_bytes(db)
    finally:
        close_database(db)
    without_payments = sizes["user"] + sizes["loan"] + sizes["delinquency_span"] + sizes["other"]
    print(
        f"seeded {report.loans} loans and {report.payments} payments for {report.users} users "
        f"in {report.seconds:.1f}s\n"
        f"the database holds {loans} loans and {payments} payments in {sum(sizes.values())} bytes: "
        f"{without_payments / max(loans, 1):.0f} bytes per loan without payments, "
        f"{sizes['payment'] / max(payments, 1):.0f} bytes per payment"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
