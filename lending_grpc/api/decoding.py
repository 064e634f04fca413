"""Undecodable request bytes become INVALID_ARGUMENT, not grpcio's INTERNAL.

grpcio answers INTERNAL when a request does not parse. This interceptor, the
innermost, swaps in a deserializer that returns a marker instead of raising;
its wrapper then refuses the marker with InvalidArgument. Being innermost,
it runs after authentication, so an anonymous caller still gets
UNAUTHENTICATED first.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import DecodeError

from lending_grpc.api.handlers import Behaviour, WrappingInterceptor, wrap_unary
from lending_grpc.core.errors import InvalidArgument


class _Undecodable:
    """Stands in for a request whose bytes are not a valid message."""


UNDECODABLE = _Undecodable()


def _tolerant(deserializer):
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, RuntimeError):
            return UNDECODABLE

    return deserialize


def _refuse_undecodable(behaviour: Behaviour) -> Behaviour:
    def checked(request: Any, context: grpc.ServicerContext) -> Any:
        if request is UNDECODABLE:
            raise InvalidArgument("request", "is not a valid protobuf message")
        return behaviour(request, context)

    return checked


class RequestDecodingInterceptor(WrappingInterceptor):
    """Refuses unparsable requests with INVALID_ARGUMENT (mapped by the error interceptor)."""

    def wrap_handler(self, handler, method):
        if handler.request_deserializer is None:
            return handler
        return wrap_unary(
            handler, _refuse_undecodable, request_deserializer=_tolerant(handler.request_deserializer)
        )
