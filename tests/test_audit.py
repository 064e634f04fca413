"""The audit trail over real gRPC: every change and security event, paged for operators, exported."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from helpers import (
    assert_invalid,
    audit_rows,
    bearer,
    call_error,
    grant_operator,
    login,
    register,
    run_cli,
    running_api,
    tamper,
)
from lending.v1 import audit_pb2, auth_pb2, billing_pb2

from lending_grpc.core.storage.models import AuditEvent

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def story(tmp_path, database_url):
    """Alice's life in calls (one of each audited kind), with an operator to read it back."""
    with running_api(tmp_path, database_url) as api:
        alice = register(api, "alice", email="alice.secret@example.com").user_id
        register(api, "olga")
        grant_operator(api, "olga")
        call_error(api.auth.Login, auth_pb2.LoginRequest(username="alice", password="not her password"))
        tokens = login(api, "alice")
        md = (*bearer(tokens.access_token), ("x-request-id", "req-create-1"))
        api.billing.CreateLoan(
            billing_pb2.CreateLoanRequest(loan_id="L1", principal_amount="5000000"), metadata=md
        )
        api.billing.MakePayment(
            billing_pb2.MakePaymentRequest(loan_id="L1", amount="110000.00", request_id="pay-1"), metadata=md
        )
        call_error(
            api.billing.MakePayment,
            billing_pb2.MakePaymentRequest(loan_id="L1", amount="123.45"),
            metadata=md,
        )
        fresh = api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=tokens.refresh_token))
        call_error(api.auth.RefreshToken, auth_pb2.RefreshTokenRequest(refresh_token=tokens.refresh_token))
        olga = bearer(login(api, "olga").access_token)
        yield api, alice, olga, fresh


def _all(api, metadata, **filters) -> list:
    events, token = [], ""
    while True:
        page = api.audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(page_size=3, page_token=token, **filters), metadata=metadata
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


def test_every_change_and_security_event_is_recorded(story):
    api, alice, olga, _fresh = story
    events = _all(api, olga, user_id=alice)
    assert [(e.event, e.outcome, e.loan_id) for e in events] == [
        ("user.register", "ok", ""),
        ("login.failure", "refused", ""),
        ("login.success", "ok", ""),
        ("loan.create", "ok", "L1"),
        ("payment.accepted", "ok", "L1"),
        ("payment.refused", "refused", "L1"),
        ("token.refresh", "ok", ""),
        ("token.reuse_detected", "refused", ""),
    ]
    by_event = {e.event: e for e in events}
    create = by_event["loan.create"]
    assert (create.actor, create.subject, create.request_id) == (alice, alice, "req-create-1")
    assert create.rpc == "/lending.v1.BillingService/CreateLoan"
    assert re.fullmatch(r"ipv[46]:.*127\.0\.0\.1.*:\d+|ipv6:\[::1\]:\d+", create.peer), create.peer
    assert json.loads(create.summary) == {
        "principal_cents": 500000000,
        "rate_e4": 1000,
        "term_weeks": 50,
        "start_date": json.loads(create.summary)["start_date"],
        "total_cents": 550000000,
    }
    paid = json.loads(by_event["payment.accepted"].summary)
    assert (paid["amount_cents"], paid["weeks"], paid["outstanding_after_cents"], paid["request_id"]) == (
        11000000,
        [1, 1],
        539000000,
        "pay-1",
    )
    refused = json.loads(by_event["payment.refused"].summary)
    assert (refused["amount"], refused["reason"]) == ("123.45", "PaymentNotAccepted")
    assert by_event["login.failure"].rpc == "/lending.v1.AuthService/Login"
    assert len(by_event["user.register"].request_id) == 32  # made by the server: none was sent
    sequences = [e.sequence for e in events]
    assert sequences == sorted(sequences)


def test_audit_rows_hold_no_personal_data_or_secrets(story):
    _api, _alice, _olga, fresh = story
    text = json.dumps(audit_rows())
    for secret in ("alice.secret@example.com", '"alice"', "correct horse battery", "not her password"):
        assert secret not in text
    assert fresh.refresh_token not in text and fresh.access_token not in text


