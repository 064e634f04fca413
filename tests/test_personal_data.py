"""Personal data: emails sealed at rest (AES-GCM), never logged, and erasure that keeps the books intact."""

from __future__ import annotations

import os
import stat
import time

import grpc
import pytest
from helpers import (
    PASSWORD,
    TEST_DATA_KEY,
    ServerProcess,
    audit_rows,
    bearer,
    call_error,
    grant_operator,
    login,
    make_settings,
    register,
    run_cli,
    running_api,
)
from lending.v1 import auth_pb2, billing_pb2

from lending_grpc.config import ConfigError, resolve_data_key
from lending_grpc.core.crypto import DataKeyError, Sealer, UnsealError, new_key_text
from lending_grpc.core.storage.database import close_database, open_database, sqlite_path
from lending_grpc.core.storage.migrations import SchemaVersion, _v1_baseline
from lending_grpc.core.storage.models import Loan, LoginThrottle, Payment, TokenFamily, User

EMAIL = "ada.lovelace@example.com"


def test_emails_are_sealed_at_rest(api):
    user = register(api, "ada", email=EMAIL)
    assert user.email == EMAIL  # the owner gets it back at registration
    row = User.get(User.user_id == user.user_id)
    assert row.email == "" and row.email_sealed.startswith("v1.") and EMAIL not in row.email_sealed
    sealer = Sealer.from_text(TEST_DATA_KEY)
    assert sealer.open(row.email_sealed, user.user_id) == EMAIL
    other = register(api, "bea")
    with pytest.raises(UnsealError):  # bound to its row: a sealed email moved to another user does not open
        sealer.open(row.email_sealed, other.user_id)
    assert register(api, "cid", email=EMAIL).user_id  # same address, different ciphertext (random nonce)
    assert User.get(User.username_key == "cid").email_sealed != row.email_sealed


def test_the_email_is_nowhere_in_the_sqlite_files(tmp_path):
    with running_api(tmp_path, f"sqlite:///{tmp_path / 'pd.db'}") as api:
        register(api, "ada", email=EMAIL)
        database = api.server.database
        database.execute_sql("PRAGMA wal_checkpoint(FULL)")
        files = [p for p in tmp_path.iterdir() if p.name.startswith("pd.db")]
        assert files and all(EMAIL.encode() not in p.read_bytes() for p in files)


@pytest.mark.slow
def test_emails_are_never_logged_even_at_debug(tmp_path):
    server = ServerProcess(tmp_path / "log.db", env={"LENDING_LOG_LEVEL": "DEBUG"})
    try:
        from lending.v1 import auth_pb2_grpc

        with grpc.insecure_channel(server.target) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            stub.Register(auth_pb2.RegisterRequest(username="ada", password=PASSWORD, email=EMAIL))
            stub.Login(auth_pb2.LoginRequest(username="ada", password=PASSWORD))
        # Each access line is written before its response is sent: both are in the log by now.
        deadline = time.monotonic() + 10
        while "AuthService/Login code=OK" not in "".join(server.log) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.kill()  # the log is what matters here, not a graceful stop (tested elsewhere)
    log = "".join(server.log)
    assert "method=/lending.v1.AuthService/Register code=OK" in log
    assert EMAIL not in log and PASSWORD not in log and TEST_DATA_KEY not in log


def test_plaintext_emails_of_a_version_1_database_are_sealed_on_first_start(tmp_path):
    """A database migrated to version 1 only, with a user as that release stored it."""
    url = f"sqlite:///{tmp_path / 'v1.db'}"
    _make_version_1_database(url)
    with running_api(tmp_path, url) as api:
        row = User.get(User.user_id == "11111111-1111-1111-1111-111111111111")
        assert row.email == ""
        assert Sealer.from_text(TEST_DATA_KEY).open(row.email_sealed, row.user_id) == EMAIL
        assert login(api, "old-timer").access_token  # the v1 account still signs in
        assert [r["summary"] for r in audit_rows(event="user.emails_sealed")] == [{"count": 1}]
    with running_api(tmp_path, url):
        assert len(audit_rows(event="user.emails_sealed")) == 1  # nothing left to seal


