"""Initial metadata (response headers) that travel with a unary call's answer.

grpcio's public ``ServicerContext.send_initial_metadata`` starts a batch of
its own: one more completion-queue round trip per call, measured at about
60 us of server CPU per call on bare grpcio (a quarter of what grpcio itself
costs per unary call; `python -m bench.run` shows the ceilings). When a
handler sends no initial metadata, grpcio sends an empty set in the same
batch as the response or the error status. `send_with_answer` has that
batch carry ours instead.

It leans on two grpcio internals: the context's ``_state`` and
``grpc._server._get_initial_metadata`` (which every "send initial metadata
now" path of grpcio's server calls, the response, the status and the abort
alike). When either is missing (a grpcio release that moved them), the
public call is used, so an upgrade can cost speed, never the header:
tests/test_observability.py checks it on answers and on errors.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

try:
    from grpc import _server as _grpc_server

    _original = _grpc_server._get_initial_metadata
except (ImportError, AttributeError):  # pragma: no cover - a grpcio that moved its internals
    _grpc_server = None
    _original = None

_PENDING = "lending_grpc_initial_metadata"


def _with_pending(state, metadata):
    if metadata is None:
        metadata = getattr(state, _PENDING, None)
    return _original(state, metadata)


def install() -> bool:
    """Route grpcio's empty initial metadata through `send_with_answer`'s; True when in effect."""
    if _original is None:
        return False
    if _grpc_server._get_initial_metadata is not _with_pending:
        _grpc_server._get_initial_metadata = _with_pending
    return True


def send_with_answer(context: grpc.ServicerContext, metadata: Sequence[tuple[str, str]]) -> None:
    """Send ``metadata`` as initial metadata with the call's answer (at once when that cannot be)."""
    state = getattr(context, "_state", None)
    if _original is None or state is None or _grpc_server._get_initial_metadata is not _with_pending:
        context.send_initial_metadata(metadata)
        return
    setattr(state, _PENDING, tuple(metadata))
