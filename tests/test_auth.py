"""Accounts and sessions: Register, Login, RefreshToken and Logout over real gRPC, the bearer-token check in
front of BillingService, and TokenSigner's rules. Lockouts are in test_lockout.py, roles in test_roles.py."""

from __future__ import annotations

import base64
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import jwt
import pytest
from helpers import (
    PASSWORD,
    TEST_SECRET_KEY,
    assert_invalid,
    audit_rows,
    bearer,
    call_error,
    jwt_payload,
    list_loans,
    login,
    register,
    running_api,
)
from lending.v1 import auth_pb2, billing_pb2

from lending_grpc.core.errors import Unauthenticated
from lending_grpc.core.storage.models import TokenFamily
from lending_grpc.core.tokens import ACCESS, AUDIENCE, ISSUER, REFRESH, Claims, TokenSigner, WeakSecretKey

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


# == sessions: rotating refresh tokens, reuse detection, logout, persisted revocation ====


def _refresh(api, token: str):
    return api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=token))


def _refresh_error(api, token: str) -> grpc.RpcError:
    return call_error(api.auth.RefreshToken, auth_pb2.RefreshTokenRequest(refresh_token=token))


def _works(api, access_token: str) -> bool:
    try:
        api.billing.ListLoans(billing_pb2.ListLoansRequest(), metadata=bearer(access_token))
        return True
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
        return False


def test_tokens_carry_issuer_audience_and_one_family(api):
    register(api, "ann")
    tokens = login(api, "ann")
    access, refresh = jwt_payload(tokens.access_token), jwt_payload(tokens.refresh_token)
    assert (access["iss"], access["aud"], refresh["iss"], refresh["aud"]) == ("lending-grpc",) * 4
    assert access["fam"] == refresh["fam"] and len(access["fam"]) == 32
    assert TokenFamily.get(TokenFamily.family_id == access["fam"]).current_jti == refresh["jti"]


def test_refresh_rotates_and_reuse_revokes_the_whole_family(api):
    register(api, "ben")
    first = login(api, "ben")
    other_session = login(api, "ben")
    second = _refresh(api, first.refresh_token)
    third = _refresh(api, second.refresh_token)
    assert jwt_payload(third.refresh_token)["fam"] == jwt_payload(first.refresh_token)["fam"]
    assert len({jwt_payload(t.refresh_token)["jti"] for t in (first, second, third)}) == 3
    assert _works(api, third.access_token)
    # Replaying an already rotated token: refused, and the family dies.
    err = _refresh_error(api, first.refresh_token)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == "this refresh token was already used: its session is now revoked; sign in again"
    newest = _refresh_error(api, third.refresh_token)  # the newest token of the family too
    assert newest.details() == "the refresh token's session was revoked (logout, reuse or erasure)"
    assert not _works(api, third.access_token) and not _works(api, first.access_token)
    # The user's other session is untouched.
    assert _works(api, other_session.access_token)
    assert _refresh(api, other_session.refresh_token).access_token
    family = TokenFamily.get(TokenFamily.family_id == jwt_payload(first.refresh_token)["fam"])
    assert family.revoked_reason == "reuse" and family.revoked_time_us is not None
    events = [(r["event"], r["outcome"]) for r in audit_rows() if r["event"].startswith("token.")]
    assert events == [
        ("token.refresh", "ok"),
        ("token.refresh", "ok"),
        ("token.reuse_detected", "refused"),
        ("token.refresh", "refused"),
        ("token.refresh", "ok"),
    ]


def test_a_concurrent_double_refresh_is_reuse(api):
    """Eight refreshes with one token at once: exactly one wins, and its new token dies with the family."""
    register(api, "cora")
    tokens = login(api, "cora")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: _try_refresh(api, tokens.refresh_token), range(8)))
    winners = [r for r in results if not isinstance(r, grpc.StatusCode)]
    assert len(winners) == 1 and results.count(grpc.StatusCode.UNAUTHENTICATED) == 7
    assert _refresh_error(api, winners[0].refresh_token).code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(audit_rows(event="token.reuse_detected")) == 1


def _try_refresh(api, token: str):
    try:
        return _refresh(api, token)
    except grpc.RpcError as err:
        return err.code()


