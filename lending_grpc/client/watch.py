"""EventWatch: follow the event log through server restarts and token expiry, each event once.

A WatchEvents stream ends with UNAVAILABLE when its server shuts down (or the
connection drops) and with UNAUTHENTICATED when the access token it was
opened with expires. Either way nothing is lost: the log keeps every event,
so the watch opens a new stream with ``after_sequence`` set to the last
event it handed out, which the server answers with everything later, in
order. gRPC cannot do this itself (it only replays a stream that has not
delivered anything yet), hence this loop.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator

import grpc
from lending.v1 import events_pb2, events_pb2_grpc

from lending_grpc.client import exceptions, from_messages
from lending_grpc.client.session import Session
from lending_grpc.client.types import Event

# A stream refused again this soon after its token was renewed is not an
# expiry: the credentials are no good, and renewing once more would not help.
_MIN_TOKEN_LIFE_SECONDS = 0.5


class EventWatch(Iterator[Event]):
    """An iterator over the events after ``after_sequence``: the backlog, then each new one live.

    It never ends by itself: on UNAVAILABLE it waits (exponential backoff with
    jitter, from ``initial_backoff`` to ``max_backoff`` seconds) and resumes
    after `last_sequence`; on UNAUTHENTICATED it renews the session's tokens
    and resumes at once. Every other error, a token that cannot be renewed,
    or more than ``max_reconnects`` consecutive failed attempts (None: no
    limit) raises the matching `LendingError`. ``on_reconnect(error, delay)``
    is told of each wait, e.g. to log it.

    `close` (also on leaving a ``with`` block, and safe from another thread)
    cancels the stream; iteration then stops.
    """

    def __init__(
        self,
        stub: events_pb2_grpc.EventServiceStub,
        session: Session,
        after_sequence: int = 0,
        loan_id: str = "",
        *,
        initial_backoff: float = 0.2,
        max_backoff: float = 5.0,
        max_reconnects: int | None = None,
        on_reconnect: Callable[[exceptions.LendingError, float], None] | None = None,
    ) -> None:
        if not 0 < initial_backoff <= max_backoff:
            raise ValueError("backoffs must satisfy 0 < initial_backoff <= max_backoff")
        self._stub = stub
        self._session = session
        self._loan_id = loan_id
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._max_reconnects = max_reconnects
        self._on_reconnect = on_reconnect
        self._last_sequence = after_sequence
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._call: grpc.Call | None = None
        self._events = self._follow()

    @property
    def last_sequence(self) -> int:
        """The sequence of the last event handed out (at first ``after_sequence``): resume after it."""
        return self._last_sequence

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __iter__(self) -> EventWatch:
        return self

    def __next__(self) -> Event:
        if self._closed.is_set():
            raise StopIteration
        return next(self._events)

    def close(self) -> None:
        """Cancel the stream and stop; a thread blocked waiting for the next event gets StopIteration."""
        self._closed.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    def __enter__(self) -> EventWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _follow(self) -> Iterator[Event]:
        backoff = self._initial_backoff
        failures = 0
        renewed_at: float | None = None  # when the tokens were last renewed after a rejection
        while not self._closed.is_set():
            error: exceptions.LendingError | None = None
            try:
                metadata = self._session.metadata()
            except exceptions.Unavailable as exc:  # the token renewal could not reach the server
                error = exc
            else:
                request = events_pb2.WatchEventsRequest(
                    after_sequence=self._last_sequence, loan_id=self._loan_id
                )
                call = self._stub.WatchEvents(request, metadata=metadata)
                with self._lock:
                    self._call = call
                if self._closed.is_set():  # closed while we were opening it
                    call.cancel()
                try:
                    for message in call:
                        event = from_messages.event(message)
                        if event.sequence <= self._last_sequence:
                            continue  # never hand out an event twice, whatever the server sends
                        self._last_sequence = event.sequence
                        backoff, failures, renewed_at = self._initial_backoff, 0, None
                        yield event
                        if self._closed.is_set():
                            return
                except grpc.RpcError as err:
                    if self._closed.is_set():
                        return  # our own cancel
                    code = err.code()
                    if code == grpc.StatusCode.UNAUTHENTICATED:
                        now = time.monotonic()
                        if renewed_at is not None and now - renewed_at < _MIN_TOKEN_LIFE_SECONDS:
                            raise exceptions.from_rpc_error(err) from None
                        try:
                            renewed = self._session.renew_after_rejection(metadata)
                        except exceptions.Unavailable as exc:
                            error = exc
                        else:
                            if not renewed:
                                raise exceptions.from_rpc_error(err) from None
                            renewed_at = now
                            continue  # a fresh token: resume at once
                    elif code == grpc.StatusCode.UNAVAILABLE:
                        error = exceptions.from_rpc_error(err)
                    else:
                        raise exceptions.from_rpc_error(err) from None
                finally:
                    with self._lock:
                        self._call = None
                    call.cancel()  # a no-op once the call has ended
                if error is None:
                    # The server ended the stream without an error; it never does unless
                    # the call was cancelled or timed out. Reconnect, without spinning.
                    error = exceptions.Unavailable(grpc.StatusCode.UNAVAILABLE, "the stream ended")
            failures += 1
            if self._max_reconnects is not None and failures > self._max_reconnects:
                raise error
            delay = backoff * random.uniform(0.5, 1.0)  # jitter: restarted servers are not stampeded
            backoff = min(backoff * 2, self._max_backoff)
            if self._on_reconnect is not None:
                self._on_reconnect(error, delay)
            if self._closed.wait(delay):
                return
