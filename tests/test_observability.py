"""Observability: the Prometheus endpoint, the access log, JSON logs and request ids."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import ServerProcess, call_error, make_settings, running_api, today
from lending.v1 import auth_pb2, auth_pb2_grpc, billing_pb2, billing_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from lending_grpc.api import call as calls
from lending_grpc.api.metrics import RpcMetrics, worker_address
from lending_grpc.api.pipeline import safe_request_id
from lending_grpc.core import portfolio_stats
from lending_grpc.logs import JsonFormatter, RequestIdFilter
from lending_grpc.server import create_server

BILLING = "lending.v1.BillingService"


def test_the_metrics_page_has_a_row_for_every_metric():
    """docs/operations/metrics-and-logs.md lists every series the service and the relay export."""
    pytest.importorskip("nats")  # the relay's module needs nats-py (the nats extra)
    from lending_grpc.relay.jetstream import RelayMetrics

    registry = CollectorRegistry()
    RpcMetrics(registry)
    RelayMetrics(registry)
    families = registry.collect()
    names = {f"{family.name}_total" if family.type == "counter" else family.name for family in families}
    names |= set(re.findall(r'"(lending_[a-z0-9_]+)"', Path(portfolio_stats.__file__).read_text()))
    page = Path(__file__).resolve().parent.parent / "docs" / "operations" / "metrics-and-logs.md"
    rows = set(re.findall(r"^\| `([a-z0-9_]+)` \|", page.read_text(), re.MULTILINE))
    assert names - rows == set()


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample of the /metrics page, keyed by (name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def rpc_labels(method: str, **extra: str) -> frozenset:
    return frozenset({"grpc_type": "unary", "grpc_service": BILLING, "grpc_method": method, **extra}.items())


def test_metrics_endpoint_counts_rpcs_by_code_and_the_portfolio(tmp_path):
    with running_api(
        tmp_path / "m",
        metrics_listen="127.0.0.1:0",
        rate_limit_user_per_second=0.001,
        rate_limit_user_burst=8,
    ) as api:
        running, auth, billing = api.server, api.auth, api.billing
        auth.Register(
            auth_pb2.RegisterRequest(username="ada", password="correct horse battery", email="a@b.co")
        )
        tokens = auth.Login(auth_pb2.LoginRequest(username="ada", password="correct horse battery"))
        md = (("authorization", f"Bearer {tokens.access_token}"),)
        billing.CreateLoan(
            billing_pb2.CreateLoanRequest(loan_id="OLD", principal_amount="1000", start_date="2020-01-06"),
            metadata=md,
        )
        billing.CreateLoan(
            billing_pb2.CreateLoanRequest(
                loan_id="NEW", principal_amount="1000", start_date=today().isoformat()
            ),
            metadata=md,
        )
        billing.MakePayment(billing_pb2.MakePaymentRequest(loan_id="NEW", amount="22.00"), metadata=md)
        for _ in range(2):
            call_error(billing.GetLoan, billing_pb2.GetLoanRequest(loan_id="missing"), metadata=md)
        call_error(billing.GetLoan, billing_pb2.GetLoanRequest(loan_id="bad id!"), metadata=md)
        call_error(billing.GetLoan, billing_pb2.GetLoanRequest(loan_id="OLD"))  # no token
        # The user's burst of 8 is used up (3 writes, 3 refused reads, 2 below): the 9th call is throttled.
        billing.GetLoan(billing_pb2.GetLoanRequest(loan_id="OLD"), metadata=md)
        billing.GetLoan(billing_pb2.GetLoanRequest(loan_id="OLD"), metadata=md)
        assert call_error(billing.ListLoans, billing_pb2.ListLoansRequest(), metadata=md).code() == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        samples = scrape(running.metrics.port)
    started, handled = "grpc_server_started_total", "grpc_server_handled_total"
    assert samples[(started, rpc_labels("CreateLoan"))] == 2
    assert samples[(started, rpc_labels("GetLoan"))] == 6
    assert samples[(handled, rpc_labels("CreateLoan", grpc_code="OK"))] == 2
    assert samples[(handled, rpc_labels("GetLoan", grpc_code="NotFound"))] == 2
    assert samples[(handled, rpc_labels("GetLoan", grpc_code="InvalidArgument"))] == 1
    assert samples[(handled, rpc_labels("GetLoan", grpc_code="Unauthenticated"))] == 1
    assert samples[(handled, rpc_labels("GetLoan", grpc_code="OK"))] == 2
    assert samples[(handled, rpc_labels("ListLoans", grpc_code="ResourceExhausted"))] == 1
    assert samples[("grpc_server_handling_seconds_count", rpc_labels("GetLoan"))] == 6
    assert samples[("grpc_server_handling_seconds_bucket", rpc_labels("GetLoan", le="+Inf"))] == 6
    login = frozenset(
        {"grpc_type": "unary", "grpc_service": "lending.v1.AuthService", "grpc_method": "Login"}.items()
    )
    assert samples[(started, login)] == 1
    # OLD started in 2020 and is far behind; NEW is current after paying its first week.
    assert samples[("lending_loans", frozenset())] == 2
    assert samples[("lending_payments", frozenset())] == 1
    assert samples[("lending_delinquent_loans", frozenset())] == 1


def test_metrics_are_off_by_default(server):
    assert server.metrics is None


def test_caller_request_ids_are_kept_only_when_safe():
    assert safe_request_id("abc-123") == "abc-123"
    assert safe_request_id("Root=1-5759e988-bd862e3fe1be46a994272793").startswith("Root=")
    for hostile in ("a b", "line\nbreak", "x" * 129, "", 'quote"', "{json}", "é", b"bytes"):
        generated = safe_request_id(hostile)
        assert re.fullmatch(r"[0-9a-f]{32}", generated), hostile
    assert re.fullmatch(r"[0-9a-f]{32}", safe_request_id(None))


def _wait_for(proc: ServerProcess, predicate, what: str) -> list[dict]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        entries = [json.loads(line) for line in list(proc.log)]
        if predicate(entries):
            return entries
        time.sleep(0.05)
    raise AssertionError(f"{what} never logged:\n" + "".join(proc.log))


@pytest.mark.slow
def test_json_logs_carry_the_request_id_returned_to_the_caller(tmp_path):
    proc = ServerProcess(tmp_path / "j.db", env={"LENDING_LOG_FORMAT": "json"})
    password, email = "correct horse battery", "grace@example.com"
    try:
        with grpc.insecure_channel(proc.target) as channel:
            auth, billing = (
                auth_pb2_grpc.AuthServiceStub(channel),
                billing_pb2_grpc.BillingServiceStub(channel),
            )
            user, call = auth.Register.with_call(
                auth_pb2.RegisterRequest(username="grace", password=password, email=email),
                metadata=(("x-request-id", "req-register-1"),),
            )
            assert ("x-request-id", "req-register-1") in call.initial_metadata()
            tokens = auth.Login(auth_pb2.LoginRequest(username="grace", password=password))
            md = (("authorization", f"Bearer {tokens.access_token}"),)
            err = call_error(
                billing.GetLoan,
                billing_pb2.GetLoanRequest(loan_id="L-404"),
                metadata=(*md, ("x-request-id", "trace-abc:42")),
            )
            assert err.code() == grpc.StatusCode.NOT_FOUND
            assert ("x-request-id", "trace-abc:42") in err.initial_metadata()
            # A hostile id is not echoed nor logged: the server makes its own and returns it.
            _, call = billing.ListLoans.with_call(
                billing_pb2.ListLoansRequest(), metadata=(*md, ("x-request-id", "evil id {} %s"))
            )
            generated = dict(call.initial_metadata())["x-request-id"]
            assert re.fullmatch(r"[0-9a-f]{32}", generated)
        entries = _wait_for(
            proc, lambda es: any(e.get("request_id") == generated for e in es), "the ListLoans access line"
        )
    finally:
        assert proc.terminate() == 0
    for entry in entries:  # one object per line, each with the basic fields
        assert {"time", "level", "logger", "message"} <= entry.keys()
    access = {e["request_id"]: e for e in entries if e["logger"] == "lending_grpc.access"}
    assert access["req-register-1"]["method"] == "/lending.v1.AuthService/Register"
    assert access["req-register-1"]["code"] == "OK"
    not_found = access["trace-abc:42"]
    assert (not_found["method"], not_found["code"], not_found["user"]) == (
        "/lending.v1.BillingService/GetLoan",
        "NOT_FOUND",
        user.user_id,
    )
    assert not_found["peer"].startswith("ipv4:127.0.0.1:") and isinstance(not_found["ms"], float)
    assert access[generated]["method"] == "/lending.v1.BillingService/ListLoans"
    assert len(access) == 4  # Register, Login (generated id), GetLoan, ListLoans
    everything = "".join(proc.log)
    for secret in (password, email, tokens.access_token, tokens.refresh_token, "evil"):
        assert secret not in everything


def test_each_worker_has_its_own_metrics_port_and_only_the_first_counts_the_portfolio(tmp_path):
    assert worker_address("0.0.0.0:9090", 0) == "0.0.0.0:9090"
    assert worker_address("0.0.0.0:9090", 3) == "0.0.0.0:9093"
    assert worker_address("[::1]:0", 2) == "[::1]:0"
    running = create_server(make_settings(tmp_path, metrics_listen="127.0.0.1:0"), worker_index=1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        names = {name for name, _labels in scrape(running.metrics.port)}
    finally:
        running.stop(0)
    assert "grpc_server_started_total" in names
    assert "lending_loans" not in names and "lending_delinquent_loans" not in names


@pytest.mark.slow
def test_worker_processes_serve_metrics_on_their_own_ports(tmp_path):
    proc = ServerProcess(tmp_path / "w.db", "--workers", "2", "--metrics-listen", "127.0.0.1:0")
    try:
        ports = [
            int(m.group(1)) for line in proc.log if (m := re.search(r"metrics on http://[^:]+:(\d+)/", line))
        ]
        assert len(set(ports)) == 2
        portfolio = ["lending_loans" in {name for name, _ in scrape(port)} for port in ports]
    finally:
        assert proc.terminate() == 0
    assert sorted(portfolio) == [False, True]  # counted by one worker only


def test_json_lines_stay_one_line_and_carry_the_request_id_and_exception():
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "bad\ninput\u2028%s", ("\x00",), exc_info)
    token = calls.enter(calls.Call(method="/x/y", request_id="req-1", peer="", started=0.0))
    try:
        RequestIdFilter().filter(record)
    finally:
        calls.leave(token)
    line = JsonFormatter().format(record)
    assert "\n" not in line and "\u2028" not in line
    entry = json.loads(line)
    assert entry["message"] == "bad\ninput\u2028\x00"
    assert entry["request_id"] == "req-1" and entry["level"] == "ERROR"
    assert entry["exception"].startswith("Traceback") and "ValueError: boom" in entry["exception"]


def test_the_audit_trail_records_the_request_id_returned_to_the_caller(tmp_path):
    with running_api(tmp_path) as api:
        auth = api.auth
        register = auth_pb2.RegisterRequest(username="erin", password="correct horse 1", email="e@x.co")
        auth.Register(register)
        wrong = auth_pb2.LoginRequest(username="erin", password="wrong password!")
        err = call_error(auth.Login, wrong, metadata=(("x-request-id", "trace-audit-1"),))
        assert ("x-request-id", "trace-audit-1") in err.initial_metadata()
        err = call_error(auth.Login, wrong)  # no id sent: the generated one is returned
        generated = dict(err.initial_metadata())["x-request-id"]
    with sqlite3.connect(tmp_path / "lending.db") as db:
        query = "SELECT request_id FROM audit_event WHERE event = 'login.failure' ORDER BY id"
        ids = [row[0] for row in db.execute(query)]
    assert ids == ["trace-audit-1", generated]


def test_access_log_has_one_line_per_rpc_without_secrets(api, caplog):
    from lending.v1 import auth_pb2

    caplog.set_level("INFO", logger="lending_grpc.access")
    api.auth.Register(
        auth_pb2.RegisterRequest(username="logme", password="s3cret-password", email="l@example.com")
    )
    tokens = api.auth.Login(auth_pb2.LoginRequest(username="logme", password="s3cret-password"))
    with pytest.raises(grpc.RpcError):
        api.auth.Login(auth_pb2.LoginRequest(username="logme", password="wrong-password"))
    lines = [r.getMessage() for r in caplog.records if r.name == "lending_grpc.access"]
    assert len(lines) == 3
    assert "method=/lending.v1.AuthService/Login code=UNAUTHENTICATED" in lines[2]
    assert "code=OK" in lines[0] and " ms=" in lines[0]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "s3cret-password" not in text and tokens.access_token not in text