def test_logout_revokes_the_callers_session_only(api):
    register(api, "dan")
    phone, laptop = login(api, "dan"), login(api, "dan")
    assert (
        api.auth.Logout(auth_pb2.LogoutRequest(), metadata=bearer(phone.access_token))
        == auth_pb2.LogoutResponse()
    )
    assert not _works(api, phone.access_token)
    assert _refresh_error(api, phone.refresh_token).code() == grpc.StatusCode.UNAUTHENTICATED
    assert _works(api, laptop.access_token)
    assert _refresh(api, laptop.refresh_token).access_token
    # Persisted: the family row says so.
    family = TokenFamily.get(TokenFamily.family_id == jwt_payload(phone.access_token)["fam"])
    assert family.revoked_reason == "logout"
    again = call_error(api.auth.Logout, auth_pb2.LogoutRequest(), metadata=bearer(phone.access_token))
    assert again.code() == grpc.StatusCode.UNAUTHENTICATED
    assert [r["event"] for r in audit_rows(event="token.logout")] == ["token.logout"]


def test_logout_needs_an_access_token(api):
    register(api, "eve")
    tokens = login(api, "eve")
    assert call_error(api.auth.Logout, auth_pb2.LogoutRequest()).code() == grpc.StatusCode.UNAUTHENTICATED
    refresh_as_bearer = call_error(
        api.auth.Logout, auth_pb2.LogoutRequest(), metadata=bearer(tokens.refresh_token)
    )
    assert refresh_as_bearer.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _works(api, tokens.access_token)


def test_revocation_survives_a_restart(tmp_path, database_url):
    with running_api(tmp_path, database_url) as api:
        register(api, "fay")
        tokens = login(api, "fay")
        api.auth.Logout(auth_pb2.LogoutRequest(), metadata=bearer(tokens.access_token))
    with running_api(tmp_path, database_url) as api:  # a fresh process state: nothing cached
        assert not _works(api, tokens.access_token)
        assert _refresh_error(api, tokens.refresh_token).code() == grpc.StatusCode.UNAUTHENTICATED


# == TokenSigner, without gRPC: HS256 only, every claim required, access and refresh kept apart ===


KEY = b"k" * 32
OTHER_SIGNER_KEY = b"o" * 32


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner(KEY, access_ttl_s=900, refresh_ttl_s=7 * 86400)


def claims(**overrides) -> dict:
    now = int(time.time())
    values = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "typ": ACCESS,
        "fam": uuid.uuid4().hex,
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def forge(payload: dict, key: bytes = KEY, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- keys --------------------------------------------------------------------------


@pytest.mark.parametrize("key", [b"", b"short", b"x" * 31])
def test_refuses_short_keys(key):
    with pytest.raises(WeakSecretKey):
        TokenSigner(key)
    assert issubclass(WeakSecretKey, ValueError)


def test_accepts_32_byte_key():
    TokenSigner(b"x" * 32)
    TokenSigner(b"x" * 64)


# -- round trip and types ---------------------------------------------------------------


def test_issue_and_verify_access(signer):
    before = int(time.time())
    token = signer.issue("user-1", ACCESS)
    got = signer.verify(token, ACCESS)
    assert isinstance(got, Claims)
    assert got.user_id == "user-1" and len(got.token_id) == 32
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    raw = jwt.decode(token, KEY, algorithms=["HS256"], audience=AUDIENCE)
    assert raw["iss"] == ISSUER and raw["typ"] == ACCESS and raw["sub"] == "user-1"
    assert raw["exp"] - raw["iat"] == 900
    assert before + 900 <= raw["exp"] <= int(time.time()) + 900
    assert raw["jti"] == got.token_id


def test_issue_and_verify_refresh(signer):
    token = signer.issue("user-1", REFRESH)
    got = signer.verify(token, REFRESH)
    assert got.user_id == "user-1"
    raw = jwt.decode(token, KEY, algorithms=["HS256"], audience=AUDIENCE)
    assert raw["exp"] - raw["iat"] == 7 * 86400


def test_token_ids_are_unique(signer):
    a = signer.verify(signer.issue("u", ACCESS), ACCESS)
    b = signer.verify(signer.issue("u", ACCESS), ACCESS)
    assert a.token_id != b.token_id


def test_refresh_token_is_not_an_access_token(signer):
    with pytest.raises(Unauthenticated) as info:
        signer.verify(signer.issue("user-1", REFRESH), ACCESS)
    assert "access token is required" in info.value.message


def test_access_token_is_not_a_refresh_token(signer):
    with pytest.raises(Unauthenticated) as info:
        signer.verify(signer.issue("user-1", ACCESS), REFRESH)
    assert "refresh token is required" in info.value.message


@pytest.mark.parametrize("typ", ["", "Access", "id", "refresh "])
def test_unknown_type_is_refused(signer, typ):
    with pytest.raises(Unauthenticated):
        signer.verify(forge(claims(typ=typ)), ACCESS)


def test_forged_with_right_key_and_all_claims_is_accepted(signer):
    # the baseline the refusals below differ from by one thing only
    assert signer.verify(forge(claims()), ACCESS).user_id == "user-1"


# -- expiry and time -------------------------------------------------------------------


def test_expired_token_is_refused(signer):
    now = int(time.time())
    token = forge(claims(iat=now - 1000, nbf=now - 1000, exp=now - 10))
    with pytest.raises(Unauthenticated) as info:
        signer.verify(token, ACCESS)
    assert "expired" in info.value.message


def test_expired_by_signer_ttl():
    signer = TokenSigner(KEY, access_ttl_s=-5)
    with pytest.raises(Unauthenticated) as info:
        signer.verify(signer.issue("u", ACCESS), ACCESS)
    assert "expired" in info.value.message


def test_a_remembered_token_still_expires(signer, monkeypatch):
    now = int(time.time())
    token = forge(claims(iat=now, nbf=now, exp=now + 60))
    assert signer.verify(token, ACCESS).user_id == "user-1"
    assert signer.verify(token, ACCESS).user_id == "user-1"  # answered from the verified tokens
    monkeypatch.setattr(time, "time", lambda: now + 60.0)
    with pytest.raises(Unauthenticated) as info:
        signer.verify(token, ACCESS)
    assert "expired" in info.value.message


def test_a_remembered_token_keeps_its_type(signer):
    token = signer.issue("user-1", ACCESS)
    signer.verify(token, ACCESS)
    with pytest.raises(Unauthenticated) as info:
        signer.verify(token, REFRESH)
    assert "refresh token is required" in info.value.message


def test_not_yet_valid_is_refused(signer):
    now = int(time.time())
    with pytest.raises(Unauthenticated):
        signer.verify(forge(claims(nbf=now + 3600)), ACCESS)


# -- keys and algorithms -----------------------------------------------------------------


def test_wrong_key_is_refused(signer):
    with pytest.raises(Unauthenticated):
        signer.verify(forge(claims(), key=OTHER_SIGNER_KEY), ACCESS)
    other = TokenSigner(OTHER_SIGNER_KEY)
    with pytest.raises(Unauthenticated):
        signer.verify(other.issue("user-1", ACCESS), ACCESS)


def test_alg_none_is_refused(signer):
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}"):
        with pytest.raises(Unauthenticated):
            signer.verify(token, ACCESS)


