"""Key rotation without a restart: key ids in tokens, key lists, SIGHUP (or a poll) re-reading key files.

The end-to-end tests run `lending-grpc serve` as a real process whose keys
come from files, as Vault Agent or the Secrets Store CSI driver render them,
rotate the files, signal the process and check what clients see.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import signal
import time
import uuid
from pathlib import Path

import grpc
import jwt
import pytest
from databases import sqlite_url
from helpers import PASSWORD, ServerProcess, login, make_settings, register, running_api
from lending.v1 import auth_pb2, auth_pb2_grpc, billing_pb2, billing_pb2_grpc

from lending_grpc.config import ConfigError, parse_secret_keys
from lending_grpc.core.crypto import Sealer, new_key_text
from lending_grpc.core.errors import InvalidArgument, Unauthenticated
from lending_grpc.core.pagination import PageTokens
from lending_grpc.core.storage.database import close_database, open_database
from lending_grpc.core.storage.models import User
from lending_grpc.core.tokens import ACCESS, REFRESH, TokenSigner, WeakSecretKey, key_id
from lending_grpc.server.lifecycle import hold_reload_signal

OLD = b"old-jwt-signing-key-" + b"o" * 24
NEW = b"new-jwt-signing-key-" + b"n" * 24
STRANGER = b"someone-elses-jwt-key-" + b"s" * 24
DATA_1, DATA_2 = new_key_text(), new_key_text()


def kid(token: str) -> str | None:
    return jwt.get_unverified_header(token).get("kid")


def resign(token: str, key: bytes, headers: dict | None = None) -> str:
    """The same claims, signed with ``key`` under ``headers`` (a forgery, or a token from before kids)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(claims, key, algorithm="HS256", headers=headers)


def by_hand(token: str, key: bytes, header: dict) -> str:
    """The same claims under any header at all (PyJWT refuses to write a kid that is not a string)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{token.split('.')[1]}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def write_key_file(path: Path, text: str | bytes) -> None:
    """Replace ``path`` in one step, as Vault Agent and the CSI driver do (mode 0600)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(text if isinstance(text, bytes) else text.encode())
    tmp.chmod(0o600)
    os.replace(tmp, path)


# -- key ids and key lists ---------------------------------------------------------------


def test_the_kid_is_the_start_of_the_keys_sha256():
    token = TokenSigner(OLD).issue("user-1", ACCESS)
    assert kid(token) == key_id(OLD) == hashlib.sha256(OLD).hexdigest()[:8]
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_the_first_key_signs_and_every_listed_key_verifies():
    before = TokenSigner(OLD)
    old_access, old_refresh = before.issue("u", ACCESS), before.issue("u", REFRESH)
    signer = TokenSigner([NEW, OLD])
    assert signer.key_ids == (key_id(NEW), key_id(OLD))
    assert kid(signer.issue("u", ACCESS)) == key_id(NEW)
    assert signer.verify(old_access, ACCESS).user_id == "u"
    assert signer.verify(old_refresh, REFRESH).user_id == "u"


def test_a_token_of_an_unknown_or_retired_key_is_refused_even_when_remembered():
    signer = TokenSigner([NEW, OLD])
    old_token = TokenSigner(OLD).issue("u", ACCESS)
    assert signer.verify(old_token, ACCESS).user_id == "u"  # now remembered as verified
    with pytest.raises(Unauthenticated, match="key this server does not accept"):
        signer.verify(TokenSigner(STRANGER).issue("u", ACCESS), ACCESS)
    signer.use_keys([NEW])
    with pytest.raises(Unauthenticated, match="key this server does not accept"):
        signer.verify(old_token, ACCESS)


def test_a_kid_does_not_choose_a_key_it_was_not_signed_with():
    signer = TokenSigner([NEW, OLD])
    token = TokenSigner(OLD).issue("u", ACCESS)
    for forged in (resign(token, STRANGER, {"kid": key_id(NEW)}), resign(token, OLD, {"kid": key_id(NEW)})):
        with pytest.raises(Unauthenticated, match="signature is invalid"):
            signer.verify(forged, ACCESS)
    assert signer.verify(by_hand(token, OLD, {"alg": "HS256", "kid": key_id(OLD)}), ACCESS).user_id == "u"
    for odd_kid in (1, ["x"], None, "", key_id(STRANGER)):
        with pytest.raises(Unauthenticated):
            signer.verify(by_hand(token, OLD, {"alg": "HS256", "kid": odd_kid}), ACCESS)