def test_version_1_emails_are_sealed_on_postgresql_too(tmp_path, postgres):
    url = postgres.create(migrated=False)
    try:
        _make_version_1_database(url)
        with running_api(tmp_path, url):
            row = User.get(User.username_key == "old-timer")
            assert (
                row.email == ""
                and Sealer.from_text(TEST_DATA_KEY).open(row.email_sealed, row.user_id) == EMAIL
            )
    finally:
        postgres.drop(url)


def _make_version_1_database(url: str) -> None:
    from argon2 import PasswordHasher

    db = open_database(url)
    try:
        with db.bind_ctx([SchemaVersion]):
            db.create_tables([SchemaVersion])
            _v1_baseline(db, "Asia/Jakarta")
            SchemaVersion.create(version=1, applied_time_us=0)
        password_hash = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash(PASSWORD)
        db.execute_sql(
            'INSERT INTO "user" (user_id, username, username_key, email, password_hash, create_time_us)'
            " VALUES (%s, %s, %s, %s, %s, %s)".replace("%s", "?" if sqlite_path(url) else "%s"),
            ("11111111-1111-1111-1111-111111111111", "old-timer", "old-timer", EMAIL, password_hash, 1),
        )
    finally:
        close_database(db)


def test_erasure_removes_personal_data_blocks_the_account_and_keeps_the_books(tmp_path, database_url):
    with running_api(tmp_path, database_url, auth_cache_seconds=0.0) as api:
        ada = register(api, "ada", email=EMAIL).user_id
        register(api, "olga")
        grant_operator(api, "olga")
        tokens = login(api, "ada")
        md = bearer(tokens.access_token)
        api.billing.CreateLoan(
            billing_pb2.CreateLoanRequest(loan_id="L1", principal_amount="1000000.00"), metadata=md
        )
        for request_id in ("p1", "p2"):
            api.billing.MakePayment(
                billing_pb2.MakePaymentRequest(loan_id="L1", amount="22000.00", request_id=request_id),
                metadata=md,
            )
        audit_before = audit_rows(subject=ada)

        result = run_cli("users", "erase", "ada", "--database-url", database_url, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == (
            f"erased user {ada}: username is now erased-{ada}, 1 session revoked; "
            "loans, payments and audit rows kept\n"
        )
        # Personal data gone, the account blocked.
        row = User.get(User.user_id == ada)
        assert (row.username, row.email, row.email_sealed) == (f"erased-{ada}", "", None)
        assert row.erased_time_us is not None and row.password_hash == "!erased"
        assert LoginThrottle.select().where(LoginThrottle.user == row.id).count() == 0
        assert TokenFamily.get(TokenFamily.user == row.id).revoked_reason == "erased"
        for username in ("ada", f"erased-{ada}"):
            err = call_error(api.auth.Login, auth_pb2.LoginRequest(username=username, password=PASSWORD))
            assert (
                err.code() == grpc.StatusCode.UNAUTHENTICATED
                and err.details() == "invalid username or password"
            )
        assert call_error(api.billing.ListLoans, billing_pb2.ListLoansRequest(), metadata=md).code() == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        refresh = call_error(
            api.auth.RefreshToken, auth_pb2.RefreshTokenRequest(refresh_token=tokens.refresh_token)
        )
        assert refresh.code() == grpc.StatusCode.UNAUTHENTICATED
        # The books: loan, payments and audit rows intact and reconciling.
        loan = Loan.get(Loan.owner == row.id)
        payments = list(Payment.select().where(Payment.loan == loan.id))
        assert (loan.paid_cents, sum(p.amount_cents for p in payments), len(payments)) == (
            4400000,
            4400000,
            2,
        )
        olga = bearer(login(api, "olga").access_token)
        seen = api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id="L1", owner=ada), metadata=olga)
        assert (seen.total_amount, seen.paid_amount, seen.outstanding_balance) == (
            "1100000.00",
            "44000.00",
            "1056000.00",
        )
        audit_after = audit_rows(subject=ada)
        assert audit_after[: len(audit_before)] == audit_before
        assert [(r["event"], r["outcome"]) for r in audit_after[len(audit_before) :]] == [
            ("user.erase", "ok"),
            ("token.refresh", "refused"),  # the refresh attempt after erasure
        ]
        # The name is free again; the new account is a different user.
        assert register(api, "ada").user_id != ada
        again = run_cli("users", "erase", f"erased-{ada}", "--database-url", database_url, cwd=tmp_path)
        assert again.returncode == 1 and again.stderr == f"lending-grpc: no user 'erased-{ada}'\n"


