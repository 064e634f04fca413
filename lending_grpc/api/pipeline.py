"""The request pipeline: the one server interceptor every call passes through, one step after another.

For every call, in this order (the order is the code of `Pipeline._admit`
and `Pipeline._unary`; unary and server-streaming methods share it):

1. The `Call` record: request id (the caller's ``x-request-id`` when it is a
   safe token, otherwise a new one; sent back as ``x-request-id`` initial
   metadata: with a unary call's answer, at once on a stream), peer,
   method, start time.
2. The per-peer rate limit, before any work, so anonymous floods (password
   guessing, garbage bytes) are limited too.
3. In the unit of work (database failures become retryable statuses, every
   wait for a lock or a connection ends at the call's deadline, a pooled
   connection goes back to the pool afterwards):
   a. authentication of ``authorization: Bearer <access token>`` on the
      protected methods (BillingService, AuditService, EventService, Logout);
   b. the per-user rate limit, keyed on the authenticated user;
   c. refusing a request body that is not a valid message
      (INVALID_ARGUMENT), after authentication, so that an anonymous caller
      learns nothing beyond UNAUTHENTICATED;
   d. the servicer. A stream's iterator runs each step in a unit of work of
      its own and ends with UNAUTHENTICATED when the access token expires.
4. Any exception becomes a status in ``status.py``, the one error map;
   an unexpected one is logged with its traceback (and reported to the
   error tracker, when one is configured) and answered INTERNAL.
5. Finally the access-log line and the RPC metrics, which see the final code.

Health checks and reflection are neither authenticated nor limited, and
health checks log at DEBUG (probes call every few seconds). Never logs
request or response bodies, metadata, tokens or passwords.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from lending_grpc.api import call as calls
from lending_grpc.api import response_headers
from lending_grpc.api.call import Call
from lending_grpc.api.metrics import MethodMetrics, RpcMetrics
from lending_grpc.api.rate_limits import TokenBuckets, peer_key
from lending_grpc.api.status import status_of
from lending_grpc.core.auth import AuthCore
from lending_grpc.core.errors import (
    DeadlineExceeded,
    InvalidArgument,
    LendingError,
    RateLimited,
    Unauthenticated,
)
from lending_grpc.core.storage.database import LendingDatabase

log = logging.getLogger("lending_grpc.access")
errors_log = logging.getLogger("lending_grpc.api")

REQUEST_ID_KEY = "x-request-id"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
LENDING_PREFIX = "/lending.v1."
PROTECTED_PREFIXES = (
    "/lending.v1.BillingService/",
    "/lending.v1.AuditService/",
    "/lending.v1.EventService/",
)
PROTECTED_METHODS = frozenset({"/lending.v1.AuthService/Logout"})
_BEARER = "bearer "
# Letters, digits and the punctuation of common trace-id formats; anything
# else (spaces, newlines, quotes, huge values) would let a caller forge or
# bloat log lines, so such an id is replaced by a generated one.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:=+/-]{1,128}")
# grpcio reports a call without a deadline as one in the far future.
_NO_DEADLINE_S = 365 * 86400.0


# -- request ids ------------------------------------------------------------------

# Generated ids are 32 hex digits like a uuid4's: 80 random bits drawn once
# per process (a forked worker draws its own) and a 48-bit counter, unique
# without paying for os.urandom on every call.
_generated_prefix = ""
_generated_count = itertools.count(1)


def _new_generated_prefix() -> None:
    global _generated_prefix
    _generated_prefix = secrets.token_hex(10)


_new_generated_prefix()
os.register_at_fork(after_in_child=_new_generated_prefix)


def safe_request_id(value: Any) -> str:
    """``value`` if it is a safe request id, else a new random one."""
    if isinstance(value, str) and _SAFE_REQUEST_ID.fullmatch(value):
        return value
    return f"{_generated_prefix}{next(_generated_count):012x}"


def split_method(full_method: str) -> tuple[str, str]:
    """``/lending.v1.BillingService/GetLoan`` -> (``lending.v1.BillingService``, ``GetLoan``)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def call_deadline(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline as a ``time.monotonic()`` instant, None when it set none.

    Raises DeadlineExceeded when it already passed (the call waited for a
    thread that long): the caller has given up, so no work is started.
    """
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_S:
        return None
    if remaining <= 0:
        raise DeadlineExceeded("the call's deadline passed before the server could start it")
    return time.monotonic() + remaining


def bearer_token(values: list[Any]) -> str:
    """The token of the (single) ``authorization: Bearer ...`` header, else Unauthenticated."""
    if not values:
        raise Unauthenticated("missing authorization metadata: send 'authorization: Bearer <access_token>'")
    if len(values) > 1:
        raise Unauthenticated("send exactly one authorization header")
    value = values[0]
    if not isinstance(value, str) or not value[: len(_BEARER)].lower() == _BEARER:
        raise Unauthenticated("the authorization header must be 'Bearer <access_token>'")
    token = value[len(_BEARER) :].strip()
    if not token:
        raise Unauthenticated("the bearer token is empty")
    return token


# -- undecodable requests -------------------------------------------------------------


class _Undecodable:
    """Stands in for a request whose bytes are not a valid message (grpcio would answer INTERNAL)."""


UNDECODABLE = _Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, RuntimeError):
            return UNDECODABLE

    return deserialize


# -- the pipeline ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """What the pipeline needs to know about one method, worked out once."""

    method: str
    protected: bool  # needs a bearer token
    limited: bool  # counts against the rate limits
    log_level: int
    metrics: MethodMetrics | None


class Pipeline(grpc.ServerInterceptor):
    """Runs every call through the steps of the module docstring.

    ``on_internal_error(exc, call)`` is told about each unexpected exception
    (the error tracker's hook); ``clock`` gives Unix seconds (tests move it).
    """

    def __init__(
        self,
        *,
        auth: AuthCore,
        database: LendingDatabase,
        metrics: RpcMetrics | None = None,
        peer_limit: TokenBuckets | None = None,
        user_limit: TokenBuckets | None = None,
        on_internal_error: Callable[[BaseException, Call], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._auth = auth
        self._db = database
        self._metrics = metrics
        self._peer_limit = peer_limit
        self._user_limit = user_limit
        self._on_internal_error = on_internal_error
        self._clock = clock
        # grpcio calls intercept_service on every RPC; the wrapped handler
        # depends only on the method, so each is built once. Unknown methods
        # (no handler) are not remembered: clients cannot grow this table.
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        response_headers.install()

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = continuation(handler_call_details)
            if handler is None:
                return None
            handler = self._handlers[method] = self._wrap(handler, method)
        return handler

    def _route(self, method: str, streaming: bool) -> Route:
        service, name = split_method(method)
        return Route(
            method=method,
            protected=method.startswith(PROTECTED_PREFIXES) or method in PROTECTED_METHODS,
            limited=method.startswith(LENDING_PREFIX),
            log_level=logging.DEBUG if method.startswith(HEALTH_PREFIX) else logging.INFO,
            metrics=self._metrics.for_method(service, name, streaming) if self._metrics else None,
        )

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        deserializer = handler.request_deserializer
        replace: dict[str, Any] = {}
        if deserializer is not None:
            replace["request_deserializer"] = _tolerant(deserializer)
        if handler.unary_unary is not None:
            route, behaviour = self._route(method, streaming=False), handler.unary_unary
            replace["unary_unary"] = lambda request, context: self._unary(route, behaviour, request, context)
        elif handler.unary_stream is not None:
            route, behaviour = self._route(method, streaming=True), handler.unary_stream
            replace["unary_stream"] = lambda request, context: self._stream(
                route, behaviour, request, context
            )
        else:
            return handler  # client- and bidirectional streams (reflection) pass as they are
        return handler._replace(**replace)

    # -- steps 1 to 3c

    def _start(
        self, route: Route, context: grpc.ServicerContext, streaming: bool = False
    ) -> tuple[Call, list[Any]]:
        """Step 1: the Call record and its request id header; and the authorization values.

        A stream's watcher wants the header before the first item, which may
        be long in coming; a unary answer carries it without a batch of its own.
        """
        request_id, authorization = None, []
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_KEY:
                if request_id is None:
                    request_id = value
            elif key == "authorization":
                authorization.append(value)
        call = Call(route.method, safe_request_id(request_id), context.peer() or "", time.perf_counter())
        header = ((REQUEST_ID_KEY, call.request_id),)
        if streaming:
            context.send_initial_metadata(header)
        else:
            response_headers.send_with_answer(context, header)
        return call, authorization

    def _limit_peer(self, route: Route, call: Call) -> None:
        """Step 2."""
        if route.limited and self._peer_limit is not None:
            wait = self._peer_limit.take(peer_key(call.peer))
            if wait:
                raise RateLimited("peer", wait)

    def _admit(self, route: Route, call: Call, request: Any, authorization: list[Any]) -> None:
        """Steps 3a to 3c, inside the unit of work."""
        if route.protected:
            call.principal, call.token_expires_at = self._auth.authenticate(bearer_token(authorization))
            if route.limited and self._user_limit is not None:
                wait = self._user_limit.take(call.principal.user_id)
                if wait:
                    raise RateLimited("user", wait)
        if request is UNDECODABLE:
            raise InvalidArgument("request", "is not a valid protobuf message")

    # -- steps 4 and 5

    def _refuse(self, exc: BaseException, call: Call, context: grpc.ServicerContext) -> grpc.StatusCode:
        """Step 4: answer ``exc`` with its status; returns the code for the log."""
        if not isinstance(exc, LendingError):
            if context.code() is not None:  # grpcio's own abort (the message size limit, say)
                raise exc
            errors_log.error("unexpected error in %s", call.method, exc_info=exc)
            if self._on_internal_error is not None:
                self._on_internal_error(exc, call)
        status = status_of(exc)
        context.abort_with_status(status)  # raises
        return status.code  # pragma: no cover

    def _finish(self, route: Route, call: Call, code: grpc.StatusCode) -> None:
        """Step 5: one access-log line and the RPC metrics."""
        elapsed = time.perf_counter() - call.started
        if route.metrics is not None:
            route.metrics.handled(code, elapsed)
        if log.isEnabledFor(route.log_level):
            user = call.principal.user_id if call.principal is not None else "-"
            log.log(
                route.log_level,
                "rpc method=%s code=%s ms=%.1f user=%s peer=%s request_id=%s",
                call.method,
                code.name,
                elapsed * 1000,
                user,
                call.peer,
                call.request_id,
                extra={
                    "rpc": {
                        "method": call.method,
                        "code": code.name,
                        "ms": round(elapsed * 1000, 1),
                        "user": user,
                        "peer": call.peer,
                    }
                },
            )

    @staticmethod
    def _final_code(exc: BaseException, context: grpc.ServicerContext) -> grpc.StatusCode:
        return context.code() or (
            grpc.StatusCode.CANCELLED if not context.is_active() else grpc.StatusCode.UNKNOWN
        )

    # -- unary calls

    def _unary(self, route: Route, behaviour, request: Any, context: grpc.ServicerContext) -> Any:
        call, authorization = self._start(route, context)
        token = calls.enter(call)
        if route.metrics is not None:
            route.metrics.started()
        code = grpc.StatusCode.OK
        try:
            try:
                self._limit_peer(route, call)
                with self._db.unit_of_work(call_deadline(context)):
                    self._admit(route, call, request, authorization)
                    return behaviour(request, context)
            except Exception as exc:
                code = self._refuse(exc, call, context)
        except BaseException as exc:
            code = self._final_code(exc, context)
            raise
        finally:
            self._finish(route, call, code)
            calls.leave(token)

    # -- server-streaming calls

    def _stream(self, route: Route, behaviour, request: Any, context: grpc.ServicerContext) -> Iterator:
        # grpcio drives this generator from one worker thread until the stream
        # ends, so the call stays current for the stream's whole life.
        call, authorization = self._start(route, context, streaming=True)
        token = calls.enter(call)
        if route.metrics is not None:
            route.metrics.started()
        code = grpc.StatusCode.OK
        items: Iterator | None = None
        try:
            try:
                self._limit_peer(route, call)
                deadline = call_deadline(context)
                with self._db.unit_of_work(deadline):
                    self._admit(route, call, request, authorization)
                    items = iter(behaviour(request, context))
                while True:
                    if call.token_expires_at and self._clock() >= call.token_expires_at:
                        raise Unauthenticated("the access token expired during the stream; log in again")
                    with self._db.unit_of_work(deadline):
                        item = next(items, _END)
                    if item is _END:
                        if not context.is_active():  # the servicer saw the client leave
                            code = grpc.StatusCode.CANCELLED
                        return
                    yield item
            except Exception as exc:
                code = self._refuse(exc, call, context)
        except BaseException as exc:
            code = self._final_code(exc, context)
            raise
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # the servicer's generator releases what it holds
            self._finish(route, call, code)
            calls.leave(token)


_END = object()
