"""Token lifecycle over real gRPC: rotating refresh tokens, reuse detection, logout, persisted revocation."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
from helpers import audit_rows, bearer, call_error, jwt_payload, login, register, running_api
from lending.v1 import auth_pb2, billing_pb2

from lending_grpc.core.storage.models import TokenFamily


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
