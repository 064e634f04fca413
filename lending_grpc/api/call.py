"""The Call record: one RPC as the pipeline sees it, and how servicers and log lines reach it.

The pipeline (``pipeline.py``) makes one per call and makes it current for
the call's duration (a context variable: grpcio runs interceptor and handler
in the same context). Servicers read the caller from it; log records read
its request id. Nothing else is shared between the pipeline's steps.
"""

from __future__ import annotations

import contextvars
import dataclasses

from lending_grpc.core.views import Actor, Principal


@dataclasses.dataclass(slots=True)
class Call:
    """Who is calling which method, from where, since when; ``principal`` once authenticated."""

    method: str
    request_id: str
    peer: str
    started: float  # time.perf_counter() at arrival
    principal: Principal | None = None
    token_expires_at: float = 0.0  # Unix seconds; a stream ends when its access token expires
    _actor: Actor | None = None

    @property
    def actor(self) -> Actor:
        """The caller as the core is told about it (who, from where, through which RPC and request)."""
        if self._actor is None:
            principal = self.principal
            self._actor = Actor(
                principal=principal,
                name=principal.user_id if principal is not None else "",
                peer=self.peer,
                rpc=self.method,
                request_id=self.request_id,
            )
        return self._actor

    @property
    def user(self) -> Principal:
        """The authenticated caller (protected methods only)."""
        if self.principal is None:
            raise RuntimeError(f"{self.method} runs without authentication")
        return self.principal


_current: contextvars.ContextVar[Call] = contextvars.ContextVar("lending_call")


def current_call() -> Call:
    """The call being served on this thread (inside a servicer)."""
    return _current.get()


def current_request_id() -> str:
    """The current call's request id, or "" outside any call (for log records)."""
    call = _current.get(None)
    return call.request_id if call is not None else ""


def enter(call: Call) -> contextvars.Token:
    """Make ``call`` current; the pipeline resets the returned token when the call ends."""
    return _current.set(call)


def leave(token: contextvars.Token) -> None:
    """End what `enter` began."""
    _current.reset(token)
