"""One log line per RPC: method, status code, milliseconds, user id and peer.

Never logs request or response bodies, metadata, tokens or passwords.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc

from lending_grpc.api import context as call_context
from lending_grpc.api.handlers import Behaviour, WrappingInterceptor, wrap_unary

log = logging.getLogger("lending_grpc.access")


class AccessLogInterceptor(WrappingInterceptor):
    """Outermost interceptor: times the call and logs how it ended."""

    def wrap_handler(self, handler, method):
        def wrap(behaviour: Behaviour) -> Behaviour:
            def logged(request: Any, context: grpc.ServicerContext) -> Any:
                call = call_context.CallInfo()
                token = call_context.current_call.set(call)
                started = time.perf_counter()
                code = grpc.StatusCode.OK
                try:
                    return behaviour(request, context)
                except BaseException:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    call_context.current_call.reset(token)
                    elapsed_ms = (time.perf_counter() - started) * 1000
                    log.info(
                        "rpc method=%s code=%s ms=%.1f user=%s peer=%s",
                        method,
                        code.name,
                        elapsed_ms,
                        call.user_id or "-",
                        context.peer(),
                    )

            return logged

        return wrap_unary(handler, wrap)
