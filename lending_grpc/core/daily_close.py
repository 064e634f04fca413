"""The daily close: announce the delinquencies that began because a day passed.

A write announces the change of today's standing it causes itself; becoming
delinquent needs no write (a due date passes), so closing day D emits
DELINQUENCY_STARTED for every loan whose second unpaid installment fell due
before D and whose delinquency the event log has not announced yet, and
records that D is closed. The server closes the new day shortly after
midnight and, at start-up, the days it missed; `lending-grpc close-day` does
the same from the command line (a Kubernetes CronJob, for deployments that
turn the in-server close off).

Idempotent and safe from several processes at once: each batch runs in one
write transaction under the close's lock (an advisory lock on PostgreSQL,
the write lock on SQLite), and a loan is announced only while its row still
says it was not, so running twice, or twice at once, emits each event once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from peewee import fn

from lending_grpc.core import event_log, standing
from lending_grpc.core.billing import terms_of
from lending_grpc.core.clock import Clock
from lending_grpc.core.plural import count
from lending_grpc.core.storage.database import LendingDatabase
from lending_grpc.core.storage.models import DayClose, Loan, User
from lending_grpc.core.views import DelinquencyView

log = logging.getLogger(__name__)

_CLOSE_LOCK_KEY = 0x6C636C73  # "lcls": the same in every lending-grpc process
BATCH = 500


@dataclasses.dataclass(frozen=True, slots=True)
class ClosedDay:
    """What closing one day did."""

    day: dt.date
    delinquencies_started: int
    already_closed: bool = False


def last_closed_day(db: LendingDatabase) -> dt.date | None:
    """The latest day closed so far (None before the first close)."""
    return DayClose.select(fn.MAX(DayClose.day)).scalar()


def last_close_time_us(db: LendingDatabase) -> int | None:
    """When the latest close finished, in microseconds since the epoch (None before the first)."""
    return DayClose.select(fn.MAX(DayClose.closed_time_us)).scalar()


def close_through(db: LendingDatabase, clock: Clock, until: dt.date | None = None) -> list[ClosedDay]:
    """Close every day after the last closed one up to ``until`` (default today), oldest first.

    The first close ever closes ``until`` alone: there is nothing earlier it
    could have missed.
    """
    until = until or clock.today()
    last = last_closed_day(db)
    day = until if last is None else last + standing.ONE_DAY
    closed = []
    while day <= until:
        closed.append(close_day(db, clock, day))
        day += standing.ONE_DAY
    return closed


def _lock(db: LendingDatabase) -> None:
    if db.kind == "postgresql":
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_CLOSE_LOCK_KEY,))


def close_day(db: LendingDatabase, clock: Clock, day: dt.date) -> ClosedDay:
    """Announce the delinquencies that began on or before ``day`` and were not announced; record the close."""
    started = 0
    while True:

        def batch(started: int = started) -> int | None:
            _lock(db)
            if DayClose.get_or_none(DayClose.day == day) is not None:
                return None
            rows = list(
                db.lock_rows(
                    Loan.select(Loan, User.id, User.user_id)
                    .join(User)
                    .where(Loan.announced_delinquent_since.is_null() & (Loan.second_unpaid_due_date < day))
                    .order_by(Loan.second_unpaid_due_date, Loan.id)
                    .limit(BATCH)
                )
            )
            now = clock.now_us()
            for row in rows:
                since = row.second_unpaid_due_date + standing.ONE_DAY
                terms = terms_of(row)
                status = DelinquencyView(
                    row.loan_id, standing.standing_of(terms, row.paid_cents, since), row.owner.user_id
                )
                event_log.record(
                    db,
                    event_log.DELINQUENCY_STARTED,
                    loan_pk=row.id,
                    loan_id=row.loan_id,
                    owner_pk=row.owner.id,
                    owner_user_id=row.owner.user_id,
                    occur_time_us=now,
                    effective_date=since,
                    resource=status,
                )
                Loan.update(announced_delinquent_since=since).where(
                    (Loan.id == row.id) & Loan.announced_delinquent_since.is_null()
                ).execute()
            if len(rows) < BATCH:
                DayClose.create(day=day, closed_time_us=now, delinquencies_started=started + len(rows))
            return len(rows)

        done = db.write_transaction(batch)
        if done is None:
            return ClosedDay(day, 0, already_closed=started == 0)
        started += done
        if done < BATCH:
            log.info("closed %s: %s started", day.isoformat(), count(started, "delinquency", "delinquencies"))
            return ClosedDay(day, started)
