"""The `lending-grpc serve` process: start-up, health, reflection, signals, draining, SIGKILL and restart."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import TEST_DATA_KEY, TEST_SECRET_KEY, ServerProcess, run_cli, user_on
from lending.v1 import billing_pb2, billing_pb2_grpc

from lending_grpc.core.storage.database import sqlite_path


def _list_services(channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    return {service.name for response in responses for service in response.list_services_response.service}


@pytest.mark.slow
def test_serve_reports_serving_lists_services_and_drains_on_sigterm(tmp_path):
    server = ServerProcess(tmp_path / "p.db")
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "lending.v1.BillingService", "lending.v1.AuthService", "lending.v1.AuditService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        assert _list_services(channel) == {
            "lending.v1.AuthService",
            "lending.v1.BillingService",
            "lending.v1.AuditService",
            "lending.v1.EventService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
    assert server.terminate() == 0
    log = "".join(server.log)
    assert "received SIGTERM: draining" in log and "lending-grpc stopped" in log
    assert TEST_SECRET_KEY not in log and TEST_DATA_KEY not in log


def test_reflection_answers_under_its_stable_v1_name_too(server):
    """Clients that speak only grpc.reflection.v1 (v1alpha is deprecated) find the services."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        info = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="lending.v1.BillingService"),
        ]
        listed, described = list(info(iter(requests), timeout=10))
    names = {service.name for service in listed.list_services_response.service}
    assert {"lending.v1.BillingService", "lending.v1.EventService"} <= names
    assert described.file_descriptor_response.file_descriptor_proto  # billing.proto and what it imports


