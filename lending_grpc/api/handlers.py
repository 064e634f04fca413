"""Helpers for interceptors that wrap the behaviour of unary-unary handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behaviour = Callable[[Any, grpc.ServicerContext], Any]


def wrap_unary(
    handler: grpc.RpcMethodHandler | None,
    wrap: Callable[[Behaviour], Behaviour],
    **replace: Any,
) -> grpc.RpcMethodHandler | None:
    """Return ``handler`` with its unary-unary behaviour wrapped (other kinds pass unchanged)."""
    if handler is None or handler.unary_unary is None:
        return handler
    return handler._replace(unary_unary=wrap(handler.unary_unary), **replace)


class WrappingInterceptor(grpc.ServerInterceptor):
    """An interceptor that wraps each method's handler once, then reuses the wrapped handler.

    grpcio calls ``intercept_service`` on every RPC; building the wrappers
    (closures and a new handler tuple per interceptor) each time cost more
    than the handler itself on cheap calls. The wrapping depends only on the
    method, and the handler the continuation returns for a registered method
    never changes, so each is built once. Unknown methods (no handler) are
    not remembered, so clients cannot grow the cache.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = self._wrapped.get(method)
        if handler is None:
            handler = continuation(handler_call_details)
            if handler is None:
                return None
            handler = self._wrapped[method] = self.wrap_handler(handler, method)
        return handler

    def wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """The handler to serve ``method`` with, built once per method."""
        raise NotImplementedError
