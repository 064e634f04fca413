"""Error tracking: each INTERNAL error reaches Sentry once, tagged, with the release and no personal data.

The Sentry ingest host is played by a local HTTP server (``sentry_ingest.py``)
that keeps the envelopes the real sentry-sdk sends to the DSN.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from importlib.metadata import version

import grpc
import pytest
from databases import sqlite_url
from helpers import (
    PASSWORD,
    TEST_DATA_KEY,
    TEST_SECRET_KEY,
    ServerProcess,
    bearer,
    login,
    register,
    running_api,
)
from lending.v1 import auth_pb2, auth_pb2_grpc, billing_pb2
from sentry_ingest import PUBLIC_KEY, SentryIngest

from lending_grpc.config import ConfigError, load_settings, redact_dsn
from lending_grpc.core.billing import BillingCore

EMAIL = "grace.hopper@example.com"
REQUEST_ID = "req-sentry-0001"
LOAN_ID = "LOAN-FROM-THE-REQUEST-BODY-77"
GET_LOAN = "/lending.v1.BillingService/GetLoan"


def _leaks(raw: bytes, needles: dict[str, str]) -> list[str]:
    return [name for name, needle in needles.items() if needle and needle.encode() in raw]


def test_an_internal_error_is_reported_once_with_its_tags_and_release_and_no_personal_data(
    tmp_path, monkeypatch, caplog
):
    with SentryIngest() as ingest:
        with running_api(
            tmp_path, sqlite_url(tmp_path), sentry_dsn=ingest.dsn, sentry_environment="staging"
        ) as api:
            user = register(api, "grace", email=EMAIL)
            tokens = login(api, "grace")
            access_token, refresh_token = tokens.access_token, tokens.refresh_token

            def explode(self, *args, **kwargs):
                email, token = EMAIL, access_token  # locals, which must not travel either
                raise RuntimeError(f"could not load the loan of {email} (authorization: Bearer {token})")

            monkeypatch.setattr(BillingCore, "get_loan", explode)
            metadata = (*bearer(access_token), ("x-request-id", REQUEST_ID))
            with pytest.raises(grpc.RpcError) as raised:
                api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id=LOAN_ID), metadata=metadata)
            assert raised.value.code() == grpc.StatusCode.INTERNAL
            # Refusals are answers, not errors: nothing is reported for them.
            with pytest.raises(grpc.RpcError) as refused:
                api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id=LOAN_ID))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            monkeypatch.undo()
            with pytest.raises(grpc.RpcError) as missing:
                api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id=LOAN_ID), metadata=metadata)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        # Stopping the server flushed the SDK's queue.
        events = ingest.events()
        raw = ingest.raw

    assert len(events) == 1, events
    event = events[0]
    assert event["tags"] == {
        "method": GET_LOAN,
        "request_id": REQUEST_ID,
        "worker": "0",
        "pid": str(os.getpid()),
    }
    assert event["release"] == f"lending-grpc@{version('lending-grpc')}"
    assert event["environment"] == "staging"
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert exception["value"].startswith("(message withheld")
    frames = exception["stacktrace"]["frames"]
    assert frames[-1]["function"] == "explode" and frames[-1]["lineno"] > 0
    assert all(
        set(frame) <= {"filename", "abs_path", "module", "function", "lineno", "colno", "in_app"}
        for frame in frames
    )
    assert not {"request", "user", "extra", "breadcrumbs", "modules"} & set(event)
    # The real SDK sent it, to the DSN's project, authenticated with the DSN's key.
    path, headers, _body = ingest.requests[0]
    assert path == "/api/1/envelope/"
    assert f"sentry_key={PUBLIC_KEY}" in headers["X-Sentry-Auth"]

    header, payload, signature = access_token.split(".")
    leaks = _leaks(
        raw,
        {
            "email": EMAIL,
            "email local part": EMAIL.split("@")[0],
            "access token payload": payload,
            "access token signature": signature,
            "refresh token": refresh_token,
            "password": PASSWORD,
            "request body (loan id)": LOAN_ID,
            "user id": user.user_id,
            "username": "grace",
            "peer address": "ipv4:",
            "JWT key": TEST_SECRET_KEY,
            "data key": TEST_DATA_KEY,
        },
    )
    assert leaks == [], f"sent to Sentry: {leaks}"
    # The service's own log keeps the whole story under the same request id.
    logged = [r for r in caplog.records if r.exc_info and "unexpected error" in r.getMessage()]
    assert len(logged) == 1 and EMAIL in str(logged[0].exc_info[1])


_NO_DSN_SCRIPT = textwrap.dedent(
    """
    import sys
    import grpc
    from lending.v1 import auth_pb2, auth_pb2_grpc
    from lending_grpc.config import Settings
    from lending_grpc.core.auth import AuthCore
    from lending_grpc.server import create_server

    def explode(*args, **kwargs):
        raise RuntimeError("unexpected")

    AuthCore.register = explode
    running = create_server(Settings(
        listen="127.0.0.1:0", database_url=sys.argv[1], secret_key=sys.argv[2], data_key=sys.argv[3],
        insecure_fast_password_hash=True,
    ))
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        try:
            auth_pb2_grpc.AuthServiceStub(channel).Register(
                auth_pb2.RegisterRequest(username="ada", password="x" * 12, email="ada@example.com"))
        except grpc.RpcError as err:
            print(err.code().name)
    running.stop(0)
    loaded = [name for name in sys.modules if name.startswith("sentry") or name.endswith("error_tracking")]
    print(sorted(loaded))
    """
)


def test_without_a_dsn_sentry_is_not_even_imported(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _NO_DSN_SCRIPT, sqlite_url(tmp_path), TEST_SECRET_KEY, TEST_DATA_KEY],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={
            name: value for name, value in os.environ.items() if not name.startswith(("LENDING_", "SENTRY_"))
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["INTERNAL", "[]"]


@pytest.mark.parametrize(
    "dsn",
    [
        "not a dsn",
        "ftp://key@sentry.example.com/1",
        "https://sentry.example.com/1",
        "https://key@/1",
        "https://key@host/",
    ],
)
def test_a_malformed_dsn_is_refused_without_repeating_it(dsn):
    with pytest.raises(ConfigError, match="LENDING_SENTRY_DSN must look like") as raised:
        load_settings({}, {"LENDING_SENTRY_DSN": dsn}, None)
    assert dsn not in str(raised.value)


@pytest.mark.parametrize("environment", ["has space", "a/b", "None", "x" * 65])
def test_an_environment_sentry_would_refuse_is_refused_at_start(environment):
    with pytest.raises(ConfigError, match="LENDING_SENTRY_ENVIRONMENT"):
        load_settings({}, {"LENDING_SENTRY_ENVIRONMENT": environment}, None)


def test_the_dsn_is_logged_without_its_key():
    assert redact_dsn("https://abc123:s3cret@o1.ingest.sentry.io/42") == "https://***@o1.ingest.sentry.io/42"


_PATCH_REGISTER = textwrap.dedent(
    """
    # Loaded by every interpreter of this test's server (PYTHONPATH): Register fails unexpectedly,
    # quoting the request's personal data as careless code might.
    from lending_grpc.core.auth import AuthCore

    def register(self, actor, username, password, email):
        raise RuntimeError(f"cannot register {username} <{email}> with password {password}")

    AuthCore.register = register
    """
)


@pytest.mark.slow
def test_every_worker_of_a_supervisor_reports_with_its_own_tags(tmp_path):
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "sitecustomize.py").write_text(_PATCH_REGISTER)
    calls = 6
    with SentryIngest() as ingest:
        server = ServerProcess(
            tmp_path / "workers.db",
            "--workers",
            "2",
            env={"LENDING_SENTRY_DSN": ingest.dsn, "PYTHONPATH": str(patches)},
        )
        try:
            pids = re.search(r"pids ([\d ]+)", "".join(server.log)).group(1).split()
            request_ids = []
            for number in range(calls):  # a channel each: the kernel spreads connections over the workers
                with grpc.insecure_channel(server.target) as channel:
                    request_id = f"req-worker-{number}"
                    with pytest.raises(grpc.RpcError) as raised:
                        auth_pb2_grpc.AuthServiceStub(channel).Register(
                            auth_pb2.RegisterRequest(
                                username=f"user{number}", password=PASSWORD, email=f"user{number}@example.com"
                            ),
                            metadata=(("x-request-id", request_id),),
                        )
                    assert raised.value.code() == grpc.StatusCode.INTERNAL
                    request_ids.append(request_id)
            events = ingest.wait_for_events(calls)
        finally:
            assert server.terminate() == 0
        raw = ingest.raw
    assert sorted(event["tags"]["request_id"] for event in events) == sorted(request_ids)
    for event in events:
        tags = event["tags"]
        assert tags["method"] == "/lending.v1.AuthService/Register"
        assert (tags["worker"], tags["pid"]) in {("0", pids[0]), ("1", pids[1])}
        assert event["release"] == f"lending-grpc@{version('lending-grpc')}"
        assert event["environment"] == "production"  # the SDK's default
    assert b"@example.com" not in raw and PASSWORD.encode() not in raw and b"user0" not in raw
    # Only the first worker says where errors go, and never with the DSN's key.
    log = "".join(server.log)
    assert log.count("INTERNAL errors are reported to Sentry at http://***@127.0.0.1") == 1
    assert PUBLIC_KEY not in log


def test_an_event_is_rebuilt_from_allowed_fields_only():
    from lending_grpc.server.error_tracking import WITHHELD, scrub

    event = {
        "event_id": "e1",
        "level": "error",
        "release": "lending-grpc@1",
        "tags": {"method": "/m", "request_id": "r", "worker": "0", "pid": 7, "email": EMAIL},
        "user": {"email": EMAIL, "ip_address": "10.0.0.1"},
        "request": {"data": EMAIL},
        "extra": {"sys.argv": [EMAIL]},
        "breadcrumbs": {"values": [{"message": EMAIL}]},
        "contexts": {"trace": {"trace_id": "t", "span_id": "s"}, "rpc": {"email": EMAIL}},
        "exception": {
            "values": [
                {
                    "type": "KeyError",
                    "value": EMAIL,
                    "stacktrace": {
                        "frames": [
                            {"function": "f", "lineno": 3, "vars": {"email": EMAIL}, "context_line": EMAIL}
                        ]
                    },
                }
            ]
        },
    }
    clean = scrub(event)
    assert EMAIL not in json.dumps(clean)
    assert clean["tags"] == {"method": "/m", "request_id": "r", "worker": "0", "pid": "7"}
    assert clean["exception"]["values"][0]["value"] == WITHHELD
    assert clean["exception"]["values"][0]["stacktrace"]["frames"] == [{"function": "f", "lineno": 3}]
    assert clean["contexts"] == {"trace": {"trace_id": "t", "span_id": "s"}}
