"""Checks `authorization: Bearer <access token>` on BillingService, AuditService and Logout calls.

The verified caller is put in a context variable for the duration of the
call (grpcio runs interceptor and handler in the same context), where the
servicer reads it with `context.principal()`.
"""

from __future__ import annotations

from typing import Any

import grpc

from lending_grpc.api import context as call_context
from lending_grpc.api.handlers import Behaviour, WrappingInterceptor, wrap_unary
from lending_grpc.core import audit
from lending_grpc.core.auth import AuthCore
from lending_grpc.core.errors import Unauthenticated

PROTECTED_PREFIXES = ("/lending.v1.BillingService/", "/lending.v1.AuditService/")
PROTECTED_METHODS = frozenset({"/lending.v1.AuthService/Logout"})
_SCHEME = "bearer "


def bearer_token(metadata: tuple[tuple[str, Any], ...]) -> str:
    """The token of the (single) `authorization: Bearer ...` header, else Unauthenticated."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        raise Unauthenticated("missing authorization metadata: send 'authorization: Bearer <access_token>'")
    if len(values) > 1:
        raise Unauthenticated("send exactly one authorization header")
    value = values[0]
    if not isinstance(value, str) or not value[: len(_SCHEME)].lower() == _SCHEME:
        raise Unauthenticated("the authorization header must be 'Bearer <access_token>'")
    token = value[len(_SCHEME) :].strip()
    if not token:
        raise Unauthenticated("the bearer token is empty")
    return token


class AuthInterceptor(WrappingInterceptor):
    """Authenticates BillingService, AuditService and Logout.

    The rest of AuthService, health and reflection stay open.
    """

    def __init__(self, auth: AuthCore) -> None:
        super().__init__()
        self._auth = auth

    def wrap_handler(self, handler, method):
        if not method.startswith(PROTECTED_PREFIXES) and method not in PROTECTED_METHODS:
            return handler
        auth = self._auth

        def wrap(behaviour: Behaviour) -> Behaviour:
            def authenticated(request: Any, context: grpc.ServicerContext) -> Any:
                principal = auth.authenticate(bearer_token(context.invocation_metadata()))
                call = call_context.current_call.get(None)
                if call is not None:
                    call.user_id = principal.user_id
                audit.context().actor = principal.user_id
                token = call_context.current_principal.set(principal)
                try:
                    return behaviour(request, context)
                finally:
                    call_context.current_principal.reset(token)

            return authenticated

        return wrap_unary(handler, wrap)
