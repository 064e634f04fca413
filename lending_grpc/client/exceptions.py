"""Typed exceptions for failed calls, carrying the gRPC code, message and google.rpc details.

The server answers every refusal with a status code, a message that is safe to
show, and (AIP-193) a google.rpc.ErrorInfo whose `reason` tells refusals apart;
INVALID_ARGUMENT also carries a google.rpc.BadRequest naming the field. One
function, `from_rpc_error`, turns a grpc.RpcError into the matching class.
"""

from __future__ import annotations

import dataclasses

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

RETRYABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)


@dataclasses.dataclass(frozen=True, slots=True)
class FieldViolation:
    """One entry of a google.rpc.BadRequest: the request field and what is wrong with it."""

    field: str
    description: str


class LendingError(Exception):
    """A call failed. `code` is the gRPC status code; `reason`/`domain` come from google.rpc.ErrorInfo."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        field_violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.field_violations = field_violations

    @property
    def field(self) -> str | None:
        """The first request field the server named as wrong, if any."""
        return self.field_violations[0].field if self.field_violations else None

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed when sent again later (the SDK already retried it)."""
        return self.code in RETRYABLE_CODES

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(LendingError):
    """A request field is missing or malformed; `field` names it."""


class NotFound(LendingError):
    """The loan does not exist or belongs to another user (the server never tells which)."""


class AlreadyExists(LendingError):
    """The username is taken, the loan_id has other terms, or a request_id was used for another payment."""


class FailedPrecondition(LendingError):
    """The request is well formed but the loan's current state refuses it."""


class PaymentNotAccepted(FailedPrecondition):
    """The amount is not a whole number of the next unpaid installments, or exceeds the balance."""


class LoanPaidOff(FailedPrecondition):
    """The loan is paid off and accepts no more payments."""


class Unauthenticated(LendingError):
    """Wrong credentials, or a token that is missing, malformed, expired or of the wrong kind."""


class NotLoggedIn(Unauthenticated):
    """Raised by the client itself: it has no usable tokens and no credentials to log in with."""

    def __init__(self, message: str = "not logged in: call login() or pass username and password") -> None:
        super().__init__(grpc.StatusCode.UNAUTHENTICATED, message, reason="NOT_LOGGED_IN")


class PermissionDenied(LendingError):
    """Authenticated, but not allowed to do this."""


class ResourceExhausted(LendingError):
    """Too many calls in flight on the server, or a message too large."""


class Unavailable(LendingError):
    """The server cannot be reached or is too busy; already retried with backoff."""


class Aborted(LendingError):
    """A transaction conflict on the server; already retried with backoff."""


class DeadlineExceeded(LendingError):
    """The call did not finish within its deadline (a payment may still have been recorded:
    repeat it with the same request_id to find out)."""


class Internal(LendingError):
    """A server-side bug; the message hides the details, the server log has them."""


_BY_CODE: dict[grpc.StatusCode, type[LendingError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INTERNAL: Internal,
}
_BY_REASON: dict[str, type[LendingError]] = {
    "PAYMENT_NOT_ACCEPTED": PaymentNotAccepted,
    "LOAN_PAID_OFF": LoanPaidOff,
}


def from_rpc_error(err: grpc.RpcError) -> LendingError:
    """The typed exception for a failed call, with the ErrorInfo and BadRequest details unpacked."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    message = (err.details() if callable(getattr(err, "details", None)) else None) or str(err)
    reason = domain = ""
    violations: list[FieldViolation] = []
    try:
        status = rpc_status.from_call(err)
    except (ValueError, AttributeError):  # inconsistent or absent status details: keep code and message
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain = info.reason, info.domain
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code, LendingError)
    return cls(code, message, reason=reason, domain=domain, field_violations=tuple(violations))
