"""The SDK's transport against small stand-in servers that can fail on cue: retries, deadlines, TLS.

The real server cannot be made to answer UNAVAILABLE on demand, and its TLS
arrives separately, so these tests serve the real generated service
definitions from tiny servicers that count what they receive.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from lending.v1 import auth_pb2, auth_pb2_grpc, billing_pb2, billing_pb2_grpc

from lending_grpc.client import (
    Aborted,
    DeadlineExceeded,
    InvalidArgument,
    LendingClient,
    TlsConfig,
    Tokens,
    Unavailable,
)

TIMEOUT = 5.0


def fresh_tokens() -> Tokens:
    now = time.time()
    return Tokens("access-1", "refresh-1", now + 900, now + 86400)


class Billing(billing_pb2_grpc.BillingServiceServicer):
    """Fails the first ``failures`` MakePayment calls with ``code``, then pays."""

    def __init__(self, failures: int = 0, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.failures = failures
        self.code = code
        self.calls: list[tuple[str, str, float | None]] = []
        self.release = threading.Event()

    def MakePayment(self, request, context):
        metadata = dict(context.invocation_metadata())
        self.calls.append((request.request_id, metadata.get("authorization", ""), context.time_remaining()))
        if len(self.calls) <= self.failures:
            context.abort(self.code, "database busy")
        return billing_pb2.Payment(
            payment_id="p-1",
            loan_id=request.loan_id,
            amount=request.amount,
            first_week=1,
            last_week=1,
            outstanding_balance="5390000.00",
            request_id=request.request_id,
        )

    def GetLoan(self, request, context):
        self.release.wait(10)  # slower than any deadline the tests set
        context.abort(grpc.StatusCode.INTERNAL, "released")


class Auth(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self) -> None:
        self.registers = 0

    def Register(self, request, context):
        self.registers += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "database busy")

    def Login(self, request, context):
        return auth_pb2.Tokens(
            access_token="access-from-login",
            refresh_token="refresh-from-login",
            token_type="Bearer",
            expires_in=900,
            refresh_expires_in=604800,
        )


class StandIn:
    def __init__(self, billing: Billing, credentials: grpc.ServerCredentials | None = None) -> None:
        self.billing = billing
        self.auth = Auth()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        billing_pb2_grpc.add_BillingServiceServicer_to_server(billing, self.server)
        auth_pb2_grpc.add_AuthServiceServicer_to_server(self.auth, self.server)
        if credentials is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.server.start()

    def stop(self) -> None:
        self.billing.release.set()
        self.server.stop(0).wait()


@pytest.fixture
def stand_in(request):
    servers: list[StandIn] = []

    def start(billing: Billing, credentials=None) -> StandIn:
        servers.append(StandIn(billing, credentials))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.mark.parametrize(
    ("code", "error"), [(grpc.StatusCode.UNAVAILABLE, Unavailable), (grpc.StatusCode.ABORTED, Aborted)]
)
def test_payment_is_retried_with_the_same_request_id(stand_in, code, error) -> None:
    server = stand_in(Billing(failures=2, code=code))
    with LendingClient(f"127.0.0.1:{server.port}", tokens=fresh_tokens(), timeout=TIMEOUT) as client:
        payment = client.make_payment("L-1", "110000.00")
    assert payment.payment_id == "p-1"
    request_ids = [request_id for request_id, _, _ in server.billing.calls]
    assert len(request_ids) == 3 and len(set(request_ids)) == 1 and request_ids[0] == payment.request_id
    assert {auth for _, auth, _ in server.billing.calls} == {"Bearer access-1"}


def test_retries_stop_after_five_attempts(stand_in) -> None:
    server = stand_in(Billing(failures=100))
    with LendingClient(f"127.0.0.1:{server.port}", tokens=fresh_tokens(), timeout=TIMEOUT) as client:
        with pytest.raises(Unavailable) as info:
            client.make_payment("L-1", "110000.00", request_id="fixed-id")
    assert info.value.retryable and info.value.message == "database busy"
    assert [request_id for request_id, _, _ in server.billing.calls] == ["fixed-id"] * 5


def test_other_codes_and_register_are_not_retried(stand_in) -> None:
    server = stand_in(Billing(failures=1, code=grpc.StatusCode.INVALID_ARGUMENT))
    with LendingClient(f"127.0.0.1:{server.port}", tokens=fresh_tokens(), timeout=TIMEOUT) as client:
        with pytest.raises(InvalidArgument):
            client.make_payment("L-1", "110000.00")
        with pytest.raises(Unavailable):
            client.register("ada", "correct horse battery", "ada@example.com")
    assert len(server.billing.calls) == 1
    assert server.auth.registers == 1  # a lost reply after success would make a retry ALREADY_EXISTS


def test_every_call_carries_the_default_deadline(stand_in) -> None:
    server = stand_in(Billing())
    with LendingClient(f"127.0.0.1:{server.port}", tokens=fresh_tokens(), timeout=7.0) as client:
        client.make_payment("L-1", "110000.00")
        client.make_payment("L-1", "110000.00", timeout=2.0)
    remaining = [left for _, _, left in server.billing.calls]
    # The deadline travels rounded in the grpc-timeout header: allow a little slack, not a factor.
    assert remaining[0] is not None and 5.0 < remaining[0] <= 7.5
    assert remaining[1] is not None and 0 < remaining[1] <= 2.5


def test_a_slow_server_gives_deadline_exceeded(stand_in) -> None:
    server = stand_in(Billing())
    with LendingClient(f"127.0.0.1:{server.port}", tokens=fresh_tokens(), timeout=0.3) as client:
        with pytest.raises(DeadlineExceeded):
            client.get_loan("L-1")


# TLS and mTLS are tested against the real server in test_tls.py.


def test_a_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValueError, match="private key"):
        TlsConfig(certificate_chain=b"cert")
