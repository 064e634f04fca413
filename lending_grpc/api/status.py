"""The one place that turns exceptions into gRPC status: code, message and details (AIP-193).

Every refusal is a `LendingError` (``core/errors.py``, one documented tree)
whose class decides the code; database failures became LendingErrors in the
unit of work. Each status carries a google.rpc.ErrorInfo (domain
``lending.v1``, the error's ``reason``), a google.rpc.BadRequest naming the
field for INVALID_ARGUMENT, and a google.rpc.RetryInfo when the error says
when to retry. Anything else is a bug: INTERNAL, with nothing of its
internals in the message.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from lending_grpc.core import errors

ERROR_DOMAIN = "lending.v1"

# Most specific class first; every LendingError is one of these.
_CODES: tuple[tuple[type[errors.LendingError], int], ...] = (
    (errors.InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (errors.NotFound, code_pb2.NOT_FOUND),
    (errors.AlreadyExists, code_pb2.ALREADY_EXISTS),
    (errors.FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (errors.Unauthenticated, code_pb2.UNAUTHENTICATED),
    (errors.PermissionDenied, code_pb2.PERMISSION_DENIED),
    (errors.ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED),
    (errors.Unavailable, code_pb2.UNAVAILABLE),
    (errors.Aborted, code_pb2.ABORTED),
    (errors.DeadlineExceeded, code_pb2.DEADLINE_EXCEEDED),
)
_BY_CLASS: dict[type, int] = {}

INTERNAL = rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message="internal error"))


def _packed(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _code_of(exc: errors.LendingError) -> int:
    code = _BY_CLASS.get(type(exc))
    if code is None:
        code = _BY_CLASS[type(exc)] = next(code for cls, code in _CODES if isinstance(exc, cls))
    return code


def to_status_proto(exc: errors.LendingError) -> status_pb2.Status:
    """The google.rpc.Status of a refusal, with its details."""
    # What is particular to the error first (the field, when to retry), then ErrorInfo.
    details = []
    if isinstance(exc, errors.InvalidArgument):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in exc.violations
        ]
        details.append(_packed(error_details_pb2.BadRequest(field_violations=violations)))
    if exc.retry_after_s is not None:
        # Whole milliseconds, rounded up: retrying at the advised moment must not be too early.
        millis = max(1, math.ceil(exc.retry_after_s * 1000))
        delay = duration_pb2.Duration(seconds=millis // 1000, nanos=(millis % 1000) * 1_000_000)
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    details.append(
        _packed(error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN, metadata=exc.metadata))
    )
    return status_pb2.Status(code=_code_of(exc), message=exc.message, details=details)


def status_of(exc: BaseException) -> grpc.Status:
    """The status to answer ``exc`` with: its own for a LendingError, INTERNAL for anything else."""
    if isinstance(exc, errors.LendingError):
        return rpc_status.to_status(to_status_proto(exc))
    return INTERNAL
