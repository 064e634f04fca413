"""Helper for interceptors that wrap the behaviour of unary-unary handlers."""

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
