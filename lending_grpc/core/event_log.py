"""The loan event log: each change recorded in its own transaction, read back in order, exactly once.

Writing (a transactional outbox). ``record`` inserts the event row inside the
transaction of the change it describes, so the event exists exactly when the
change does: no second transaction, no second fsync.

Numbering, and why a consumer that resumes after the last sequence it
processed never misses or repeats an event:

- Consumers only ever see events that have a ``sequence``, and read them in
  ``sequence`` order. So the guarantee holds if every event gets a sequence
  once, only after it committed, and always above every sequence given
  before.
- SQLite has one writer at a time (BEGIN IMMEDIATE, across processes too):
  a transaction that inserts events commits before any other can insert
  theirs, so the row id, taken as ``MAX(id) + 1`` in the INSERT itself, is
  both the insertion and the commit order. The sequence is that id.
- PostgreSQL takes ids from a sequence at INSERT, not at commit: a
  transaction holding id 41 may commit after one holding 42, and a reader
  that saw 42 and resumes "after 42" would never see 41. So events are
  inserted without a sequence, and `assign_sequences` numbers them after
  they commit: under one advisory lock (one numberer at a time, across every
  process), it gives every committed, unnumbered event the next numbers in
  id order, continuing from the highest number so far. An event that
  commits later is numbered in a later round, above everything numbered
  before: a consumer's "after N" can never skip it. Every process runs the
  numberer (``api/event_hub.py``) after its own commits and on a timer, so
  events of a process that died are numbered by the others.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from peewee import SQL, fn

from lending_grpc.core.schedule import Delinquency, LoanTerms
from lending_grpc.core.storage.database import LendingDatabase
from lending_grpc.core.storage.models import Event
from lending_grpc.core.storage.prepared import Select, Statement
from lending_grpc.core.views import DelinquencyView, LoanView, PaymentView

LOAN_CREATED = "LOAN_CREATED"
PAYMENT_ACCEPTED = "PAYMENT_ACCEPTED"
PAYMENT_REVERSED = "PAYMENT_REVERSED"
LOAN_PAID_OFF = "LOAN_PAID_OFF"
LOAN_REOPENED = "LOAN_REOPENED"
DELINQUENCY_STARTED = "DELINQUENCY_STARTED"
DELINQUENCY_ENDED = "DELINQUENCY_ENDED"
EVENT_TYPES = (
    LOAN_CREATED,
    PAYMENT_ACCEPTED,
    PAYMENT_REVERSED,
    LOAN_PAID_OFF,
    LOAN_REOPENED,
    DELINQUENCY_STARTED,
    DELINQUENCY_ENDED,
)
# Any constant: the same in every lending-grpc process (another than the migrations' lock).
_SEQUENCER_LOCK_KEY = 0x6C657673  # "levs"
_COLUMNS = ("type", "loan", "loan_id", "owner", "owner_user_id", "occur_time_us", "effective_date", "payload")

Resource = LoanView | PaymentView | DelinquencyView


@dataclasses.dataclass(frozen=True, slots=True)
class EventView:
    """One event as consumers see it."""

    sequence: int
    type: str
    loan_id: str
    owner: str  # the owner's public user id
    occur_time_us: int
    effective_date: dt.date
    resource: Resource


# -- payloads ------------------------------------------------------------------------


def _date(value: str | None) -> dt.date | None:
    return None if value is None else dt.date.fromisoformat(value)


# Flat views of plain values: a shallow copy is what dataclasses.asdict's deep one would give,
# at a fraction of its cost (every payment encodes one inside its transaction).
_TERMS_FIELDS = tuple(field.name for field in dataclasses.fields(LoanTerms))
_PAYMENT_FIELDS = tuple(field.name for field in dataclasses.fields(PaymentView))


def encode(resource: Resource) -> str:
    """A view as compact JSON (dates as ISO text), tagged with its kind."""
    if isinstance(resource, LoanView):
        terms = {name: getattr(resource.terms, name) for name in _TERMS_FIELDS}
        terms["start_date"] = resource.terms.start_date.isoformat()
        body = {
            "kind": "loan",
            "loan_id": resource.loan_id,
            "terms": terms,
            "paid_weeks": resource.paid_weeks,
            "paid_cents": resource.paid_cents,
            "create_time_us": resource.create_time_us,
        }
    elif isinstance(resource, PaymentView):
        body = {"kind": "payment", **{name: getattr(resource, name) for name in _PAYMENT_FIELDS}}
        body["value_date"] = resource.value_date.isoformat()
    else:
        standing = resource.standing
        body = {
            "kind": "delinquency",
            "loan_id": resource.loan_id,
            "owner": resource.owner,
            "as_of": standing.as_of.isoformat(),
            "missed_payments": standing.missed_payments,
            "overdue_cents": standing.overdue_cents,
            "days_past_due": standing.days_past_due,
            "next_due_date": standing.next_due_date.isoformat() if standing.next_due_date else None,
        }
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def decode(payload: str) -> Resource:
    """The view `encode` wrote."""
    body: dict[str, Any] = json.loads(payload)
    kind = body.pop("kind")
    if kind == "loan":
        terms = body["terms"]
        terms["start_date"] = dt.date.fromisoformat(terms["start_date"])
        return LoanView(
            body["loan_id"],
            LoanTerms(**terms),
            body["paid_weeks"],
            body["paid_cents"],
            body["create_time_us"],
        )
    if kind == "payment":
        body["value_date"] = dt.date.fromisoformat(body["value_date"])
        return PaymentView(**body)
    standing = Delinquency(
        as_of=dt.date.fromisoformat(body["as_of"]),
        missed_payments=body["missed_payments"],
        overdue_cents=body["overdue_cents"],
        days_past_due=body["days_past_due"],
        next_due_date=_date(body["next_due_date"]),
    )
    return DelinquencyView(body["loan_id"], standing, body["owner"])


# -- writing -------------------------------------------------------------------------

# SQLite: the id and the sequence are the next id, taken under the write lock (see above).
_INSERT_NUMBERED = Statement(
    lambda p: Event.insert(
        {
            Event.id: SQL('(SELECT COALESCE(MAX("id"), 0) + 1 FROM "event")'),
            Event.sequence: SQL('(SELECT COALESCE(MAX("id"), 0) + 1 FROM "event")'),
            **{getattr(Event, name): getattr(p, name) for name in _COLUMNS},
        }
    )
)
# PostgreSQL: numbered after commit by assign_sequences.
_INSERT_UNNUMBERED = Statement(
    lambda p: Event.insert({getattr(Event, name): getattr(p, name) for name in _COLUMNS})
)


def record(
    db: LendingDatabase,
    event_type: str,
    *,
    loan_pk: int,
    loan_id: str,
    owner_pk: int,
    owner_user_id: str,
    occur_time_us: int,
    effective_date: dt.date,
    resource: Resource,
) -> None:
    """Append one event; call it inside the transaction of the change it describes."""
    db.append(
        _INSERT_NUMBERED if db.kind == "sqlite" else _INSERT_UNNUMBERED,
        type=event_type,
        loan=loan_pk,
        loan_id=loan_id,
        owner=owner_pk,
        owner_user_id=owner_user_id,
        occur_time_us=occur_time_us,
        effective_date=Event.effective_date.db_value(effective_date),
        payload=encode(resource),
    )


_NUMBER_PENDING = """
WITH last AS (SELECT COALESCE(MAX(sequence), 0) AS n FROM event),
     todo AS (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM event
              WHERE sequence IS NULL ORDER BY id LIMIT %s)
