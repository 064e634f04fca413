"""EventService: page through the loan event log, or watch it as a stream."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
from lending.v1 import events_pb2, events_pb2_grpc

from lending_grpc.api import messages
from lending_grpc.api.call import Call, current_call
from lending_grpc.core import event_log, fields, pagination
from lending_grpc.core.errors import InvalidArgument, Unauthenticated, Unavailable
from lending_grpc.core.event_hub import EventHub
from lending_grpc.core.event_log import EventView
from lending_grpc.core.storage.database import LendingDatabase

# How long a watcher sleeps before it looks at its stream again (cancelled?
# deadline? token expired?) when nothing happens.
_IDLE_CHECK_S = 0.5
_BATCH = 200


def _after(value: int) -> int:
    if value < 0:
        raise InvalidArgument("after_sequence", "must not be negative")
    return value


def _loan_filter(value: str) -> str:
    return fields.loan_id(value) if value else ""


class EventServicer(events_pb2_grpc.EventServiceServicer):
    """Owners see their own loans' events; operators everyone's."""

    def __init__(self, db: LendingDatabase, hub: EventHub) -> None:
        self._db = db
        self._hub = hub

    @staticmethod
    def _owner_filter(call: Call) -> int | None:
        user = call.user
        return None if user.is_operator else user.id

    def _visible(self, events: list[EventView], owner: int | None, owner_user_id: str, loan_id: str):
        return [
            event
            for event in events
            if (owner is None or event.owner == owner_user_id) and (not loan_id or event.loan_id == loan_id)
        ]

    def ListEvents(self, request, context):
        after = _after(request.after_sequence)
        size = pagination.page_size(request.page_size)
        loan_id = _loan_filter(request.loan_id)
        call = current_call()
        event_log.number_pending(self._db)
        events = event_log.read(self._db, after, size, owner_pk=self._owner_filter(call), loan_id=loan_id)
        return events_pb2.ListEventsResponse(events=[messages.event(event) for event in events])

    def WatchEvents(self, request, context) -> Iterator[events_pb2.Event]:
        checked = _after(request.after_sequence)  # every visible event up to here was sent
        loan_id = _loan_filter(request.loan_id)
        call = current_call()
        owner = self._owner_filter(call)
        while True:
            # The backlog, and whatever arrived since: from memory when the hub has it all.
            remembered = self._hub.recent_after(checked)
            if remembered is None:
                latest = self._hub.latest  # read before the database: all of it is in what we read
                event_log.number_pending(self._db)
                events = event_log.read(self._db, checked, _BATCH, owner_pk=owner, loan_id=loan_id)
                if len(events) == _BATCH:
                    for event in events:
                        yield messages.event(event)
                    checked = events[-1].sequence
                    continue
            else:
                latest, events = remembered
                events = self._visible(events, owner, call.user.user_id, loan_id)
            for event in events:
                yield messages.event(event)
            checked = max(checked, latest, events[-1].sequence if events else 0)
            if not self._wait(checked, call, context):
                return

    def _wait(self, after: int, call: Call, context: grpc.ServicerContext) -> bool:
        """Wait for an event after ``after``: True when there is one, False when the client left.

        Ends the stream with UNAVAILABLE when the server shuts down and with
        UNAUTHENTICATED when the access token expires.
        """
        while True:
            if self._hub.stopping:
                raise Unavailable(f"the server is shutting down; resume with after_sequence={after}")
            if not context.is_active():
                return False  # cancelled, or past its deadline: grpc has ended the call
            now = time.time()
            if call.token_expires_at and now >= call.token_expires_at:
                raise Unauthenticated("the access token expired during the stream; log in again and resume")
            timeout = _IDLE_CHECK_S
            if call.token_expires_at:
                timeout = min(timeout, call.token_expires_at - now)
            remaining = context.time_remaining()
            if remaining is not None:
                timeout = min(timeout, max(remaining, 0.0))
            if self._hub.wait_beyond(after, max(timeout, 0.0)) > after:
                return True