def test_postgresql_requires_an_explicit_data_key(tmp_path):
    result = run_cli(
        "serve", "--database-url", "postgresql://postgres@127.0.0.1:5432/x", cwd=tmp_path, LENDING_DATA_KEY=""
    )
    assert result.returncode == 2
    assert "with PostgreSQL, set LENDING_DATA_KEY or LENDING_DATA_KEY_FILE" in result.stderr


def test_a_data_key_is_generated_once_beside_the_sqlite_file(tmp_path):
    settings = make_settings(tmp_path, data_key="")
    first, second = resolve_data_key(settings), resolve_data_key(settings)
    key_file = tmp_path / "lending.db.data-key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert second.open(first.seal(EMAIL, "u"), "u") == EMAIL


def test_data_key_file_and_bad_keys(tmp_path):
    key_file = tmp_path / "data.key"
    key_file.write_text(new_key_text() + "\n")
    key_file.chmod(0o600)
    sealer = resolve_data_key(make_settings(tmp_path, data_key="", data_key_file=str(key_file)))
    assert sealer.open(sealer.seal(EMAIL, "u"), "u") == EMAIL
    for bad in ("short", "1:" + "A" * 10, "x:" + new_key_text()):
        with pytest.raises(ConfigError, match="LENDING_DATA_KEY"):
            resolve_data_key(make_settings(tmp_path, data_key=bad))


def test_keys_rotate_by_version():
    old_text, new_text = new_key_text(), new_key_text()
    old = Sealer.from_text(old_text)
    sealed_old = old.seal(EMAIL, "u")
    rotated = Sealer.from_text(f"2:{new_text},1:{old_text}")
    assert rotated.open(sealed_old, "u") == EMAIL and rotated.needs_reseal(sealed_old)
    sealed_new = rotated.seal(EMAIL, "u")
    assert sealed_new.startswith("v2.") and not rotated.needs_reseal(sealed_new)
    with pytest.raises(UnsealError, match="key version '2'"):
        old.open(sealed_new, "u")
    tampered = sealed_new[:-2] + ("A" if sealed_new[-2] != "A" else "B") + sealed_new[-1]
    with pytest.raises(UnsealError):
        rotated.open(tampered, "u")
    with pytest.raises(DataKeyError):
        Sealer.from_text(f"1:{new_text},1:{old_text}")


def test_a_rotated_key_reseals_every_email_on_start(tmp_path, database_url):
    old, new = TEST_DATA_KEY, new_key_text()
    with running_api(tmp_path, database_url, data_key=old) as api:
        ada = register(api, "ada", email=EMAIL).user_id
    # Removing the old key too early: the server refuses to start, and says why (exit code 2).
    refused = run_cli("serve", "--listen", "127.0.0.1:0", "--database-url", database_url, cwd=tmp_path,
                      LENDING_DATA_KEY=f"2:{new}")  # fmt: skip
    assert refused.returncode == 2
    assert f"cannot re-seal the email of user {ada}" in refused.stderr and "Traceback" not in refused.stderr
    with running_api(tmp_path, database_url, data_key=f"2:{new},1:{old}"):
        sealed = User.get(User.user_id == ada).email_sealed
        assert sealed.startswith("v2.") and Sealer.from_text(f"2:{new}").open(sealed, ada) == EMAIL
        assert audit_rows(event="user.emails_sealed")[-1]["summary"] == {"count": 1}
    with running_api(tmp_path, database_url, data_key=f"2:{new}") as api:  # the old key can go now
        assert login(api, "ada").access_token