def test_tokens_from_before_key_ids_verify_with_any_listed_key():
    legacy = resign(TokenSigner(OLD).issue("u", ACCESS), OLD)  # no kid, as issued before this release
    assert kid(legacy) is None
    assert TokenSigner(OLD).verify(legacy, ACCESS).user_id == "u"
    assert TokenSigner([NEW, OLD]).verify(legacy, ACCESS).user_id == "u"
    with pytest.raises(Unauthenticated, match="signature is invalid"):
        TokenSigner([NEW, STRANGER]).verify(legacy, ACCESS)


def test_an_unusable_key_list_is_refused_and_changes_nothing():
    signer = TokenSigner(OLD)
    for keys, message in [
        ([], "no JWT secret key"),
        ([NEW, b"short"], r"at least 32 bytes \(key 2\)"),
        ([NEW, NEW], "listed twice"),
        ([NEW] * 17, "at most 16"),
    ]:
        with pytest.raises(WeakSecretKey, match=message):
            signer.use_keys(keys)
    assert signer.key_ids == (key_id(OLD),)


def test_key_files_hold_one_key_per_line_and_old_single_keys_keep_their_meaning():
    assert parse_secret_keys(NEW + b"\n\n" + OLD + b"\r\n", "f") == (NEW, OLD)
    # A single line is the key as it is, spaces included (an inline key always was).
    assert parse_secret_keys(b"  " + OLD + b" ", "LENDING_SECRET_KEY") == (b"  " + OLD + b" ",)
    binary = bytes(range(256))[::-1] + b"\n\xff"  # not UTF-8: one binary key, newlines and all
    assert parse_secret_keys(binary, "f") == (binary,)
    with pytest.raises(ConfigError, match=r"keys: the JWT secret key must be at least 32 bytes \(key 2\)"):
        parse_secret_keys(NEW + b"\nshort", "keys")
    with pytest.raises(ConfigError) as raised:
        parse_secret_keys(NEW + b"\n" + NEW, "keys")
    assert NEW.decode() not in str(raised.value)


def test_page_tokens_survive_a_rotation_and_not_the_retirement_of_their_key():
    old_tokens = PageTokens(OLD)
    token = old_tokens.encode("loans|1", {"after": 5})
    rotated = PageTokens(NEW, OLD)
    assert rotated.decode(token, "loans|1") == {"after": 5}
    assert PageTokens(NEW).decode(rotated.encode("loans|1", {"after": 6}), "loans|1") == {"after": 6}
    rotated.use_keys([NEW])
    with pytest.raises(InvalidArgument):
        rotated.decode(token, "loans|1")


def test_a_sealer_swaps_its_keys_whole():
    sealer = Sealer.from_text(f"1:{DATA_1}")
    sealed_1 = sealer.seal("ada@example.com", "u1")
    sealer.use_keys(Sealer.from_text(f"2:{DATA_2},1:{DATA_1}"))
    assert sealer.versions == (2, 1)
    assert sealer.seal("bea@example.com", "u2").startswith("v2.")
    assert sealer.open(sealed_1, "u1") == "ada@example.com" and sealer.needs_reseal(sealed_1)


def test_a_sighup_while_starting_is_remembered_not_fatal():
    previous = signal.getsignal(signal.SIGHUP)
    try:
        held = hold_reload_signal()
        os.kill(os.getpid(), signal.SIGHUP)
        assert held.wait(5)
    finally:
        signal.signal(signal.SIGHUP, previous)


# -- in-process reloads ------------------------------------------------------------------


def test_inline_keys_are_never_reloaded(tmp_path, caplog):
    with running_api(tmp_path, sqlite_url(tmp_path)) as api:
        before = login_token(api)
        assert api.server.keys.reload()
        assert "no key file to re-read" in caplog.text
        assert kid(login_token(api)) == kid(before)


