"""Domain errors raised by the billing core.

The API layer maps each class to exactly one gRPC status code in one place
(`lending_grpc.api.errors`); the core never knows about gRPC.
"""

from __future__ import annotations


class LendingError(Exception):
    """Base of every error the core raises on purpose. `message` is safe to show to clients."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(LendingError):
    """A request field is missing or malformed. `field` names it (proto field name)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class NotFound(LendingError):
    """The resource does not exist or belongs to someone else (the two are indistinguishable)."""


class AlreadyExists(LendingError):
    """A create or idempotency key collides with an existing, different resource."""


class FailedPrecondition(LendingError):
    """The request is well formed but the resource's current state refuses it."""


class PaymentNotAccepted(FailedPrecondition):
    """A payment amount that is not a whole number of the next unpaid installments."""


class LoanPaidOff(FailedPrecondition):
    """A payment on a loan whose every installment is already paid."""


class Unauthenticated(LendingError):
    """Credentials or tokens are missing, wrong, expired or of the wrong kind."""


class Unavailable(LendingError):
    """Transient contention (database busy beyond the timeout); the client may retry."""


class DatabaseUnreachable(Unavailable):
    """The database server cannot be reached or has no free connection; the client may retry."""


class Aborted(LendingError):
    """A transaction lost a conflict with a concurrent one and was rolled back; retrying is safe."""


class PermissionDenied(LendingError):
    """The caller is authenticated but its role does not allow this (an operator-only path)."""


class ResourceExhausted(LendingError):
    """A limit was reached; ``retry_after_s`` says when trying again can succeed."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AccountLocked(ResourceExhausted):
    """Too many failed sign-ins: the account refuses every sign-in until the lockout ends."""
