"""Assertions and small helpers shared by the service tests."""

from __future__ import annotations

import datetime as dt
import threading
import zoneinfo

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from lending.v1 import billing_pb2, billing_pb2_grpc

JAKARTA = zoneinfo.ZoneInfo("Asia/Jakarta")


def today() -> dt.date:
    """Today in the service's default time zone."""
    return dt.datetime.now(JAKARTA).date()


def tamper(token: str) -> str:
    """Change the first character of a page token's signature part (it carries six significant bits)."""
    index = token.index(".") + 1
    return token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]


def call_error(method, request, **kwargs) -> grpc.RpcError:
    """Call a stub method that must fail and return its error."""
    with pytest.raises(grpc.RpcError) as info:
        method(request, **kwargs)
    return info.value


def violated_fields(err: grpc.RpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest details of an error (status must be consistent)."""
    status = rpc_status.from_call(err)
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc.Status details"
    assert status.code == err.code().value[0]
    assert status.message == err.details()
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return fields


def assert_invalid(err: grpc.RpcError, field: str) -> None:
    """INVALID_ARGUMENT naming exactly ``field``, in the details and in the message."""
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert violated_fields(err) == [field], err.details()
    assert field in err.details()


def pay_on_own_channel(
    target: str, metadata, loan_id: str, amount: str, request_id: str, start: threading.Barrier | None = None
):
    """MakePayment on a channel of its own (so calls really race at the server); the Payment or the code.

    With ``start``, the call waits at the barrier once its channel is open, so racers leave together.
    """
    with grpc.insecure_channel(target) as channel:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        if start is not None:
            start.wait()
        try:
            return stub.MakePayment(
                billing_pb2.MakePaymentRequest(loan_id=loan_id, amount=amount, request_id=request_id),
                metadata=metadata,
                timeout=60,
            )
        except grpc.RpcError as err:
            return err.code()
