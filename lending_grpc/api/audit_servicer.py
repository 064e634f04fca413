"""AuditService: operators page through the audit trail."""

from __future__ import annotations

from lending.v1 import audit_pb2, audit_pb2_grpc

from lending_grpc.api import messages
from lending_grpc.api.call import current_call
from lending_grpc.core import fields
from lending_grpc.core.audit import AuditLog
from lending_grpc.core.auth import AuthCore
from lending_grpc.core.errors import InvalidArgument


def _micros(message, field: str) -> int | None:
    if not message.HasField(field):
        return None
    stamp = getattr(message, field)
    return stamp.seconds * 1_000_000 + stamp.nanos // 1000


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Operator-only reads of the audit trail."""

    def __init__(self, log: AuditLog, auth: AuthCore) -> None:
        self._log = log
        self._auth = auth

    def ListAuditEvents(self, request, context):
        self._auth.require_operator(current_call().actor, "ListAuditEvents")
        start, end = _micros(request, "start_time"), _micros(request, "end_time")
        if start is not None and end is not None and end < start:
            raise InvalidArgument("end_time", "must not be before start_time")
        if request.user_id and not (len(request.user_id) <= 64 and request.user_id.isprintable()):
            raise InvalidArgument("user_id", "is not a user id")
        loan_id = fields.loan_id(request.loan_id) if request.loan_id else ""
        page = self._log.list(
            request.page_size,
            request.page_token,
            start_us=start,
            end_us=end,
            user_id=request.user_id,
            loan_id=loan_id,
        )
        return audit_pb2.ListAuditEventsResponse(
            events=[messages.audit_event(view) for view in page.items], next_page_token=page.next_page_token
        )
