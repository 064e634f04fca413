"""Error mapping at the edge: unexpected errors, undecodable requests, random bytes to every method."""

from __future__ import annotations

import random

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from lending.v1 import audit_pb2, auth_pb2, billing_pb2

from lending_grpc.core.billing import BillingCore

METHODS = sorted(
    (
        f"/{service.full_name}/{method.name}"
        for descriptor in (auth_pb2.DESCRIPTOR, billing_pb2.DESCRIPTOR, audit_pb2.DESCRIPTOR)
        for service in descriptor.services_by_name.values()
        for method in service.methods
    ),
    key=lambda name: name.endswith("/Logout"),  # last: it ends the caller's session
)


def _raw_call(channel, method: str, payload: bytes, metadata=()):
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        call(payload, metadata=metadata, timeout=10)
    except grpc.RpcError as err:
        return err.code(), err.details()
    return grpc.StatusCode.OK, ""


def test_unexpected_exception_is_internal_without_internals(api, alice, monkeypatch, caplog):
    def explode(*_args, **_kwargs):
        raise RuntimeError("SELECT secret FROM internals")

    monkeypatch.setattr(BillingCore, "get_loan", explode)
    with pytest.raises(grpc.RpcError) as raised:
        api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id="L1"), metadata=alice)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details() == "internal error"
    logged = [r for r in caplog.records if r.exc_info and "unexpected error" in r.getMessage()]
    assert logged and "SELECT secret FROM internals" in str(logged[0].exc_info[1])


def test_undecodable_request_is_invalid_argument(api, alice):
    # Field 1 (loan_id) as a length-delimited string holding invalid UTF-8.
    payload = b"\x0a\x02\xff\xfe"
    code, details = _raw_call(api.channel, "/lending.v1.BillingService/GetLoan", payload, alice)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "request: is not a valid protobuf message"


# 720 calls back to back are a flood by design; the rate limits have their own tests.
@pytest.mark.settings(rate_limit_user_per_second=0, rate_limit_peer_per_second=0)
def test_random_bytes_to_every_method_never_unknown_or_internal(api, alice):
    rng = random.Random(20261126)
    seen = set()
    for method in METHODS:
        for n in range(60):
            payload = rng.randbytes(rng.randint(0, 64))
            metadata = alice if n % 2 else ()
            code, details = _raw_call(api.channel, method, payload, metadata)
            seen.add(code)
            assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (method, payload, details)
            assert "Traceback" not in details and "SELECT" not in details
    assert grpc.StatusCode.INVALID_ARGUMENT in seen and grpc.StatusCode.UNAUTHENTICATED in seen
    # The server still serves normally afterwards.
    loan = api.billing.CreateLoan(
        billing_pb2.CreateLoanRequest(loan_id="after-fuzz", principal_amount="2000000"), metadata=alice
    )
    assert loan.weekly_payment == "44000.00"


def test_oversized_message_is_resource_exhausted(api):
    code, _ = _raw_call(
        api.channel, "/lending.v1.AuthService/Login", b"\x0a" + b"\xff\xff\x3f" + b"a" * 1_100_000
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_undecodable_request_without_a_token_is_unauthenticated_first(api):
    code, _ = _raw_call(api.channel, "/lending.v1.BillingService/GetLoan", b"\x0a\x02\xff\xfe")
    assert code == grpc.StatusCode.UNAUTHENTICATED


def _reason(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "lending.v1"
            return info.reason
    raise AssertionError("no google.rpc.ErrorInfo detail")


def test_error_info_reasons_tell_refusals_apart(api, alice):
    create = billing_pb2.CreateLoanRequest(loan_id="R", principal_amount="100", term_weeks=2)
    api.billing.CreateLoan(create, metadata=alice)
    with pytest.raises(grpc.RpcError) as partial:
        api.billing.MakePayment(billing_pb2.MakePaymentRequest(loan_id="R", amount="1.00"), metadata=alice)
    assert partial.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(partial.value) == "PAYMENT_NOT_ACCEPTED"
    api.billing.MakePayment(billing_pb2.MakePaymentRequest(loan_id="R", amount="110.00"), metadata=alice)
    with pytest.raises(grpc.RpcError) as paid_off:
        api.billing.MakePayment(billing_pb2.MakePaymentRequest(loan_id="R", amount="55.00"), metadata=alice)
    assert paid_off.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(paid_off.value) == "LOAN_PAID_OFF"
    with pytest.raises(grpc.RpcError) as duplicate:
        api.billing.CreateLoan(
            billing_pb2.CreateLoanRequest(
                loan_id="R", principal_amount="100", term_weeks=3, interest_rate="0.2"
            ),
            metadata=alice,
        )
    assert _reason(duplicate.value) == "ALREADY_EXISTS"
    assert duplicate.value.details() == "loan 'R' already exists with a different term_weeks, interest_rate"


def test_one_process_serves_one_database(server, tmp_path):
    from lending_grpc.core.storage.database import DatabaseError, open_database

    with pytest.raises(DatabaseError, match="already serves a database"):
        open_database(f"sqlite:///{tmp_path / 'second.db'}")