def test_a_poll_picks_up_a_rotated_file_without_any_signal(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lending_grpc.keys")
    key_file = tmp_path / "jwt-key"
    write_key_file(key_file, OLD)
    overrides = dict(secret_key="", secret_key_file=str(key_file), key_poll_seconds=0.1)
    with running_api(tmp_path, sqlite_url(tmp_path), **overrides) as api:
        old = login_token(api)
        assert kid(old) == key_id(OLD)
        write_key_file(key_file, NEW + b"\n" + OLD)
        wait_for(lambda: f"signing kid {key_id(NEW)}" in caplog.text)
        assert kid(login_token(api)) == key_id(NEW)
        loans(api, old)  # still valid
        write_key_file(key_file, b"short")  # broken: logged once, not on every poll
        wait_for(lambda: "LENDING_SECRET_KEY_FILE not reloaded" in caplog.text)
        time.sleep(0.5)
        assert caplog.text.count("LENDING_SECRET_KEY_FILE not reloaded") == 1
        assert kid(login_token(api)) == key_id(NEW)


def login_token(api) -> str:
    username = f"u{uuid.uuid4().hex[:10]}"
    register(api, username)
    return login(api, username).access_token


def loans(api, token: str):
    return api.billing.ListLoans(
        billing_pb2.ListLoansRequest(), metadata=(("authorization", f"Bearer {token}"),)
    )


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


# -- a real server process: SIGHUP -------------------------------------------------------


class Client:
    """Stubs on a channel of their own (a new connection: with --workers, maybe another process)."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.billing = billing_pb2_grpc.BillingServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def register(self, username: str) -> str:
        return self.auth.Register(
            auth_pb2.RegisterRequest(username=username, password=PASSWORD, email=f"{username}@example.com")
        ).user_id

    def login(self, username: str):
        return self.auth.Login(auth_pb2.LoginRequest(username=username, password=PASSWORD))

    def refresh(self, refresh_token: str):
        return self.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=refresh_token))

    def code(self, access_token: str) -> grpc.StatusCode:
        """What ListLoans answers with this access token."""
        try:
            self.billing.ListLoans(
                billing_pb2.ListLoansRequest(), metadata=(("authorization", f"Bearer {access_token}"),)
            )
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK


def sealed_versions(database_url: str) -> dict[str, str]:
    """username -> the data key version its email is sealed with ("v1", "v2")."""
    db = open_database(database_url)
    try:
        return {row.username: row.email_sealed.split(".")[0] for row in User.select()}
    finally:
        close_database(db)


def hup_and_wait(server: ServerProcess, needle: str, count: int = 1) -> None:
    """SIGHUP the server, then wait until ``needle`` is in ``count`` more log lines."""
    seen = "".join(server.log).count(needle)
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "".join(server.log).count(needle) >= seen + count)


@pytest.mark.slow
def test_sighup_rotates_the_jwt_and_data_keys_without_logging_anyone_out(tmp_path, database_url):
    jwt_file, data_file = tmp_path / "jwt-key", tmp_path / "data-key"
    write_key_file(jwt_file, OLD)
    write_key_file(data_file, f"1:{DATA_1}")
    env = {
        "LENDING_SECRET_KEY": "",  # the files, not serverproc's inline test keys
        "LENDING_DATA_KEY": "",
        "LENDING_SECRET_KEY_FILE": str(jwt_file),
        "LENDING_DATA_KEY_FILE": str(data_file),
    }
    server = ServerProcess(database_url, env=env)
    client = Client(server.target)
    try:
        assert f"JWT keys: signing kid {key_id(OLD)}; data keys: sealing with version 1" in "".join(
            server.log
        )
        client.register("ada")
        before, kept = client.login("ada"), client.login("ada")  # two sessions
        assert kid(before.access_token) == kid(before.refresh_token) == key_id(OLD)
        legacy = resign(before.access_token, OLD)  # as issued before tokens carried a kid

        # Rotate: the new key first, the old one kept for the tokens it signed.
        write_key_file(jwt_file, NEW + b"\n" + OLD + b"\n")
        write_key_file(data_file, f"2:{DATA_2},1:{DATA_1}")
        hup_and_wait(server, "data keys read from")
        log = "".join(server.log)
        assert f"signing kid {key_id(NEW)}, also verifying {key_id(OLD)}" in log
        assert "sealing with version 2, also opening 1" in log
        assert OLD.decode() not in log and NEW.decode() not in log and DATA_2 not in log

        assert client.code(before.access_token) == grpc.StatusCode.OK
        assert client.code(legacy) == grpc.StatusCode.OK
        refreshed = client.refresh(before.refresh_token)  # a refresh token of the old key
        assert kid(refreshed.access_token) == kid(refreshed.refresh_token) == key_id(NEW)
        assert client.code(refreshed.access_token) == grpc.StatusCode.OK
        client.register("bea")
        fresh = client.login("bea")
        assert kid(fresh.access_token) == key_id(NEW)
        assert sealed_versions(database_url) == {"ada": "v1", "bea": "v2"}

        # A key the server never listed, or a kid naming a key that did not sign: refused.
        assert client.code(resign(fresh.access_token, STRANGER, {"kid": key_id(STRANGER)})) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert client.code(resign(fresh.access_token, OLD, {"kid": key_id(NEW)})) == (
            grpc.StatusCode.UNAUTHENTICATED
        )

        # Broken files change nothing: the server keeps serving with the keys it has.
        write_key_file(jwt_file, b"too short")
        write_key_file(data_file, f"2:{DATA_2}")  # drops version 1, which ada's email still needs
        hup_and_wait(server, "LENDING_DATA_KEY_FILE not reloaded")
        log = "".join(server.log)
        assert "LENDING_SECRET_KEY_FILE not reloaded, keeping the JWT keys in use" in log
        assert "drops data key version 1, which stored emails are still sealed with" in log
        assert client.code(before.access_token) == grpc.StatusCode.OK
        assert kid(client.login("bea").access_token) == key_id(NEW)

        # The old key retired (after its tokens' lifetime): its tokens end at once.
        write_key_file(jwt_file, NEW)
        hup_and_wait(server, f"signing kid {key_id(NEW)} (pid")
        assert client.code(before.access_token) == grpc.StatusCode.UNAUTHENTICATED
        assert client.code(legacy) == grpc.StatusCode.UNAUTHENTICATED
        assert client.code(refreshed.access_token) == grpc.StatusCode.OK
        with pytest.raises(grpc.RpcError) as old_refresh:
            client.refresh(kept.refresh_token)  # never used, but signed with the retired key
        assert old_refresh.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "key this server does not accept" in old_refresh.value.details()
    finally:
        client.close()
        assert server.terminate() == 0

    # Re-sealing is the start-up job: the next start moves ada's email to version 2 ...
    write_key_file(data_file, f"2:{DATA_2},1:{DATA_1}")
    server = ServerProcess(database_url, env=env)
    try:
        assert sealed_versions(database_url) == {"ada": "v2", "bea": "v2"}
        # ... after which version 1 may go, without another restart.
        write_key_file(data_file, f"2:{DATA_2}")
        hup_and_wait(server, "data keys read from")
        assert re.search(r"data keys read from \S+: sealing with version 2 \(pid", "".join(server.log))
    finally:
        assert server.terminate() == 0


@pytest.mark.slow
def test_a_supervisor_passes_sighup_to_every_worker(tmp_path):
    jwt_file = tmp_path / "jwt-key"
    write_key_file(jwt_file, OLD)
    env = {"LENDING_SECRET_KEY": "", "LENDING_SECRET_KEY_FILE": str(jwt_file)}
    server = ServerProcess(tmp_path / "workers.db", "--workers", "2", env=env)
    try:
        pids = re.search(r"pids ([\d ]+)", "".join(server.log)).group(1).split()
        client = Client(server.target)
        client.register("ada")
        before = client.login("ada")
        client.close()
        write_key_file(jwt_file, NEW + b"\n" + OLD)
        hup_and_wait(server, f"signing kid {key_id(NEW)}, also verifying {key_id(OLD)} (pid", count=2)
        log = "".join(server.log)
        assert "received SIGHUP: 2 workers re-read their key files" in log
        reloaded = re.findall(rf"signing kid {key_id(NEW)}, also verifying \w+ \(pid (\d+)\)", log)
        assert sorted(reloaded) == sorted(pids)
        for _ in range(6):  # new connections, spread over both workers
            client = Client(server.target)
            try:
                assert client.code(before.access_token) == grpc.StatusCode.OK
                assert kid(client.login("ada").access_token) == key_id(NEW)
            finally:
                client.close()
    finally:
        assert server.terminate() == 0


def test_settings_for_rotation_are_checked(tmp_path):
    from lending_grpc.config import load_settings

    with pytest.raises(ConfigError, match="LENDING_KEY_POLL_SECONDS must be between 0 and 3600"):
        load_settings({}, {"LENDING_KEY_POLL_SECONDS": "-1"}, None)
    settings = make_settings(tmp_path, key_poll_seconds=30.0)
    assert settings.key_poll_seconds == 30.0


def _slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())


def test_the_key_pages_link_to_their_own_sections_and_name_real_tests():
    """The key lists (security page) and the rotation steps (deployment page): their links and tests resolve.

    Links between pages are mkdocs build --strict's to check.
    """
    root = Path(__file__).resolve().parent.parent
    for page in (root / "docs" / "security.md", root / "docs" / "operations" / "deployment.md"):
        text = page.read_text()
        anchors = {_slug(heading) for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}
        links = re.findall(r"\]\(#([^)]+)\)", text)
        assert links and set(links) <= anchors, page.name
        for test_file in set(re.findall(r"tests/\w+\.py", text)):
            assert (root / test_file).is_file(), test_file
