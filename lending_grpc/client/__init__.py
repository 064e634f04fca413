"""Python SDK for lending-grpc: a typed client that logs in, keeps tokens fresh and retries safely.

Depends only on grpcio, grpcio-status, protobuf and the generated `lending.v1`
stubs, never on the server's code, so it can be vendored on its own.
"""

from lending_grpc.client.client import DEFAULT_TIMEOUT_SECONDS, LendingClient
from lending_grpc.client.connection import TlsConfig, service_config
from lending_grpc.client.exceptions import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    LendingError,
    LoanPaidOff,
    NotFound,
    NotLoggedIn,
    PaymentNotAccepted,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from lending_grpc.client.types import (
    DelinquencyStatus,
    Installment,
    Loan,
    LoanState,
    Outstanding,
    Page,
    Payment,
    Schedule,
    Tokens,
    User,
)

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "Aborted",
    "AlreadyExists",
    "DeadlineExceeded",
    "DelinquencyStatus",
    "FailedPrecondition",
    "FieldViolation",
    "Installment",
    "Internal",
    "InvalidArgument",
    "LendingClient",
    "LendingError",
    "Loan",
    "LoanPaidOff",
    "LoanState",
    "NotFound",
    "NotLoggedIn",
    "Outstanding",
    "Page",
    "Payment",
    "PaymentNotAccepted",
    "PermissionDenied",
    "ResourceExhausted",
    "Schedule",
    "Tokens",
    "TlsConfig",
    "Unauthenticated",
    "Unavailable",
    "User",
    "service_config",
]
