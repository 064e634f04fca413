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
    peer: str = ""  # context.peer() once per call: inner layers read it here


def peer_of(context) -> str:
    """The calling peer ("ipv4:10.0.0.7:51234"), as the access log recorded it for this call."""
    call = current_call.get(None)
    return call.peer if call is not None and call.peer else (context.peer() or "")


current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("current_principal")
current_call: contextvars.ContextVar[CallInfo] = contextvars.ContextVar("current_call")


def principal() -> Principal:
    """The authenticated caller of the current BillingService call (set by the auth interceptor)."""
    return current_principal.get()
