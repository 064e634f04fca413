"""The audit trail: append-only records of every state change and security event.

The core calls ``record`` inside the transaction of the change it records,
so a change and its audit row commit (or roll back) together; an event
with no transaction of its own (a failed sign-in) uses ``record_alone``.
Who called, from where, through which RPC and with which request id comes
from the `Actor` every core operation is given (the API layer builds it per
call; the core never sees gRPC). No code path updates or deletes audit rows.

Summaries hold ids, amounts and reasons, never passwords, tokens, emails or
usernames (personal data that erasure must be able to remove).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

from lending_grpc.core import pagination
from lending_grpc.core.storage.database import LendingDatabase
from lending_grpc.core.storage.models import AuditEvent
from lending_grpc.core.storage.prepared import Statement
from lending_grpc.core.views import Actor, Page

OK = "ok"
REFUSED = "refused"  # a rule said no (wrong password, locked, unacceptable payment)
DENIED = "denied"  # the caller lacks the permission


@dataclasses.dataclass(frozen=True, slots=True)
class AuditView:
    """One audit record as read back."""

    seq: int
    time_us: int
    event: str
    outcome: str
    actor: str
    subject: str
    peer: str
    rpc: str
    request_id: str
    loan_id: str
    summary: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Every payment and sign-in writes one, inside the write transaction: its SQL is built once.
_COLUMNS = tuple(field for field in AuditEvent._meta.sorted_fields if field.name != "id")
_INSERT_EVENT = Statement(lambda p: AuditEvent.insert({field: getattr(p, field.name) for field in _COLUMNS}))


def _clip(value: str, limit: int) -> str:
    # Client-chosen text (loan ids, request ids) may hold anything; PostgreSQL refuses NUL.
    if len(value) <= limit and value.isprintable():
        return value
    return "".join(ch if ch.isprintable() else "?" for ch in value[:limit])


def record(
    db: LendingDatabase,
    actor: Actor,
    event: str,
    outcome: str = OK,
    *,
    subject: str = "",
    loan_id: str = "",
    summary: dict[str, Any] | None = None,
) -> None:
    """Append one audit row for what ``actor`` did; call it inside the transaction of the change."""
    db.append(
        _INSERT_EVENT,
        time_us=time.time_ns() // 1000,
        event=event,
        outcome=outcome,
        actor=_clip(actor.name, 64),
        subject=_clip(subject, 64),
        peer=_clip(actor.peer, 128),
        rpc=_clip(actor.rpc, 128),
        request_id=_clip(actor.request_id, 128),
        loan_id=_clip(loan_id, 64),
        summary=json.dumps(summary or {}, separators=(",", ":"), sort_keys=True),
    )


def record_alone(db: LendingDatabase, actor: Actor, event: str, outcome: str = OK, **fields: Any) -> None:
    """Append one audit row in a transaction of its own (for events that change nothing else)."""
    db.write_transaction(lambda: record(db, actor, event, outcome, **fields))


def _view(row: AuditEvent) -> AuditView:
    return AuditView(
        seq=row.id,
        time_us=row.time_us,
        event=row.event,
        outcome=row.outcome,
        actor=row.actor,
        subject=row.subject,
        peer=row.peer,
        rpc=row.rpc,
        request_id=row.request_id,
        loan_id=row.loan_id,
        summary=json.loads(row.summary),
    )


def _filtered(start_us: int | None, end_us: int | None, user_id: str, loan_id: str):
    query = AuditEvent.select()
    if start_us is not None:
        query = query.where(AuditEvent.time_us >= start_us)
    if end_us is not None:
        query = query.where(AuditEvent.time_us < end_us)
    if user_id:
        query = query.where((AuditEvent.subject == user_id) | (AuditEvent.actor == user_id))
    if loan_id:
        query = query.where(AuditEvent.loan_id == loan_id)
    return query


class AuditLog:
    """Reading the audit trail, oldest first (by insertion sequence)."""

    def __init__(self, page_tokens: pagination.PageTokens) -> None:
        self._page_tokens = page_tokens

    def list(
        self,
        page_size: int = 0,
        page_token: str = "",
        *,
        start_us: int | None = None,
        end_us: int | None = None,
        user_id: str = "",
        loan_id: str = "",
    ) -> Page:
        """One page of events matching every given filter; the token is bound to the filters."""
        size = pagination.page_size(page_size)
        scope = f"audit|{start_us}|{end_us}|{user_id}|{loan_id}"
        query = _filtered(start_us, end_us, user_id, loan_id)
        if page_token:
            after = self._page_tokens.decode(page_token, scope)
            query = query.where(AuditEvent.id > int(after["id"]))
        rows = list(query.order_by(AuditEvent.id).limit(size + 1))
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = self._page_tokens.encode(scope, {"id": rows[-1].id})
        return Page([_view(row) for row in rows], token)


def export(start_us: int | None = None, end_us: int | None = None, batch: int = 1000) -> Iterator[AuditView]:
    """Every event in the range, oldest first, read in batches (for `lending-grpc audit export`)."""
    last = 0
    while True:
        rows = list(
            _filtered(start_us, end_us, "", "")
            .where(AuditEvent.id > last)
            .order_by(AuditEvent.id)
            .limit(batch)
        )
        yield from (_view(row) for row in rows)
        if len(rows) < batch:
            return
        last = rows[-1].id
