"""Per-call state shared between interceptors and servicers."""

from __future__ import annotations

import contextvars
import dataclasses

from lending_grpc.core.views import Principal


@dataclasses.dataclass(slots=True)
class CallInfo:
    """What the logging interceptor reports about the current call; filled in by inner layers."""

    user_id: str = ""
    request_id: str = ""


current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("current_principal")
current_call: contextvars.ContextVar[CallInfo] = contextvars.ContextVar("current_call")


def principal() -> Principal:
    """The authenticated caller of the current BillingService call (set by the auth interceptor)."""
    return current_principal.get()
