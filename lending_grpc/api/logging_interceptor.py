"""One log line per RPC (method, status code, milliseconds, user id, peer, request id), and its metrics.

The outermost interceptor: it sees the final status code of every call,
so it both writes the access log and feeds the Prometheus RPC series.
Each call gets a request id, taken from the caller's `x-request-id`
metadata when that is a sane token, otherwise generated; it is returned as
`x-request-id` initial metadata and appears on every log line of the call.

Never logs request or response bodies, metadata, tokens or passwords.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import time
from typing import Any

import grpc

from lending_grpc.api import context as call_context
from lending_grpc.api.handlers import Behaviour, WrappingInterceptor, wrap_unary
from lending_grpc.api.metrics import RpcMetrics

log = logging.getLogger("lending_grpc.access")

REQUEST_ID_KEY = "x-request-id"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
# Letters, digits and the punctuation of common trace-id formats; anything
# else (spaces, newlines, quotes, huge values) would let a caller forge or
# bloat log lines, so such an id is replaced by a generated one.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:=+/-]{1,128}")


def request_id_from(metadata: Any) -> str:
    """The caller's x-request-id if it is a safe token, else a new random one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY:
            if isinstance(value, str) and _SAFE_REQUEST_ID.fullmatch(value):
                return value
            break
    return f"{_generated_prefix}{next(_generated_count):012x}"


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


def split_method(full_method: str) -> tuple[str, str]:
    """``/lending.v1.BillingService/GetLoan`` -> (``lending.v1.BillingService``, ``GetLoan``)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


class AccessLogInterceptor(WrappingInterceptor):
    """Outermost interceptor: request id, timing, the access log line and the RPC metrics."""

    def __init__(self, metrics: RpcMetrics | None = None) -> None:
        super().__init__()
        self._metrics = metrics

    def wrap_handler(self, handler, method):
        service_name, method_name = split_method(method)
        metrics = self._metrics.for_method(service_name, method_name) if self._metrics else None
        # Probes call every few seconds: their lines would drown the rest at INFO.
        level = logging.DEBUG if method.startswith(HEALTH_PREFIX) else logging.INFO

        def wrap(behaviour: Behaviour) -> Behaviour:
            def logged(request: Any, context: grpc.ServicerContext) -> Any:
                call = call_context.CallInfo(
                    request_id=request_id_from(context.invocation_metadata()), peer=context.peer() or ""
                )
                token = call_context.current_call.set(call)
                if metrics is not None:
                    metrics.started()
                started = time.perf_counter()
                code = grpc.StatusCode.OK
                try:
                    context.send_initial_metadata(((REQUEST_ID_KEY, call.request_id),))
                    response = behaviour(request, context)
                    code = context.code() or grpc.StatusCode.OK
                    return response
                except BaseException:
                    code = context.code() or (
                        grpc.StatusCode.CANCELLED if not context.is_active() else grpc.StatusCode.UNKNOWN
                    )
                    raise
                finally:
                    elapsed = time.perf_counter() - started
                    if metrics is not None:
                        metrics.handled(code, elapsed)
                    fields = {
                        "method": method,
                        "code": code.name,
                        "ms": round(elapsed * 1000, 1),
                        "user": call.user_id or "-",
                        "peer": call.peer,
                    }
                    log.log(
                        level,
                        "rpc method=%s code=%s ms=%.1f user=%s peer=%s request_id=%s",
                        method,
                        code.name,
                        elapsed * 1000,
                        fields["user"],
                        fields["peer"],
                        call.request_id,
                        extra={"rpc": fields},
                    )
                    call_context.current_call.reset(token)

            return logged

        return wrap_unary(handler, wrap)