UPDATE event SET sequence = last.n + todo.rn FROM todo, last WHERE event.id = todo.id
RETURNING event.sequence
"""


def assign_sequences(db: LendingDatabase, batch: int = 5000) -> int:
    """Number committed, unnumbered events (PostgreSQL); returns how many. A no-op on SQLite.

    Runs in a transaction of its own, never in a change's: see the module
    docstring for why that makes resuming safe.
    """
    if db.kind == "sqlite":
        return 0
    total = 0
    while True:

        def number() -> int:
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_SEQUENCER_LOCK_KEY,))
            rows = db.execute_sql(_NUMBER_PENDING, (batch,)).fetchall()
            if rows:
                db.execute_sql("SELECT pg_notify('lending_events', %s)", (str(max(row[0] for row in rows)),))
            return len(rows)

        done = db.write_transaction(number)
        total += done
        if done < batch:
            return total


# The hub asks these after every local commit and on every tick: prepared, not rebuilt each time.
_ANY_UNNUMBERED = Statement(lambda p: Event.select(Event.id).where(Event.sequence.is_null()).limit(1))
_LATEST = Statement(lambda p: Event.select(fn.MAX(Event.sequence)))


def has_unnumbered(db: LendingDatabase) -> bool:
    """Whether events wait for a number (one index probe; always False on SQLite)."""
    if db.kind == "sqlite":
        return False
    return db.run(_ANY_UNNUMBERED).fetchone() is not None


def number_pending(db: LendingDatabase) -> None:
    """Number what has committed before a read, so a reader sees its own writes' events at once."""
    if has_unnumbered(db):
        assign_sequences(db)


# -- reading -------------------------------------------------------------------------

_PAGE_COLUMNS = (
    Event.sequence,
    Event.type,
    Event.loan_id,
    Event.owner_user_id,
    Event.occur_time_us,
    Event.effective_date,
    Event.payload,
)


def _page(only=None) -> Select:
    """A page of numbered events after ``p.after``, oldest first; ``only(p)`` narrows it."""

    def query(p):
        after = Event.sequence > p.after
        return (
            Event.select()
            .where(after if only is None else only(p) & after)
            .order_by(Event.sequence)
            .limit(p.limit)
        )

    return Select(Event, query, columns=_PAGE_COLUMNS)


_PAGE = _page()
_PAGE_OF_OWNER = _page(lambda p: Event.owner == p.owner)
_PAGE_OF_LOAN = _page(lambda p: Event.loan_id == p.loan_id)
_PAGE_OF_OWNERS_LOAN = _page(lambda p: (Event.loan_id == p.loan_id) & (Event.owner == p.owner))


def _view(row) -> EventView:
    return EventView(
        sequence=row.sequence,
        type=row.type,
        loan_id=row.loan_id,
        owner=row.owner_user_id,
        occur_time_us=row.occur_time_us,
        effective_date=row.effective_date,
        resource=decode(row.payload),
    )


def read(
    db: LendingDatabase, after: int, limit: int, *, owner_pk: int | None = None, loan_id: str = ""
) -> list[EventView]:
    """Up to ``limit`` numbered events after ``after``, oldest first; of one owner and/or one loan id."""
    if owner_pk is not None and loan_id:
        rows = db.all(_PAGE_OF_OWNERS_LOAN, owner=owner_pk, loan_id=loan_id, after=after, limit=limit)
    elif owner_pk is not None:
        rows = db.all(_PAGE_OF_OWNER, owner=owner_pk, after=after, limit=limit)
    elif loan_id:
        rows = db.all(_PAGE_OF_LOAN, loan_id=loan_id, after=after, limit=limit)
    else:
        rows = db.all(_PAGE, after=after, limit=limit)
    return [_view(row) for row in rows]


def latest_sequence(db: LendingDatabase) -> int:
    """The highest sequence given so far (0 before the first event)."""
    row = db.run(_LATEST).fetchone()
    return (row[0] if row is not None else None) or 0
