"""The error tree: every refusal the service makes on purpose, each class one kind of answer.

The core raises these; the API layer turns each class into exactly one gRPC
status code in one place (`lending_grpc.api.status`), and the core never
knows about gRPC. ``reason`` is the machine-readable name clients see in the
google.rpc.ErrorInfo detail; ``retry_after_s`` (when set) becomes a
google.rpc.RetryInfo. Anything that is not a LendingError is a bug and is
answered INTERNAL.

    LendingError
    +-- InvalidArgument(field)        request fields missing or malformed (violations: each one)
    +-- NotFound                      no such resource, or another user's
    +-- AlreadyExists                 a create or idempotency key collides
    +-- FailedPrecondition            the resource's state refuses the request
    |   +-- PaymentNotAccepted        not a whole number of the next installments
    |   +-- LoanPaidOff               nothing left to pay
    +-- Unauthenticated               no valid credentials
    +-- PermissionDenied              authenticated, but not allowed
    +-- ResourceExhausted             a limit was reached (retry_after_s)
    |   +-- AccountLocked             too many failed sign-ins
    |   +-- RateLimited               too many calls (scope: peer or user)
    +-- Unavailable                   the database is busy; retry
    |   +-- DatabaseUnreachable       the database cannot be reached; retry
    |   +-- StorageFull(kind)         the database has no room (disk, memory, connections); retry later
    +-- Aborted                       lost a conflict with a concurrent write; retry
    +-- DeadlineExceeded              the caller's deadline ran out while waiting for the database
"""

from __future__ import annotations

import math


class LendingError(Exception):
    """Base of every error the service raises on purpose. `message` is safe to show to clients."""

    reason = "LENDING_ERROR"
    retry_after_s: float | None = None
    metadata: dict[str, str] | None = None  # ErrorInfo metadata, when a refusal has more to say

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(LendingError):
    """A request field is missing or malformed. `field` names it (proto field name).

    ``violations`` lists every bad field of the request, ``(field,
    description)``, the first being ``field``'s: `combined` gathers several
    so that a client fixes a form in one round trip.
    """

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description
        self.violations: tuple[tuple[str, str], ...] = ((field, description),)

    @classmethod
    def combined(cls, errors: list[InvalidArgument]) -> InvalidArgument:
        """One refusal naming every field of ``errors`` (in request order)."""
        first = errors[0]
        if len(errors) == 1:
            return first
        merged = cls(first.field, first.description)
        merged.violations = tuple(v for error in errors for v in error.violations)
        merged.message = "; ".join(f"{field}: {description}" for field, description in merged.violations)
        merged.args = (merged.message,)
        return merged


class NotFound(LendingError):
    """The resource does not exist or belongs to someone else (the two are indistinguishable)."""

    reason = "NOT_FOUND"


class AlreadyExists(LendingError):
    """A create or idempotency key collides with an existing, different resource."""

    reason = "ALREADY_EXISTS"


class FailedPrecondition(LendingError):
    """The request is well formed but the resource's current state refuses it."""

    reason = "FAILED_PRECONDITION"


class PaymentNotAccepted(FailedPrecondition):
    """A payment amount that is not a whole number of the next unpaid installments."""

    reason = "PAYMENT_NOT_ACCEPTED"


class LoanPaidOff(FailedPrecondition):
    """A payment on a loan whose every installment is already paid."""

    reason = "LOAN_PAID_OFF"


class Unauthenticated(LendingError):
    """Credentials or tokens are missing, wrong, expired or of the wrong kind."""

    reason = "UNAUTHENTICATED"


class Unavailable(LendingError):
    """Transient contention (database busy beyond the timeout); the client may retry."""

    reason = "DATABASE_BUSY"


class DatabaseUnreachable(Unavailable):
    """The database server cannot be reached or has no free connection; the client may retry."""

    reason = "DATABASE_UNREACHABLE"


# What each kind of StorageFull tells the client, and when retrying can help.
_STORAGE_FULL = {
    "disk_full": ("the database storage is full", 5.0),
    "out_of_memory": ("the database server is out of memory", 1.0),
    "out_of_connections": ("the database server has no free connection slot", 1.0),
    "resources": ("the database server is out of resources", 1.0),
}


class StorageFull(Unavailable):
    """The database refused the work for want of room: a full disk, no memory, no connection slot.

    Nothing was written (the database rolled the transaction back), so a
    retry is safe; it succeeds once an operator frees space (a full disk)
    or the server has capacity again. ``kind`` (``disk_full``,
    ``out_of_memory``, ``out_of_connections``, ``resources``) is told to
    clients in the ErrorInfo metadata and counted by the metrics.
    """

    reason = "STORAGE_FULL"

    def __init__(self, kind: str) -> None:
        what, self.retry_after_s = _STORAGE_FULL.get(kind, _STORAGE_FULL["resources"])
        super().__init__(f"{what}: the request was not carried out and nothing was written; retry later")
        self.kind = kind
        self.metadata = {"kind": kind}


class DeadlineExceeded(LendingError):
    """The caller's deadline ran out while the call waited for the database; nothing was written."""

    reason = "DEADLINE_EXCEEDED"


class Aborted(LendingError):
    """A transaction lost a conflict with a concurrent one and was rolled back; retrying is safe."""

    reason = "TRANSACTION_CONFLICT"


class PermissionDenied(LendingError):
    """The caller is authenticated but its role does not allow this (an operator-only path)."""

    reason = "PERMISSION_DENIED"


class ResourceExhausted(LendingError):
    """A limit was reached; ``retry_after_s`` says when trying again can succeed."""

    reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AccountLocked(ResourceExhausted):
    """Too many failed sign-ins: the account refuses every sign-in until the lockout ends."""

    reason = "ACCOUNT_LOCKED"


class RateLimited(ResourceExhausted):
    """Too many calls from one peer address or one user; ``scope`` says which limit."""

    reason = "RATE_LIMITED"

    def __init__(self, scope: str, retry_after_s: float) -> None:
        # Whole milliseconds, rounded up: retrying at the advised moment must succeed.
        wait_s = max(1, math.ceil(retry_after_s * 1000)) / 1000
        super().__init__(f"too many requests from this {scope}; retry in {wait_s:.3f}s", wait_s)
        self.metadata = {"limit": scope}
