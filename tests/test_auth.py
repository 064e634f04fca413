"""AuthService over real gRPC, and the bearer-token check in front of BillingService."""

from __future__ import annotations

import base64
import json
import time
import uuid

import grpc
import jwt
import pytest
from helpers import (
    PASSWORD,
    TEST_SECRET_KEY,
    assert_invalid,
    bearer,
    call_error,
    jwt_payload,
    list_loans,
    register,
)
from lending.v1 import auth_pb2, billing_pb2

OTHER_KEY = "another-secret-key-of-at-least-32-bytes-111111"
BAD_CREDENTIALS = "invalid username or password"


def claims_for(user_id: str, **overrides) -> dict:
    now = int(time.time())
    claims = {
        "iss": "lending-grpc",
        "aud": "lending-grpc",
        "sub": user_id,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "typ": "access",
        "fam": None,  # a real session's family: forged claims need one to get past the session check
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def family(tokens) -> str:
    """The session (token family) id a token pair belongs to."""
    return jwt_payload(tokens.access_token)["fam"]


def jwt_header(token: str) -> dict:
    part = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


# -- Register ------------------------------------------------------------------


def test_register_returns_user_without_secrets(api):
    before = time.time()
    user = api.auth.Register(
        auth_pb2.RegisterRequest(username="Ada.Lovelace+1", password=PASSWORD, email="ada@example.com")
    )
    after = time.time()
    assert user.username == "Ada.Lovelace+1"
    assert user.email == "ada@example.com"
    assert str(uuid.UUID(user.user_id)) == user.user_id
    assert before - 1 <= user.create_time.seconds <= after + 1
    assert sorted(f.name for f, _ in user.ListFields()) == ["create_time", "email", "user_id", "username"]
    wire = user.SerializeToString()
    assert PASSWORD.encode() not in wire
    assert b"argon2" not in wire
    assert b"$argon2" not in wire


def test_register_gives_distinct_user_ids(api):
    first = register(api, "first_user")
    second = register(api, "second_user")
    assert first.user_id != second.user_id


@pytest.mark.parametrize(
    "username",
    ["abc", "a" * 150, "user@example.com", "a.b+c-d_e", "ABC123"],
)
def test_register_accepts_valid_usernames(api, username):
    assert register(api, username).username == username


@pytest.mark.parametrize(
    "username",
    [
        "",
        "ab",
        "a" * 151,
        "has space",
        "slash/name",
        "ünïcode",
        "semi;colon",
        "tab\tname",
        "quote'name",
        "abc\x00",
    ],
)
def test_register_rejects_bad_username(api, username):
    err = call_error(
        api.auth.Register,
        auth_pb2.RegisterRequest(username=username, password=PASSWORD, email="a@example.com"),
    )
    assert_invalid(err, "username")


@pytest.mark.parametrize("password", ["", "1234567", "short"])
def test_register_rejects_short_password(api, password):
    err = call_error(
        api.auth.Register,
        auth_pb2.RegisterRequest(username="shorty", password=password, email="a@example.com"),
    )
    assert_invalid(err, "password")


def test_register_accepts_eight_character_password(api):
    register(api, "eightchars", password="12345678")
    tokens = api.auth.Login(auth_pb2.LoginRequest(username="eightchars", password="12345678"))
    assert tokens.access_token


def test_register_rejects_overlong_password(api):
    err = call_error(
        api.auth.Register,
        auth_pb2.RegisterRequest(username="longpw", password="x" * 1025, email="a@example.com"),
    )
    assert_invalid(err, "password")


@pytest.mark.parametrize(
    "email",
    [
        "",
        "no-at-sign",
        "a@b",
        "@example.com",
        "ada@",
        "a b@example.com",
        "a@@example.com",
        "ada@exa mple.com",
        "ada@-example.com",
        "ada@example..com",
        "a" * 250 + "@example.com",
    ],
)
def test_register_rejects_malformed_email(api, email):
    err = call_error(
        api.auth.Register, auth_pb2.RegisterRequest(username="mailer", password=PASSWORD, email=email)
    )
    assert_invalid(err, "email")


@pytest.mark.parametrize(
    "email",
    [
        "a..b@example.com",
        ".ada@example.com",
        "ada<x>@example.com",
        "a,b@example.com",
    ],
)
def test_register_rejects_email_with_malformed_local_part(api, email):
    """Unquoted local parts are dot-atoms (RFC 5322 3.2.3): no leading, trailing or double dots,
    none of the specials ()<>[]:;@\\,." """
    err = call_error(
        api.auth.Register, auth_pb2.RegisterRequest(username="mailer", password=PASSWORD, email=email)
    )
    assert_invalid(err, "email")


def test_concurrent_registration_of_one_username(api):
    import threading

    barrier = threading.Barrier(6)
    results: list = [None] * 6

    def worker(index):
        barrier.wait()
        try:
            results[index] = api.auth.Register(
                auth_pb2.RegisterRequest(
                    username="Racer" if index % 2 else "racer", password=PASSWORD, email="r@example.com"
                )
            )
        except grpc.RpcError as err:
            results[index] = err

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    users = [r for r in results if not isinstance(r, grpc.RpcError)]
    errors = [r for r in results if isinstance(r, grpc.RpcError)]
    assert len(users) == 1
    assert [e.code() for e in errors] == [grpc.StatusCode.ALREADY_EXISTS] * 5


def test_register_duplicate_username(api):
    register(api, "alice")
    err = call_error(
        api.auth.Register,
        auth_pb2.RegisterRequest(username="alice", password=PASSWORD, email="x@example.com"),
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("other", ["ALICE", "Alice", "aLiCe"])
def test_register_duplicate_username_differing_in_case(api, other):
    register(api, "alice")
    err = call_error(
        api.auth.Register, auth_pb2.RegisterRequest(username=other, password=PASSWORD, email="x@example.com")
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


def test_register_keeps_username_as_written_and_login_is_case_insensitive(api):
    user = register(api, "MixedCase")
    assert user.username == "MixedCase"
    tokens = api.auth.Login(auth_pb2.LoginRequest(username="mixedcase", password=PASSWORD))
    assert jwt_payload(tokens.access_token)["sub"] == user.user_id


# -- Login ---------------------------------------------------------------------


def test_login_returns_bearer_tokens(api):
    user = register(api, "loginuser")
    before = int(time.time())
    tokens = api.auth.Login(auth_pb2.LoginRequest(username="loginuser", password=PASSWORD))
    assert tokens.token_type == "Bearer"
    assert tokens.expires_in == 900
    assert tokens.refresh_expires_in == 7 * 86400
    assert tokens.access_token != tokens.refresh_token
    access, refresh = jwt_payload(tokens.access_token), jwt_payload(tokens.refresh_token)
    assert jwt_header(tokens.access_token)["alg"] == "HS256"
    assert access["sub"] == refresh["sub"] == user.user_id
    assert access["typ"] == "access" and refresh["typ"] == "refresh"
    assert access["iss"] == access["aud"] == "lending-grpc"
    assert before - 2 <= access["exp"] - 900 <= before + 2
    assert before - 2 <= refresh["exp"] - 7 * 86400 <= before + 2
    for token in (tokens.access_token, tokens.refresh_token):
        text = json.dumps(jwt_payload(token))
        assert PASSWORD not in text and "argon2" not in text
    assert PASSWORD.encode() not in tokens.SerializeToString()
    # The access token works on BillingService.
    assert list(list_loans(api, bearer(tokens.access_token)).loans) == []


def test_login_wrong_password_and_unknown_user_same_message(api):
    register(api, "realuser")
    wrong = call_error(api.auth.Login, auth_pb2.LoginRequest(username="realuser", password="wrong password!"))
    unknown = call_error(api.auth.Login, auth_pb2.LoginRequest(username="ghostuser", password=PASSWORD))
    assert wrong.code() == unknown.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong.details() == unknown.details() == BAD_CREDENTIALS
    assert "realuser" not in wrong.details()


def test_login_password_is_case_sensitive(api):
    register(api, "caseuser")
    err = call_error(api.auth.Login, auth_pb2.LoginRequest(username="caseuser", password=PASSWORD.upper()))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == BAD_CREDENTIALS


@pytest.mark.parametrize("username,password,field", [("", PASSWORD, "username"), ("someone", "", "password")])
def test_login_empty_field(api, username, password, field):
    err = call_error(api.auth.Login, auth_pb2.LoginRequest(username=username, password=password))
    assert_invalid(err, field)


def test_login_overlong_inputs_are_just_bad_credentials(api):
    err = call_error(api.auth.Login, auth_pb2.LoginRequest(username="u" * 500, password="p" * 2000))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == BAD_CREDENTIALS


# -- RefreshToken --------------------------------------------------------------


def test_refresh_token_issues_a_new_working_pair(api):
    _md, tokens, user = api.register_and_login()
    fresh = api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=tokens.refresh_token))
    assert fresh.token_type == "Bearer"
    assert fresh.expires_in == 900
    assert fresh.refresh_expires_in == 7 * 86400
    assert fresh.access_token != tokens.access_token
    assert fresh.refresh_token != tokens.refresh_token
    assert jwt_payload(fresh.access_token)["sub"] == user.user_id
    assert jwt_payload(fresh.access_token)["typ"] == "access"
    assert jwt_payload(fresh.refresh_token)["typ"] == "refresh"
    list_loans(api, bearer(fresh.access_token))
    # The new refresh token refreshes again.
    again = api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=fresh.refresh_token))
    assert jwt_payload(again.access_token)["sub"] == user.user_id