def test_alg_none_via_pyjwt_is_refused(signer):
    token = jwt.encode(claims(), None, algorithm="none")
    with pytest.raises(Unauthenticated):
        signer.verify(token, ACCESS)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("algorithm", ["HS512", "HS384"])
def test_other_hmac_algorithms_are_refused(signer, algorithm):
    with pytest.raises(Unauthenticated):
        signer.verify(forge(claims(), key=b"k" * 64, algorithm=algorithm), ACCESS)
    with pytest.raises(Unauthenticated):
        signer.verify(forge(claims(), key=KEY, algorithm=algorithm), ACCESS)


def test_header_alg_swapped_keeps_signature_invalid(signer):
    good = signer.issue("user-1", ACCESS)
    _, payload, signature = good.split(".")
    header = b64(json.dumps({"alg": "HS512", "typ": "JWT"}).encode())
    with pytest.raises(Unauthenticated):
        signer.verify(f"{header}.{payload}.{signature}", ACCESS)


def test_tampered_payload_is_refused(signer):
    good = signer.issue("user-1", ACCESS)
    header, _, signature = good.split(".")
    payload = b64(json.dumps(claims(sub="user-2")).encode())
    with pytest.raises(Unauthenticated):
        signer.verify(f"{header}.{payload}.{signature}", ACCESS)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a.b", "....", "Bearer x.y.z", "\x00" * 10])
def test_garbage_is_refused(signer, token):
    with pytest.raises(Unauthenticated):
        signer.verify(token, ACCESS)


# -- claims ----------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "iss", "aud", "jti", "typ", "fam"])
def test_missing_claim_is_refused(signer, missing):
    payload = claims()
    del payload[missing]
    with pytest.raises(Unauthenticated):
        signer.verify(forge(payload), ACCESS)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(iss="someone-else"),
        dict(aud="someone-else"),
        dict(aud=["someone-else"]),
        dict(sub=123),
        dict(jti=123),
        dict(fam=123),
        dict(exp="tomorrow"),
        dict(iat="now"),
    ],
)
def test_wrong_claims_are_refused(signer, overrides):
    with pytest.raises(Unauthenticated):
        signer.verify(forge(claims(**overrides)), ACCESS)
