"""Gives every call an AuditContext (peer, RPC, request id) for the core's audit records."""

from __future__ import annotations

from typing import Any

import grpc

from lending_grpc.api import context as call_context
from lending_grpc.api.handlers import Behaviour, WrappingInterceptor, wrap_unary
from lending_grpc.api.logging_interceptor import request_id_from
from lending_grpc.core import audit


class AuditContextInterceptor(WrappingInterceptor):
    """Sets ``core.audit.current`` for the call; the auth interceptor adds the actor."""

    def wrap_handler(self, handler, method):
        def wrap(behaviour: Behaviour) -> Behaviour:
            def with_context(request: Any, context: grpc.ServicerContext) -> Any:
                # One id per call: the access log's (returned to the caller), when it ran;
                # otherwise the same rule picks the caller's id or makes one.
                call = call_context.current_call.get(None)
                ctx = audit.AuditContext(
                    peer=call_context.peer_of(context),
                    rpc=method,
                    request_id=call.request_id if call else request_id_from(context.invocation_metadata()),
                )
                token = audit.current.set(ctx)
                try:
                    return behaviour(request, context)
                finally:
                    audit.current.reset(token)

            return with_context

        return wrap_unary(handler, wrap)