def test_refresh_token_refuses_access_token(api):
    _md, tokens, _user = api.register_and_login()
    err = call_error(api.auth.RefreshToken, auth_pb2.RefreshTokenRequest(refresh_token=tokens.access_token))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "refresh" in err.details()


def test_refresh_token_refuses_garbage_and_foreign_tokens(api):
    _md, _tokens, user = api.register_and_login()
    foreign = jwt.encode(claims_for(user.user_id, typ="refresh"), OTHER_KEY, algorithm="HS256")
    expired = jwt.encode(
        claims_for(
            user.user_id, typ="refresh", iat=int(time.time()) - 7200, nbf=None, exp=int(time.time()) - 3600
        ),
        TEST_SECRET_KEY,
        algorithm="HS256",
    )
    unknown_user = jwt.encode(
        claims_for(str(uuid.uuid4()), typ="refresh"), TEST_SECRET_KEY, algorithm="HS256"
    )
    for token in ("garbage", "a.b.c", foreign, expired, unknown_user):
        err = call_error(api.auth.RefreshToken, auth_pb2.RefreshTokenRequest(refresh_token=token))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, token


def test_refresh_token_empty(api):
    err = call_error(api.auth.RefreshToken, auth_pb2.RefreshTokenRequest(refresh_token=""))
    assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED)


