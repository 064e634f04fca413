"""Brute-force protection over real gRPC: per-account failure counts in the database, growing lockouts."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from helpers import (
    ANONYMOUS,
    PASSWORD,
    ServerProcess,
    audit_rows,
    call_error,
    login,
    reason,
    register,
    retry_seconds,
    running_api,
)
from lending.v1 import auth_pb2

from lending_grpc.core.auth import AuthCore
from lending_grpc.core.clock import Clock
from lending_grpc.core.crypto import Sealer, new_key_text
from lending_grpc.core.passwords import Passwords
from lending_grpc.core.storage.models import LoginThrottle, User
from lending_grpc.core.tokens import TokenSigner

WRONG = "wrong password 123"


def _fail(api, username: str, password: str = WRONG) -> grpc.RpcError:
    return call_error(api.auth.Login, auth_pb2.LoginRequest(username=username, password=password))


def _user_pk(username: str) -> int:
    return User.get(User.username_key == username.lower()).id


def _end_lockout(username: str) -> None:
    """Let the lockout run out (moving its end into the past) without waiting minutes."""
    past = time.time_ns() // 1000 - 1
    LoginThrottle.update(locked_until_us=past).where(LoginThrottle.user == _user_pk(username)).execute()


def _lock(api, username: str) -> grpc.RpcError:
    """Four wrong passwords (UNAUTHENTICATED), then the fifth, which locks: its error is returned."""
    for _ in range(4):
        assert _fail(api, username).code() == grpc.StatusCode.UNAUTHENTICATED
    return _fail(api, username)


def test_five_failures_lock_the_account_even_for_the_right_password(api):
    register(api, "bob")
    register(api, "carol")
    err = _lock(api, "bob")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(err) == "ACCOUNT_LOCKED"
    assert retry_seconds(err) == 300
    assert err.details() == "too many failed sign-ins: this account is locked for 300 more seconds"
    # The correct password is refused too, with the rest of the lockout.
    right = _fail(api, "bob", PASSWORD)
    assert right.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason(right) == "ACCOUNT_LOCKED"
    assert retry_seconds(right) in (299, 300)
    # Another account is not affected.
    assert login(api, "carol").token_type == "Bearer"
    bob_id = User.get(User.username_key == "bob").user_id
    events = [
        (r["event"], r["outcome"]) for r in audit_rows(subject=bob_id) if r["event"].startswith("login")
    ]
    assert events == [("login.failure", "refused")] * 5 + [
        ("login.lockout", "refused"),
        ("login.locked", "refused"),
    ]
    lockout = audit_rows(subject=bob_id, event="login.lockout")[0]["summary"]
    assert lockout == {"failures": 5, "lockout_number": 1, "lockout_s": 300}


def test_lockouts_double_and_a_successful_sign_in_resets_them(api):
    register(api, "dave")
    durations = []
    for _ in range(4):
        err = _lock(api, "dave")
        durations.append(retry_seconds(err))
        _end_lockout("dave")
    assert durations == [300, 600, 1200, 2400]
    assert login(api, "dave").access_token  # after the last lockout ended
    assert retry_seconds(_lock(api, "dave")) == 300  # the ladder starts again


def test_the_longest_lockout_is_capped(tmp_path, database_url):
    with running_api(tmp_path, database_url, login_lockout_seconds=60, login_lockout_max_seconds=100) as api:
        register(api, "erin")
        durations = []
        for _ in range(3):
            durations.append(retry_seconds(_lock(api, "erin")))
            _end_lockout("erin")
        assert durations == [60, 100, 100]


def test_failures_outside_the_window_do_not_add_up(api):
    register(api, "frank")
    for _ in range(4):
        assert _fail(api, "frank").code() == grpc.StatusCode.UNAUTHENTICATED
    # The window (900 s) of those four has passed.
    LoginThrottle.update(window_start_us=LoginThrottle.window_start_us - 901 * 1_000_000).execute()
    assert _fail(api, "frank").code() == grpc.StatusCode.UNAUTHENTICATED
    row = LoginThrottle.get(LoginThrottle.user == _user_pk("frank"))
    assert (row.failures, row.locked_until_us) == (1, 0)


def test_settings_change_the_limit(tmp_path, database_url):
    with running_api(tmp_path, database_url, login_max_failures=2, login_lockout_seconds=30) as api:
        register(api, "gina")
        assert _fail(api, "gina").code() == grpc.StatusCode.UNAUTHENTICATED
        err = _fail(api, "gina")
        assert (err.code(), retry_seconds(err)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, 30)


def test_a_burst_of_concurrent_guesses_gets_exactly_four_answers(api):
    """20 guesses at once: each is counted once; only the first four get a real answer."""
    register(api, "hank")
    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda _: _fail(api, "hank").code(), range(20)))
    assert codes.count(grpc.StatusCode.UNAUTHENTICATED) == 4
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 16
    hank = User.get(User.username_key == "hank").user_id
    assert len(audit_rows(subject=hank, event="login.failure")) == 5
    assert len(audit_rows(subject=hank, event="login.lockout")) == 1
    assert len(audit_rows(subject=hank, event="login.locked")) == 15


def test_unknown_users_are_never_locked_and_still_cost_a_hash(database_url):
    """No timing oracle: an unknown name verifies against a decoy hash, like a wrong password."""
    from lending_grpc.core.storage.database import close_database, open_database
    from lending_grpc.core.storage.migrations import migrate

    class CountingPasswords(Passwords):
        verified: list = []

        def verify(self, stored_hash, password):
            self.verified.append(stored_hash)
            return super().verify(stored_hash, password)

    db = open_database(database_url)
    try:
        migrate(db)
        passwords = CountingPasswords(fast_insecure=True)
        auth = AuthCore(db, Clock(), passwords, TokenSigner(b"k" * 32), Sealer.from_text(new_key_text()))
        for _ in range(7):
            with pytest.raises(Exception, match="invalid username or password"):
                auth.login(ANONYMOUS, "nobody-here", WRONG)
        assert passwords.verified == [None] * 7  # seven decoy verifications, no lockout
        assert LoginThrottle.select().count() == 0
    finally:
        close_database(db)


@pytest.mark.slow
def test_two_server_processes_share_the_failure_count(tmp_path, database_url):
    """3 failures on one process plus 2 on another lock the account on both."""
    extra = () if database_url.startswith("sqlite") else ("--database-url", database_url)
    first = ServerProcess(tmp_path / "shared.db", *extra)
    second = ServerProcess(tmp_path / "shared.db", *extra)
    try:
        with grpc.insecure_channel(first.target) as one, grpc.insecure_channel(second.target) as two:
            from lending.v1 import auth_pb2_grpc

            a, b = auth_pb2_grpc.AuthServiceStub(one), auth_pb2_grpc.AuthServiceStub(two)
            a.Register(auth_pb2.RegisterRequest(username="ivan", password=PASSWORD, email="ivan@example.com"))
            bad = auth_pb2.LoginRequest(username="ivan", password=WRONG)
            codes = [call_error(a.Login, bad).code() for _ in range(3)]
            codes += [call_error(b.Login, bad).code() for _ in range(2)]
            assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 4 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
            good = auth_pb2.LoginRequest(username="ivan", password=PASSWORD)
            err = call_error(a.Login, good)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_seconds(err) in (299, 300)
    finally:
        first.terminate()
        second.terminate()
