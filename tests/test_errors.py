"""The error model across every RPC: INVALID_ARGUMENT names the field, NOT_FOUND hides other users' loans,
undecodable or odd requests never get UNKNOWN (or INTERNAL), and ErrorInfo reasons tell refusals apart.

Hostile input against one long-lived server is in test_fuzz.py (a module of its own: one process serves
one database, so its server cannot share a module with the per-test servers here)."""

from __future__ import annotations

import random
import re
import uuid
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from helpers import START, actor_of, call_error, grant_operator, snapshot, violated_fields
from lending.v1 import audit_pb2, auth_pb2, billing_pb2, events_pb2

from lending_grpc.api.status import _CODES
from lending_grpc.core import errors
from lending_grpc.core.billing import BillingCore
from lending_grpc.core.errors import NotFound

B = billing_pb2
A = auth_pb2

NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


def test_the_errors_page_names_every_reason_with_its_code():
    """docs/reference/errors.md has a row for every ErrorInfo reason, under the code status.py gives it."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "reference" / "errors.md").read_text()
    rows = set(re.findall(r"^\| `([A-Z_]+)` \| `([A-Z_]+)` \|", page, re.MULTILINE))
    by_number = {code.value[0]: code.name for code in grpc.StatusCode}
    # Bases the API never answers with: only their subclasses are raised (FailedPrecondition itself
    # comes from the server-host commands alone).
    never_over_the_api = {errors.FailedPrecondition, errors.ResourceExhausted}
    classes = [errors.LendingError]
    for cls in classes:
        classes.extend(cls.__subclasses__())
    for cls in set(classes[1:]) - never_over_the_api:
        number = next(number for base, number in _CODES if issubclass(cls, base))
        assert (by_number[number], cls.reason) in rows, cls.__name__


def seed(api, metadata):
    """L1 (5,000,000 from 2026-01-05, one installment paid) for the caller."""
    api.billing.CreateLoan(
        B.CreateLoanRequest(loan_id="L1", principal_amount="5000000", start_date="2026-01-05"),
        metadata=metadata,
    )
    api.billing.MakePayment(B.MakePaymentRequest(loan_id="L1", amount="110000.00"), metadata=metadata)


# -- INVALID_ARGUMENT names the field, on every RPC -------------------------------

INVALID = [
    (
        "auth",
        "Register",
        A.RegisterRequest(username="ab", password="12345678", email="a@example.com"),
        "username",
    ),
    (
        "auth",
        "Register",
        A.RegisterRequest(username="abc", password="1234567", email="a@example.com"),
        "password",
    ),
    ("auth", "Register", A.RegisterRequest(username="abc", password="12345678", email="nope"), "email"),
    ("auth", "Login", A.LoginRequest(username="", password="12345678"), "username"),
    ("auth", "Login", A.LoginRequest(username="abc", password=""), "password"),
    ("billing", "CreateLoan", B.CreateLoanRequest(loan_id="", principal_amount="1"), "loan_id"),
    ("billing", "CreateLoan", B.CreateLoanRequest(loan_id="X", principal_amount="1.234"), "principal_amount"),
    ("billing", "CreateLoan", B.CreateLoanRequest(loan_id="X", principal_amount=""), "principal_amount"),
    (
        "billing",
        "CreateLoan",
        B.CreateLoanRequest(loan_id="X", principal_amount="1", start_date="2026-02-30"),
        "start_date",
    ),
    (
        "billing",
        "CreateLoan",
        B.CreateLoanRequest(loan_id="X", principal_amount="1", term_weeks=521),
        "term_weeks",
    ),
    (
        "billing",
        "CreateLoan",
        B.CreateLoanRequest(loan_id="X", principal_amount="1", term_weeks=-1),
        "term_weeks",
    ),
    (
        "billing",
        "CreateLoan",
        B.CreateLoanRequest(loan_id="X", principal_amount="1", interest_rate="1.5"),
        "interest_rate",
    ),
    ("billing", "GetLoan", B.GetLoanRequest(loan_id=""), "loan_id"),
    ("billing", "GetLoan", B.GetLoanRequest(loan_id="no spaces"), "loan_id"),
    ("billing", "ListLoans", B.ListLoansRequest(page_size=-1), "page_size"),
    ("billing", "ListLoans", B.ListLoansRequest(page_token="forged"), "page_token"),
    ("billing", "GetSchedule", B.GetScheduleRequest(loan_id="x" * 65), "loan_id"),
    ("billing", "GetOutstanding", B.GetOutstandingRequest(loan_id="é"), "loan_id"),
    ("billing", "MakePayment", B.MakePaymentRequest(loan_id="L1", amount="1e5"), "amount"),
    ("billing", "MakePayment", B.MakePaymentRequest(loan_id="L1", amount=""), "amount"),
    ("billing", "MakePayment", B.MakePaymentRequest(loan_id="L1", amount="-1"), "amount"),
    (
        "billing",
        "MakePayment",
        B.MakePaymentRequest(loan_id="L1", amount="110000.00", request_id="a b"),
        "request_id",
    ),
    ("billing", "MakePayment", B.MakePaymentRequest(loan_id="", amount="110000.00"), "loan_id"),
    ("billing", "ListPayments", B.ListPaymentsRequest(loan_id="L1", page_size=-5), "page_size"),
    ("billing", "ListPayments", B.ListPaymentsRequest(loan_id="L1", page_token="forged"), "page_token"),
    ("billing", "ListPayments", B.ListPaymentsRequest(loan_id="?"), "loan_id"),
    (
        "billing",
        "GetDelinquencyStatus",
        B.GetDelinquencyStatusRequest(loan_id="L1", as_of="2026-13-01"),
        "as_of",
    ),
    (
        "billing",
        "GetDelinquencyStatus",
        B.GetDelinquencyStatusRequest(loan_id="", as_of="2026-01-01"),
        "loan_id",
    ),
    ("billing", "ListDelinquentLoans", B.ListDelinquentLoansRequest(as_of="01/02/2026"), "as_of"),
    ("billing", "ListDelinquentLoans", B.ListDelinquentLoansRequest(page_size=-1), "page_size"),
    ("billing", "ListDelinquentLoans", B.ListDelinquentLoansRequest(page_token="forged"), "page_token"),
]


@pytest.mark.parametrize(
    "service,method,request_message,field",
    INVALID,
    ids=[f"{m}-{f}-{i}" for i, (_s, m, _r, f) in enumerate(INVALID)],
)
def test_invalid_argument_names_the_field(api, alice, service, method, request_message, field):
    seed(api, alice)
    stub = getattr(api, service)
    kwargs = {"metadata": alice} if service == "billing" else {}
    err = call_error(getattr(stub, method), request_message, **kwargs)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert violated_fields(err) == [field]
    assert field in err.details()


# -- NOT_FOUND: another user's loan looks exactly like a missing one -------------

LOAN_CALLS = [
    ("GetLoan", lambda loan_id: B.GetLoanRequest(loan_id=loan_id)),
    ("GetSchedule", lambda loan_id: B.GetScheduleRequest(loan_id=loan_id)),
    ("GetOutstanding", lambda loan_id: B.GetOutstandingRequest(loan_id=loan_id)),
    ("MakePayment", lambda loan_id: B.MakePaymentRequest(loan_id=loan_id, amount="110000.00")),
    ("ListPayments", lambda loan_id: B.ListPaymentsRequest(loan_id=loan_id)),
    (
        "GetDelinquencyStatus",
        lambda loan_id: B.GetDelinquencyStatusRequest(loan_id=loan_id, as_of="2026-03-01"),
    ),
]


@pytest.mark.parametrize("method,build", LOAN_CALLS, ids=[m for m, _ in LOAN_CALLS])
def test_other_users_loan_is_not_found(api, alice, method, build):
    bob, _tokens, _user = api.register_and_login()
    stub_method = getattr(api.billing, method)
    missing = call_error(stub_method, build("L1"), metadata=bob)
    seed(api, alice)
    foreign = call_error(stub_method, build("L1"), metadata=bob)
    assert missing.code() == foreign.code() == grpc.StatusCode.NOT_FOUND
    assert missing.details() == foreign.details()
    assert "5000000" not in foreign.details() and "5500000" not in foreign.details()
    # Alice's loan is untouched by bob's attempts.
    loan = api.billing.GetLoan(B.GetLoanRequest(loan_id="L1"), metadata=alice)
    assert (loan.installments_paid, loan.outstanding_balance) == (1, "5390000.00")


def test_create_loan_with_other_users_loan_id_is_independent(api, alice):
    bob, _tokens, _user = api.register_and_login()
    seed(api, alice)
    # Different terms under the same id: for bob this is simply a new loan, not ALREADY_EXISTS.
    loan = api.billing.CreateLoan(B.CreateLoanRequest(loan_id="L1", principal_amount="1000"), metadata=bob)
    assert loan.principal_amount == "1000.00"


# -- operators naming an `owner`: the same refusals, never an echo or an INTERNAL -----

OWNER_CALLS = [
    ("GetLoan", lambda loan_id, owner: B.GetLoanRequest(loan_id=loan_id, owner=owner)),
    ("GetSchedule", lambda loan_id, owner: B.GetScheduleRequest(loan_id=loan_id, owner=owner)),
    ("GetOutstanding", lambda loan_id, owner: B.GetOutstandingRequest(loan_id=loan_id, owner=owner)),
    (
        "MakePayment",
        lambda loan_id, owner: B.MakePaymentRequest(loan_id=loan_id, owner=owner, amount="110000.00"),
    ),
    ("ListPayments", lambda loan_id, owner: B.ListPaymentsRequest(loan_id=loan_id, owner=owner)),
    (
        "GetDelinquencyStatus",
        lambda loan_id, owner: B.GetDelinquencyStatusRequest(loan_id=loan_id, owner=owner),
    ),
    (
        "GetDelinquencyHistory",
        lambda loan_id, owner: B.GetDelinquencyHistoryRequest(loan_id=loan_id, owner=owner),
    ),
]


def _operator(api):
    metadata, _tokens, user = api.register_and_login()
    grant_operator(api, user.username)
    return metadata


@pytest.mark.parametrize("method,build", OWNER_CALLS, ids=[m for m, _ in OWNER_CALLS])
def test_a_malformed_loan_id_is_refused_whoever_the_owner(api, method, build):
    """Found by test_fuzz.py: with an owner that does not resolve, the loan_id went unchecked.

    The same request is INVALID_ARGUMENT naming loan_id (its text cut short) when the owner
    exists, and for a borrower; with an unknown owner the service answered NOT_FOUND with the
    whole loan_id in the message, as long as the client cared to make it (at 5,000 characters the
    trailers outgrow a default client's 8 KiB metadata limit and the caller sees only
    RESOURCE_EXHAUSTED "Stream removed"; 2,000 keeps this test deterministic).
    """
    operator = _operator(api)
    _metadata, _tokens, borrower = api.register_and_login()
    for owner in (borrower.user_id, "0", str(uuid.uuid4())):  # known (answered right), then unknown
        err = call_error(getattr(api.billing, method), build("9" * 2000, owner), metadata=operator)
        assert len(err.details()) <= 1024, (owner, err.code(), len(err.details()))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (owner, err.code(), err.details()[:80])
        assert violated_fields(err) == ["loan_id"]


@pytest.mark.parametrize("method,build", OWNER_CALLS, ids=[m for m, _ in OWNER_CALLS])
def test_an_owner_holding_a_nul_character_is_refused_not_internal(api, method, build):
    """Found by test_fuzz.py on PostgreSQL (text there cannot hold NUL): INTERNAL instead of a refusal."""
    operator = _operator(api)
    for owner in ("\x00", "a\x00b"):
        err = call_error(getattr(api.billing, method), build("L1", owner), metadata=operator)
        assert err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), (
            repr(owner),
            err.code(),
            err.details(),
        )


# -- authentication comes before validation ------------------------------------


@pytest.mark.parametrize(
    "method,request_message",
    [
        ("CreateLoan", B.CreateLoanRequest(loan_id="bad id", principal_amount="abc")),
        ("MakePayment", B.MakePaymentRequest(loan_id="", amount="-1")),
        ("ListLoans", B.ListLoansRequest(page_size=-1, page_token="forged")),
        ("GetDelinquencyStatus", B.GetDelinquencyStatusRequest(loan_id="", as_of="bad")),
    ],
)
def test_unauthenticated_before_invalid_argument(api, method, request_message):
    err = call_error(getattr(api.billing, method), request_message)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


# -- nothing yields UNKNOWN or INTERNAL ------------------------------------------

ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "\t\n",
    "é",
    "日本語",
    "🙂",
    "\u202e",
    "0",
    "-0",
    "00",
    "0.0",
    "1" * 33,
    "9" * 400,
    "x" * 10_000,
    "'; DROP TABLE loan; --",
    "%s%s%n",
    "../../etc/passwd",
    "9999-12-31",
    "0001-01-01",
    "0000-00-00",
    "2026-01-01\x00",
    "1.7976931348623157e308",
    "NaN",
    "-Infinity",
    "١٢٣",
    "１２３",
]

ODD_INTS = [0, 1, -1, 2**31 - 1, -(2**31)]


def _all_odd_requests():
    for text in ODD_STRINGS:
        yield "auth", "Register", A.RegisterRequest(username=text, password=text, email=text)
        yield "auth", "Register", A.RegisterRequest(username="odd_user", password="12345678", email=text)
        yield "auth", "Login", A.LoginRequest(username=text, password=text)
        yield "auth", "RefreshToken", A.RefreshTokenRequest(refresh_token=text)
        yield "billing", "CreateLoan", B.CreateLoanRequest(loan_id=text, principal_amount="1000")
        yield "billing", "CreateLoan", B.CreateLoanRequest(loan_id="odd", principal_amount=text)
        yield (
            "billing",
            "CreateLoan",
            B.CreateLoanRequest(loan_id="odd", principal_amount="1000", start_date=text),
        )
        yield (
            "billing",
            "CreateLoan",
            B.CreateLoanRequest(loan_id="odd", principal_amount="1000", interest_rate=text),
        )
        yield "billing", "GetLoan", B.GetLoanRequest(loan_id=text)
        yield "billing", "ListLoans", B.ListLoansRequest(page_token=text)
        yield "billing", "GetSchedule", B.GetScheduleRequest(loan_id=text)
        yield "billing", "GetOutstanding", B.GetOutstandingRequest(loan_id=text)
        yield "billing", "MakePayment", B.MakePaymentRequest(loan_id=text, amount="110000.00")
        yield "billing", "MakePayment", B.MakePaymentRequest(loan_id="L1", amount=text)
        yield (
            "billing",
            "MakePayment",
            B.MakePaymentRequest(loan_id="L1", amount="5500000.00", request_id=text),
        )
        yield "billing", "ListPayments", B.ListPaymentsRequest(loan_id="L1", page_token=text)
        yield "billing", "GetDelinquencyStatus", B.GetDelinquencyStatusRequest(loan_id="L1", as_of=text)
        yield "billing", "ListDelinquentLoans", B.ListDelinquentLoansRequest(as_of=text)
        yield "billing", "ListDelinquentLoans", B.ListDelinquentLoansRequest(page_token=text)
    for number in ODD_INTS:
        yield (
            "billing",
            "CreateLoan",
            B.CreateLoanRequest(loan_id="odd-int", principal_amount="1000", term_weeks=number),
        )
        yield "billing", "ListLoans", B.ListLoansRequest(page_size=number)
        yield "billing", "ListPayments", B.ListPaymentsRequest(loan_id="L1", page_size=number)
        yield "billing", "ListDelinquentLoans", B.ListDelinquentLoansRequest(page_size=number)


def test_no_request_yields_unknown_or_internal(api, alice):
    seed(api, alice)
    seen = set()
    for service, method, request_message in _all_odd_requests():
        kwargs = {"metadata": alice} if service == "billing" else {}
        try:
            getattr(getattr(api, service), method)(request_message, **kwargs)
            seen.add("OK")
        except grpc.RpcError as err:
            assert err.code() not in NEVER, (method, request_message, err.code(), err.details())
            seen.add(err.code().name)
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                fields = violated_fields(err)
                assert len(fields) == 1 and fields[0] in err.details(), (method, request_message, fields)
    assert {"OK", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "ALREADY_EXISTS", "UNAUTHENTICATED"} <= seen


@pytest.mark.parametrize(
    "as_of",
    ["0001-01-01", "1900-01-01", "2999-12-31", "9999-12-31"],
)
def test_extreme_as_of_dates_are_answered(api, alice, as_of):
    seed(api, alice)
    result = api.billing.GetDelinquencyStatus(
        B.GetDelinquencyStatusRequest(loan_id="L1", as_of=as_of), metadata=alice
    )
    assert result.as_of == as_of
    page = api.billing.ListDelinquentLoans(B.ListDelinquentLoansRequest(as_of=as_of), metadata=alice)
    assert [item.loan_id for item in page.loans] == (["L1"] if as_of > "2026" else [])


def test_extreme_start_dates_and_terms(api, alice):
    late = api.billing.CreateLoan(
        B.CreateLoanRequest(
            loan_id="late", principal_amount="10000", start_date="2999-12-31", term_weeks=520
        ),
        metadata=alice,
    )
    assert late.maturity_date == "3009-12-19"
    schedule = api.billing.GetSchedule(B.GetScheduleRequest(loan_id="late"), metadata=alice)
    assert schedule.installments[-1].due_date == "3009-12-19"
    early = api.billing.CreateLoan(
        B.CreateLoanRequest(
            loan_id="early", principal_amount="10000", start_date="1900-01-01", term_weeks=520
        ),
        metadata=alice,
    )
    status = api.billing.GetDelinquencyStatus(B.GetDelinquencyStatusRequest(loan_id="early"), metadata=alice)
    assert status.missed_payments == 520 and status.overdue_amount == early.total_amount


def test_undecodable_request_is_invalid_argument(api, alice):
    # Field 1 (loan_id) as a length-delimited string holding invalid UTF-8.
    raw = b"\x0a\x02\xff\xfe"
    for method in ("/lending.v1.BillingService/GetLoan", "/lending.v1.AuthService/Login"):
        call = api.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            call(raw, metadata=alice)
        err = info.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err.code(), err.details())
        assert err.details() == "request: is not a valid protobuf message", method


def test_truncated_request_is_invalid_argument(api, alice):
    raw = b"\x0a\x10abc"  # claims 16 bytes, carries 3
    call = api.channel.unary_unary(
        "/lending.v1.BillingService/GetLoan", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as info:
        call(raw, metadata=alice)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_request_is_refused_cleanly(api, alice):
    err = call_error(api.billing.GetLoan, B.GetLoanRequest(loan_id="x" * (2 * 1024 * 1024)), metadata=alice)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unknown_method_is_unimplemented(api, alice):
    call = api.channel.unary_unary(
        "/lending.v1.BillingService/DeleteEverything", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as info:
        call(b"", metadata=alice)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_state_conflicts_are_failed_precondition_not_other_codes(api, alice):
    seed(api, alice)
    for amount in ("50000", "5390000.01", "110000.01"):
        err = call_error(
            api.billing.MakePayment, B.MakePaymentRequest(loan_id="L1", amount=amount), metadata=alice
        )
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, amount
        assert err.details()


def test_duplicates_are_already_exists(api, alice):
    seed(api, alice)
    api.auth.Register(A.RegisterRequest(username="dupe", password="12345678", email="d@example.com"))
    err = call_error(
        api.auth.Register, A.RegisterRequest(username="DUPE", password="12345678", email="d@example.com")
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    err = call_error(
        api.billing.CreateLoan, B.CreateLoanRequest(loan_id="L1", principal_amount="1"), metadata=alice
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    api.billing.MakePayment(
        B.MakePaymentRequest(loan_id="L1", amount="110000.00", request_id="k"), metadata=alice
    )
    err = call_error(
        api.billing.MakePayment,
        B.MakePaymentRequest(loan_id="L1", amount="220000.00", request_id="k"),
        metadata=alice,
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


# == the edge of the pipeline: unexpected errors, raw bytes, ErrorInfo reasons ===========


METHODS = sorted(
    (
        f"/{service.full_name}/{method.name}"
        for descriptor in (
            auth_pb2.DESCRIPTOR,
            billing_pb2.DESCRIPTOR,
            audit_pb2.DESCRIPTOR,
            events_pb2.DESCRIPTOR,
        )
        for service in descriptor.services_by_name.values()
        for method in service.methods
        if not method.server_streaming  # called as unary here; WatchEvents has tests of its own
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
    # The server still serves normally afterwards (a fresh session: random bytes may decode as Logout).
    fresh, _tokens, _user = api.register_and_login()
    loan = api.billing.CreateLoan(
        billing_pb2.CreateLoanRequest(loan_id="after-fuzz", principal_amount="2000000"), metadata=fresh
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


# == owner isolation on BillingCore, without gRPC ========================================


def test_other_owner_gets_not_found(env, owner):
    bob = env.new_owner()
    env.billing.create_loan(actor_of(owner), "L1", "5000000", start_date=START)
    env.billing.make_payment(actor_of(owner), "L1", "110000.00", request_id="r-1")
    before = snapshot(env, owner, "L1")
    with pytest.raises(NotFound):
        env.billing.get_loan(bob, "L1")
    with pytest.raises(NotFound):
        env.billing.get_schedule(bob, "L1")
    with pytest.raises(NotFound):
        env.billing.list_payments(bob, "L1")
    with pytest.raises(NotFound):
        env.delinquency.get_delinquency(bob, "L1", as_of="2026-06-01")
    with pytest.raises(NotFound):
        env.billing.make_payment(actor_of(bob), "L1", "110000.00")
    with pytest.raises(NotFound):
        env.billing.make_payment(actor_of(bob), "L1", "110000.00", request_id="r-1")
    assert env.billing.list_loans(bob).items == []
    assert env.delinquency.list_delinquent(bob, as_of="2027-01-01").items == []
    assert snapshot(env, owner, "L1") == before

    # bob's own loan with the same loan_id and request_id is independent
    bobs = env.billing.create_loan(actor_of(bob), "L1", "2000000", start_date=START)
    assert bobs.terms.total_cents == 220_000_000
    p = env.billing.make_payment(actor_of(bob), "L1", "44000.00", request_id="r-1")
    assert (p.amount_cents, p.first_week) == (4_400_000, 1)
    assert snapshot(env, owner, "L1") == before
    assert env.billing.get_loan(owner, "L1").terms.total_cents == 550_000_000