# -- Bearer tokens on BillingService --------------------------------------------


def test_billing_refuses_refresh_token(api):
    _md, tokens, _user = api.register_and_login()
    err = call_error(
        api.billing.ListLoans, billing_pb2.ListLoansRequest(), metadata=bearer(tokens.refresh_token)
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "access" in err.details()


def test_billing_missing_authorization(api):
    err = call_error(api.billing.ListLoans, billing_pb2.ListLoansRequest())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization" in err.details()


@pytest.mark.parametrize(
    "value",
    [
        "Bearer ",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Token abc",
        "garbage",
        "Bearer garbage",
        "Bearer a.b.c",
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.",
    ],
)
def test_billing_malformed_authorization(api, value):
    err = call_error(
        api.billing.ListLoans, billing_pb2.ListLoansRequest(), metadata=(("authorization", value),)
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_billing_two_authorization_headers(api):
    metadata, tokens, _user = api.register_and_login()
    err = call_error(
        api.billing.ListLoans,
        billing_pb2.ListLoansRequest(),
        metadata=(metadata[0], ("authorization", "Bearer garbage")),
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_billing_token_signed_with_another_key(api):
    _md, _tokens, user = api.register_and_login()
    token = jwt.encode(claims_for(user.user_id), OTHER_KEY, algorithm="HS256")
    err = call_error(api.billing.ListLoans, billing_pb2.ListLoansRequest(), metadata=bearer(token))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_billing_token_with_alg_none(api):
    _md, _tokens, user = api.register_and_login()
    token = jwt.encode(claims_for(user.user_id), None, algorithm="none")
    assert jwt_header(token)["alg"] == "none"
    err = call_error(api.billing.ListLoans, billing_pb2.ListLoansRequest(), metadata=bearer(token))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    # Also with a signature segment glued on from a real token.
    _md2, real, _u = api.register_and_login()
    glued = token.rstrip(".") + "." + real.access_token.split(".")[2]
    err = call_error(api.billing.ListLoans, billing_pb2.ListLoansRequest(), metadata=bearer(glued))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_billing_token_with_other_hmac_algorithm(api):
    _md, tokens, user = api.register_and_login()
    token = jwt.encode(claims_for(user.user_id, fam=family(tokens)), TEST_SECRET_KEY, algorithm="HS512")
    err = call_error(api.billing.ListLoans, billing_pb2.ListLoansRequest(), metadata=bearer(token))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_billing_expired_token(api):
    _md, _tokens, user = api.register_and_login()
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": "lending-grpc",
            "aud": "lending-grpc",
            "typ": "access",
            "sub": user.user_id,
            "jti": uuid.uuid4().hex,
            "fam": jwt_payload(_tokens.access_token)["fam"],
            "iat": now - 3600,
            "exp": now - 60,
        },
        TEST_SECRET_KEY,
        algorithm="HS256",
    )
    err = call_error(api.billing.ListLoans, billing_pb2.ListLoansRequest(), metadata=bearer(token))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in err.details()


def test_billing_forged_token_with_right_key_is_accepted_control(api):
    """Control for the negative cases below: hand-made claims signed with the server key work."""
    _md, tokens, user = api.register_and_login()
    token = jwt.encode(claims_for(user.user_id, fam=family(tokens)), TEST_SECRET_KEY, algorithm="HS256")
    assert list(list_loans(api, bearer(token)).loans) == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"iss": "someone-else"},
        {"aud": "someone-else"},
        {"iss": None},
        {"aud": None},
        {"exp": None},
        {"iat": None},
        {"jti": None},
        {"typ": None},
        {"typ": "refresh"},
        {"typ": "admin"},
        {"sub": None},
        {"fam": None},
        {"fam": "0" * 32},  # a session that does not exist
        {"nbf": int(time.time()) + 3600},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_billing_token_with_bad_claims(api, overrides):
    _md, tokens, user = api.register_and_login()
    claims = claims_for(user.user_id, **{"fam": family(tokens), **overrides})
    token = jwt.encode(claims, TEST_SECRET_KEY, algorithm="HS256")
    err = call_error(api.billing.ListLoans, billing_pb2.ListLoansRequest(), metadata=bearer(token))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_billing_token_of_nonexistent_user(api):
    _md, tokens, _user = api.register_and_login()
    # Even with a live session's family, a sub that is not that session's user is refused.
    token = jwt.encode(claims_for(str(uuid.uuid4()), fam=family(tokens)), TEST_SECRET_KEY, algorithm="HS256")
    err = call_error(api.billing.ListLoans, billing_pb2.ListLoansRequest(), metadata=bearer(token))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_billing_tampered_payload(api):
    _md, tokens, _user = api.register_and_login()
    _md2, _tokens2, other = api.register_and_login()
    header, _payload, signature = tokens.access_token.split(".")
    claims = jwt_payload(tokens.access_token)
    claims["sub"] = other.user_id
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    token = f"{header}.{forged_payload}.{signature}"
    err = call_error(api.billing.ListLoans, billing_pb2.ListLoansRequest(), metadata=bearer(token))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "method,request_message",
    [
        ("CreateLoan", billing_pb2.CreateLoanRequest(loan_id="L1", principal_amount="1000")),
        ("GetLoan", billing_pb2.GetLoanRequest(loan_id="L1")),
        ("ListLoans", billing_pb2.ListLoansRequest()),
        ("GetSchedule", billing_pb2.GetScheduleRequest(loan_id="L1")),
        ("GetOutstanding", billing_pb2.GetOutstandingRequest(loan_id="L1")),
        ("MakePayment", billing_pb2.MakePaymentRequest(loan_id="L1", amount="1.00")),
        ("ListPayments", billing_pb2.ListPaymentsRequest(loan_id="L1")),
        ("GetDelinquencyStatus", billing_pb2.GetDelinquencyStatusRequest(loan_id="L1")),
        ("ListDelinquentLoans", billing_pb2.ListDelinquentLoansRequest()),
    ],
)
def test_every_billing_rpc_requires_an_access_token(api, method, request_message):
    _md, tokens, _user = api.register_and_login()
    stub_method = getattr(api.billing, method)
    for metadata in (None, bearer(tokens.refresh_token), (("authorization", "Bearer "),)):
        kwargs = {"metadata": metadata} if metadata else {}
        err = call_error(stub_method, request_message, **kwargs)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (method, metadata)


def test_unauthenticated_create_loan_records_nothing(api):
    metadata, tokens, _user = api.register_and_login()
    call_error(
        api.billing.CreateLoan,
        billing_pb2.CreateLoanRequest(loan_id="L1", principal_amount="1000"),
        metadata=bearer(tokens.refresh_token),
    )
    assert list(list_loans(api, metadata).loans) == []


def test_bearer_scheme_is_case_insensitive(api):
    _md, tokens, _user = api.register_and_login()
    assert list(list_loans(api, (("authorization", f"bearer {tokens.access_token}"),)).loans) == []