def test_health_turns_not_serving_when_draining(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        server.health.enter_graceful_shutdown()
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_serve_refuses_a_short_secret_key(tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    result = run_cli(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        url,
        cwd=tmp_path,
        LENDING_SECRET_KEY="too-short",
    )
    assert result.returncode == 2
    assert "at least 32 bytes" in result.stderr and "too-short" not in result.stderr


def test_startup_problems_are_one_line_errors_not_tracebacks(tmp_path):
    def serve(*args):
        return run_cli("serve", *args, cwd=tmp_path)

    url = f"sqlite:///{tmp_path / 'a.db'}"
    bad_listen = serve("--listen", "nonsense", "--database-url", url)
    assert bad_listen.returncode == 1 and "cannot listen on nonsense" in bad_listen.stderr
    assert "Traceback" not in bad_listen.stderr
    (tmp_path / ".env").write_text("LENDING_LISTN=127.0.0.1:1\n")
    unknown = serve("--database-url", url)
    assert (
        unknown.returncode == 2
        and "unknown setting LENDING_LISTN (did you mean LENDING_LISTEN?)" in unknown.stderr
    )
    (tmp_path / ".env").unlink()
    unwritable = serve("--listen", "127.0.0.1:0", "--database-url", "sqlite:////proc/no/such/dir/x.db")
    assert unwritable.returncode == 1 and "cannot create the database file" in unwritable.stderr
    assert "Traceback" not in unwritable.stderr
    (tmp_path / "junk.db").write_bytes(b"this is not a database file at all" * 100)
    junk = serve("--listen", "127.0.0.1:0", "--database-url", f"sqlite:///{tmp_path / 'junk.db'}")
    assert junk.returncode == 1 and "file is not a database" in junk.stderr
    assert "Traceback" not in junk.stderr


def test_database_is_private_to_its_owner(tmp_path):
    server = ServerProcess(tmp_path / "private" / "p.db")
    try:
        assert stat.S_IMODE((tmp_path / "private" / "p.db").stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700
    finally:
        server.terminate()


@pytest.mark.slow
def test_health_says_not_serving_during_the_drain_delay(tmp_path):
    server = ServerProcess(tmp_path / "d.db", "--drain-delay-seconds", "3")
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        server.proc.terminate()
        deadline = time.monotonic() + 2
        status = None
        while time.monotonic() < deadline:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            time.sleep(0.05)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert server.proc.wait(20) == 0


@pytest.mark.slow
def test_a_second_signal_stops_at_once(tmp_path):
    server = ServerProcess(tmp_path / "s.db", "--drain-delay-seconds", "60", "--shutdown-grace-seconds", "60")
    server.proc.terminate()
    time.sleep(0.5)
    started = time.monotonic()
    server.proc.terminate()
    assert server.proc.wait(20) == 0
    assert time.monotonic() - started < 10
    assert "again: stopping now" in "".join(server.log)


def test_one_process_serves_one_database(server, tmp_path):
    from lending_grpc.core.storage.database import DatabaseError, open_database

    with pytest.raises(DatabaseError, match="already serves a database"):
        open_database(f"sqlite:///{tmp_path / 'second.db'}")


# == SIGKILL during a burst of payments loses no acknowledged write, and retries never pay twice ===


LOANS = 4
WEEKS = 50
KILL_AFTER_ACKS = 60


@pytest.mark.slow
def test_sigkill_mid_burst_keeps_every_acknowledged_payment(database_url):
    server = ServerProcess(database_url)
    metadata = user_on(server.target)
    with grpc.insecure_channel(server.target) as channel:
        billing = billing_pb2_grpc.BillingServiceStub(channel)
        for n in range(LOANS):
            billing.CreateLoan(
                billing_pb2.CreateLoanRequest(loan_id=f"loan-{n}", principal_amount="5000000"),
                metadata=metadata,
            )

    acknowledged: dict[str, billing_pb2.Payment] = {}
    sent: dict[str, str] = {}  # request_id -> loan_id, acknowledged or not
    lock = threading.Lock()
    killed = threading.Event()

    def pay(i: int) -> None:
        loan_id = f"loan-{i % LOANS}"
        request_id = str(uuid.uuid4())
        with lock:
            if killed.is_set():
                return
            sent[request_id] = loan_id
        with grpc.insecure_channel(server.target) as ch:
            try:
                payment = billing_pb2_grpc.BillingServiceStub(ch).MakePayment(
                    billing_pb2.MakePaymentRequest(
                        loan_id=loan_id, amount="110000.00", request_id=request_id
                    ),
                    metadata=metadata,
                    timeout=10,
                )
            except grpc.RpcError:
                return  # unacknowledged: may or may not have been stored
        with lock:
            acknowledged[request_id] = payment
            if len(acknowledged) >= KILL_AFTER_ACKS and not killed.is_set():
                killed.set()
                server.kill()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(pay, range(LOANS * WEEKS)))
    assert killed.is_set(), "the burst ended before the kill"
    assert len(acknowledged) >= KILL_AFTER_ACKS

    restarted = ServerProcess(database_url)
    try:
        with grpc.insecure_channel(restarted.target) as channel:
            billing = billing_pb2_grpc.BillingServiceStub(channel)
            stored = {}
            for n in range(LOANS):
                loan_id = f"loan-{n}"
                payments = billing.ListPayments(
                    billing_pb2.ListPaymentsRequest(loan_id=loan_id, page_size=500), metadata=metadata
                ).payments
                loan = billing.GetLoan(billing_pb2.GetLoanRequest(loan_id=loan_id), metadata=metadata)
                paid = sum(int(p.amount.replace(".", "")) for p in payments)
                assert paid == int(loan.paid_amount.replace(".", ""))
                assert paid + int(loan.outstanding_balance.replace(".", "")) == 550_000_000
                assert sum(p.last_week - p.first_week + 1 for p in payments) == loan.installments_paid
                assert sorted(p.first_week for p in payments) == list(range(1, loan.installments_paid + 1))
                stored.update({p.request_id: p for p in payments})
            # Every acknowledged payment survived, exactly as acknowledged.
            for request_id, payment in acknowledged.items():
                assert stored[request_id].payment_id == payment.payment_id
                assert stored[request_id].first_week == payment.first_week
            # Resending every request id pays nothing twice.
            before = len(stored)
            newly_paid = 0
            for request_id, loan_id in sent.items():
                again = billing.MakePayment(
                    billing_pb2.MakePaymentRequest(
                        loan_id=loan_id, amount="110000.00", request_id=request_id
                    ),
                    metadata=metadata,
                )
                if request_id in stored:
                    assert again.payment_id == stored[request_id].payment_id
                else:
                    newly_paid += 1
            total_payments = sum(
                len(
                    billing.ListPayments(
                        billing_pb2.ListPaymentsRequest(loan_id=f"loan-{n}", page_size=500), metadata=metadata
                    ).payments
                )
                for n in range(LOANS)
            )
            assert total_payments == before + newly_paid == len(sent)
    finally:
        assert restarted.terminate() == 0
    db_path = sqlite_path(database_url)
    if db_path is not None:
        with sqlite3.connect(db_path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