def test_pagination_filters_and_tokens(story):
    api, alice, olga, _fresh = story
    everything = _all(api, olga)
    assert len(everything) == len(audit_rows()) == AuditEvent.select().count()
    first = api.audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(page_size=2), metadata=olga)
    assert len(first.events) == 2 and first.next_page_token
    # A token is bound to its filters, and cannot be forged.
    other_filter = audit_pb2.ListAuditEventsRequest(page_token=first.next_page_token, user_id=alice)
    assert_invalid(call_error(api.audit.ListAuditEvents, other_filter, metadata=olga), "page_token")
    forged = audit_pb2.ListAuditEventsRequest(page_token=tamper(first.next_page_token))
    assert_invalid(call_error(api.audit.ListAuditEvents, forged, metadata=olga), "page_token")
    assert [e.event for e in _all(api, olga, loan_id="L1")] == [
        "loan.create",
        "payment.accepted",
        "payment.refused",
    ]
    middle = everything[3].event_time
    later = _all(api, olga, start_time=middle)
    assert later[0].sequence <= everything[3].sequence and later[-1].sequence == everything[-1].sequence
    assert _all(api, olga, start_time=Timestamp(seconds=4_000_000_000)) == []
    backwards = audit_pb2.ListAuditEventsRequest(start_time=middle, end_time=Timestamp(seconds=1))
    assert_invalid(call_error(api.audit.ListAuditEvents, backwards, metadata=olga), "end_time")
    negative = audit_pb2.ListAuditEventsRequest(page_size=-1)
    assert_invalid(call_error(api.audit.ListAuditEvents, negative, metadata=olga), "page_size")
    nul = audit_pb2.ListAuditEventsRequest(user_id="a\x00b")
    assert_invalid(call_error(api.audit.ListAuditEvents, nul, metadata=olga), "user_id")


def test_audit_export_writes_json_lines(story, tmp_path, database_url):
    result = run_cli("audit", "export", "--database-url", database_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    rows = audit_rows()
    assert [(r["seq"], r["event"]) for r in lines] == [(r["id"], r["event"]) for r in rows]
    keys = "seq time time_us event outcome actor subject peer rpc request_id loan_id summary"
    assert lines[0]["time"].endswith("Z") and set(lines[0]) == set(keys.split())
    future = run_cli("audit", "export", "--since", "2100-01-01", "--database-url", database_url, cwd=tmp_path)
    assert (future.returncode, future.stdout) == (0, "")
    bad = run_cli("audit", "export", "--since", "yesterday", "--database-url", database_url, cwd=tmp_path)
    assert bad.returncode == 2 and "not an ISO 8601 date or time" in bad.stderr


def test_the_service_has_no_path_that_changes_audit_rows():
    """Static guard: no UPDATE or DELETE of AuditEvent anywhere in the service's code."""
    source = "\n".join(p.read_text() for p in (ROOT / "lending_grpc").rglob("*.py"))
    assert re.search(r"AuditEvent\s*\.\s*(update|delete|replace|insert_many|truncate)", source) is None
    assert re.search(r"(UPDATE|DELETE FROM)\s+\"?audit_event", source) is None


def test_postgresql_refuses_changes_to_audit_rows(story, database_url):
    if not database_url.startswith("postgres"):
        pytest.skip("the append-only trigger is PostgreSQL's; SQLite has none")
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        for sql in (
            "UPDATE audit_event SET outcome = 'ok'",
            "DELETE FROM audit_event",
            "TRUNCATE audit_event",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(sql)
        count = conn.execute("SELECT count(*) FROM audit_event").fetchone()[0]
    assert count == len(audit_rows()) > 0


def test_refused_requests_are_audited_but_change_nothing_else(api, alice):
    before = AuditEvent.select().count()
    err = call_error(
        api.billing.MakePayment, billing_pb2.MakePaymentRequest(loan_id="nope", amount="1.00"), metadata=alice
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    refused = audit_rows()[before:]
    assert [(r["event"], r["loan_id"], r["summary"]["reason"]) for r in refused] == [
        ("payment.refused", "nope", "NotFound")
    ]


def test_hostile_text_in_a_refused_request_is_audited_safely(api, alice):
    """NUL and control characters (PostgreSQL refuses NUL in text) end up printable in the trail."""
    hostile = "L\x00\x1b[31m1"
    err = call_error(
        api.billing.MakePayment,
        billing_pb2.MakePaymentRequest(loan_id=hostile, amount="1\x00.00"),
        metadata=alice,
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    row = audit_rows(event="payment.refused")[-1]
    assert row["loan_id"] == "L??[31m1" and row["summary"]["amount"] == "1\x00.00"
    assert row["summary"]["reason"] == "InvalidArgument"
