"""The `lending-grpc serve` process: start-up, health, reflection, signals, draining, SIGKILL and restart."""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import TEST_DATA_KEY, TEST_SECRET_KEY, ServerProcess, child_env, run_cli, user_on
from lending.v1 import billing_pb2, billing_pb2_grpc

from lending_grpc.core.storage.database import sqlite_path

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("nonsense", "expected HOST:PORT, e.g. 127.0.0.1:50051"),
        ("host:notaport", "the port must be a number from 0 to 65535"),
        (":99999", "the port must be a number from 0 to 65535"),
        ("127.0.0.1:99999", "the port must be a number from 0 to 65535"),  # gRPC would bind port 34463
        (":50051", "the host is missing, e.g. 127.0.0.1:50051"),
        ("::1:50051", "write an IPv6 address in brackets, e.g. [::1]:50051"),
    ],
)
def test_a_malformed_listen_address_is_refused_before_anything_is_created(tmp_path, listen, problem):
    url = f"sqlite:///{tmp_path / 'data' / 'l.db'}"
    expected = f"lending-grpc: configuration error: LENDING_LISTEN {listen!r}: {problem}\n"
    by_flag = run_cli("serve", "--listen", listen, "--database-url", url, cwd=tmp_path)
    by_env = run_cli("serve", cwd=tmp_path, LENDING_LISTEN=listen, LENDING_DATABASE_URL=url)
    # No generated keys either: they would be made beside the database.
    no_keys = {"LENDING_SECRET_KEY": "", "LENDING_DATA_KEY": ""}
    generated = run_cli("serve", "--listen", listen, "--database-url", url, cwd=tmp_path, **no_keys)
    for result in (by_flag, by_env, generated):
        assert (result.returncode, result.stderr) == (2, expected)
    assert not (tmp_path / "data").exists()


def test_an_unknown_setting_in_the_environment_stops_the_server(tmp_path):
    """The typo LENDING_SECRETKEY would otherwise start the service on a generated key."""
    url = f"sqlite:///{tmp_path / 'data' / 'l.db'}"
    result = run_cli(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        url,
        cwd=tmp_path,
        LENDING_SECRET_KEY="",
        LENDING_SECRETKEY=TEST_SECRET_KEY,
    )
    assert (result.returncode, result.stderr) == (
        2,
        "lending-grpc: configuration error: environment: unknown setting LENDING_SECRETKEY "
        "(did you mean LENDING_SECRET_KEY?)\n",
    )
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_address_in_use_is_told_apart_and_nothing_is_created(tmp_path, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        url = f"sqlite:///{tmp_path / 'data' / 'l.db'}"
        no_keys = {"LENDING_SECRET_KEY": "", "LENDING_DATA_KEY": ""}
        result = run_cli(
            "serve", "--listen", address, "--database-url", url, "--workers", workers, cwd=tmp_path, **no_keys
        )
        # One line: ours, without gRPC's own `E1130 ... add_port.cc` line before it.
        assert (result.returncode, result.stderr) == (
            1,
            f"lending-grpc: cannot listen on {address}: already in use (is another server running there?)\n",
        )
        metrics = run_cli(
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            address,
            "--workers",
            workers,
            cwd=tmp_path,
        )
        assert (metrics.returncode, metrics.stderr) == (
            1,
            f"lending-grpc: cannot serve metrics on {address}: already in use "
            "(is another server running there?)\n",
        )
    assert not (tmp_path / "data").exists()


_ADD_A_TAKEN_PORT = """
import socket
import lending_grpc.cli  # what `lending-grpc` imports first
import grpc
from concurrent import futures
taken = socket.socket()
taken.bind(("127.0.0.1", 0))
taken.listen()
server = grpc.server(futures.ThreadPoolExecutor(1), options=[("grpc.so_reuseport", 0)])
try:
    server.add_insecure_port(f"127.0.0.1:{taken.getsockname()[1]}")
except RuntimeError:
    print("refused")
"""


def test_grpc_core_log_lines_stay_off_the_terminal_unless_asked_for(tmp_path):
    env = {name: value for name, value in os.environ.items() if not name.startswith("GRPC_")}
    quiet = subprocess.run(
        [sys.executable, "-c", _ADD_A_TAKEN_PORT], capture_output=True, text=True, env=env, timeout=60
    )
    assert (quiet.stdout, quiet.stderr) == ("refused\n", "")
    asked = subprocess.run(
        [sys.executable, "-c", _ADD_A_TAKEN_PORT],
        capture_output=True,
        text=True,
        env={**env, "GRPC_VERBOSITY": "ERROR"},
        timeout=60,
    )
    assert asked.stdout == "refused\n" and "add_port.cc" in asked.stderr


@pytest.mark.slow
def test_make_run_drains_once_on_a_sigterm_to_its_process_group(tmp_path):
    """make passes the SIGTERM its process group received on to the server: one drain, not a hurry."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    env = child_env(LENDING_LISTEN="127.0.0.1:0", LENDING_DATABASE_URL=f"sqlite:///{tmp_path / 'run.db'}")
    # -o: the virtualenv running this test counts as set up (no pip install in a test).
    command = [make, "--no-print-directory", "-o", ".venv/.run-installed", "run"]
    command.append(f"BIN={Path(sys.executable).parent}")
    for _ in range(3):  # the two deliveries race each other: give a regression several chances
        run = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, as a terminal or a supervisor gives it
        )
        log = []
        try:
            for line in run.stderr:
                log.append(line)
                if "serving on" in line:
                    break
            os.killpg(run.pid, signal.SIGTERM)
            log.extend(run.stderr)
            run.wait(30)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
        text = "".join(log)
        assert text.count("received SIGTERM: draining") == 1, text
        assert "stopping now" not in text and text.rstrip().endswith("lending-grpc stopped"), text
        # make itself ends by the signal it was sent, once its child has stopped.
        assert run.returncode == -signal.SIGTERM


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


_SYS_TGKILL = 234  # x86-64 Linux: a signal to one thread of a process


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64" or sys.platform != "linux", reason="tgkill number")
def test_a_sigterm_that_lands_on_any_thread_drains_the_server(tmp_path):
    """The kernel may hand a process's signal to any of its threads (it does, when the main thread
    has one pending already): the server must drain all the same, not sleep on in the main thread."""
    server = ServerProcess(tmp_path / "t.db")
    pid = server.proc.pid
    others = sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid)
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(_SYS_TGKILL, pid, others[-1], signal.SIGTERM) == 0
    try:
        assert server.proc.wait(20) == 0
    finally:
        if server.proc.poll() is None:
            server.kill()
    log = "".join(server.log)
    assert "received SIGTERM: draining" in log and "lending-grpc stopped" in log


@pytest.mark.slow
@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_a_sigint_while_draining_stops_at_once_a_repeated_sigterm_does_not(tmp_path, first):
    server = ServerProcess(tmp_path / "s.db", "--drain-delay-seconds", "60", "--shutdown-grace-seconds", "60")
    server.proc.send_signal(first)
    time.sleep(0.5)
    server.proc.terminate()  # as `make run` forwards the SIGTERM its process group already got
    time.sleep(0.5)
    assert server.proc.poll() is None, "a repeated SIGTERM cut the drain short"
    started = time.monotonic()
    server.proc.send_signal(signal.SIGINT)  # a second Ctrl-C
    assert server.proc.wait(20) == 0
    assert time.monotonic() - started < 10
    log = "".join(server.log)
    assert f"received {first.name}: draining" in log
    assert "received SIGINT again: stopping now, cancelling in-flight RPCs" in log


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
