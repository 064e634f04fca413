"""The one place that turns core errors into gRPC status codes (AIP-193).

Servicers never catch and re-wrap errors: they let domain errors rise, and
this interceptor answers with the matching code, a google.rpc.BadRequest
naming the field for INVALID_ARGUMENT, and a google.rpc.ErrorInfo reason.
Anything unexpected is logged with its traceback and answered INTERNAL with
no internals in the message.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from lending_grpc.api.handlers import Behaviour, WrappingInterceptor, wrap_unary
from lending_grpc.core import errors

log = logging.getLogger(__name__)

ERROR_DOMAIN = "lending.v1"

# Most specific class first.
_CODES: tuple[tuple[type[errors.LendingError], int, str], ...] = (
    (errors.InvalidArgument, code_pb2.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    (errors.NotFound, code_pb2.NOT_FOUND, "NOT_FOUND"),
    (errors.AlreadyExists, code_pb2.ALREADY_EXISTS, "ALREADY_EXISTS"),
    (errors.PaymentNotAccepted, code_pb2.FAILED_PRECONDITION, "PAYMENT_NOT_ACCEPTED"),
    (errors.LoanPaidOff, code_pb2.FAILED_PRECONDITION, "LOAN_PAID_OFF"),
    (errors.FailedPrecondition, code_pb2.FAILED_PRECONDITION, "FAILED_PRECONDITION"),
    (errors.Unauthenticated, code_pb2.UNAUTHENTICATED, "UNAUTHENTICATED"),
    (errors.PermissionDenied, code_pb2.PERMISSION_DENIED, "PERMISSION_DENIED"),
    (errors.AccountLocked, code_pb2.RESOURCE_EXHAUSTED, "ACCOUNT_LOCKED"),
    (errors.ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED"),
    (errors.DatabaseUnreachable, code_pb2.UNAVAILABLE, "DATABASE_UNREACHABLE"),
    (errors.Unavailable, code_pb2.UNAVAILABLE, "DATABASE_BUSY"),
    (errors.Aborted, code_pb2.ABORTED, "TRANSACTION_CONFLICT"),
)


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(exc: errors.LendingError) -> status_pb2.Status:
    """The google.rpc.Status for a domain error, with BadRequest / ErrorInfo details."""
    code, reason = next((c, r) for cls, c, r in _CODES if isinstance(exc, cls))
    details = [_packed(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))]
    if isinstance(exc, errors.InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.description)
        details.insert(0, _packed(error_details_pb2.BadRequest(field_violations=[violation])))
    if isinstance(exc, errors.ResourceExhausted):
        # Whole seconds, rounded up: retrying at the advertised moment must not be too early.
        delay = duration_pb2.Duration(seconds=max(1, math.ceil(exc.retry_after_s)))
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=code, message=exc.message, details=details)


class ErrorMappingInterceptor(WrappingInterceptor):
    """Maps domain errors to statuses and hides unexpected ones behind INTERNAL."""

    def wrap_handler(self, handler, method):
        def wrap(behaviour: Behaviour) -> Behaviour:
            def guarded(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return behaviour(request, context)
                except errors.LendingError as exc:
                    context.abort_with_status(rpc_status.to_status(to_status(exc)))
                except Exception:
                    if context.code() is not None:  # already aborted deliberately
                        raise
                    log.exception("unexpected error in %s", method)
                    context.abort(grpc.StatusCode.INTERNAL, "internal error")

            return guarded

        return wrap_unary(handler, wrap)
