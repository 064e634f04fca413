"""The database goes away mid-burst and comes back: UNAVAILABLE meanwhile, nothing lost, recovery by itself.

A TCP proxy of the test's own sits between the service (two worker
processes) and PostgreSQL; cutting it resets every connection and refuses
new ones, as when the database host or its network goes down.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import CuttableProxy, PayingThreads, ServerProcess, child_env, metric_value, wait_until
from lending.v1 import auth_pb2, auth_pb2_grpc, billing_pb2, billing_pb2_grpc

pytestmark = pytest.mark.slow

THREADS = 8
WEEKLY = "110.00"  # 52,000.00 over 520 weeks at 10%: 110.00 a week
OUTAGE_S = 2.5
RECOVERY_BOUND_S = 1.0  # the bound: serving again within 1 s of the database's return


def _through(proxy: CuttableProxy, url: str) -> str:
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))


def _health(target: str, service: str = "") -> int | None:
    """One health check on a channel of its own (so, with workers, on any of them); None if no answer."""
    with grpc.insecure_channel(target) as channel:
        try:
            request = health_pb2.HealthCheckRequest(service=service)
            return health_pb2_grpc.HealthStub(channel).Check(request, timeout=1).status
        except grpc.RpcError:
            return None


def _all_say(target: str, status: int, checks: int = 6) -> bool:
    return all(_health(target) == status for _ in range(checks))


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


class _Burst(PayingThreads):
    """THREADS threads paying their own loan, each call on a channel of its own, until stopped."""

    def __init__(self, target: str, metadata) -> None:
        super().__init__(target, metadata, THREADS)
        self.calls: list[tuple[float, float, object, str, str]] = []  # start, end, outcome, request, loan

    def acknowledged(self) -> int:
        with self._lock:
            return sum(isinstance(outcome, billing_pb2.Payment) for _, _, outcome, _, _ in self.calls)

    def _run(self, n: int) -> None:
        loan_id = f"loan-{n}"
        count = 0
        while not self._stop.is_set():
            request_id = f"{loan_id}-{count}"
            count += 1
            started = time.monotonic()
            with grpc.insecure_channel(self.target) as channel:
                try:
                    outcome = billing_pb2_grpc.BillingServiceStub(channel).MakePayment(
                        billing_pb2.MakePaymentRequest(loan_id=loan_id, amount=WEEKLY, request_id=request_id),
                        metadata=self.metadata,
                        timeout=5,
                    )
                except grpc.RpcError as err:
                    outcome = err.code()
            with self._lock:
                self.calls.append((started, time.monotonic(), outcome, request_id, loan_id))
            if not isinstance(outcome, billing_pb2.Payment):
                time.sleep(0.02)  # a client's backoff: do not spin on a refused call


def test_postgresql_cut_mid_burst_then_restored(postgres):
    url = postgres.create()
    proxy = CuttableProxy(urlsplit(url).hostname, urlsplit(url).port or 5432)
    server = ServerProcess(
        _through(proxy, url),
        "--workers",
        "2",
        "--metrics-listen",
        "127.0.0.1:0",
        env={"LENDING_RATE_LIMIT_USER_PER_SECOND": "0", "LENDING_RATE_LIMIT_PEER_PER_SECOND": "0"},
    )
    try:
        metrics_ports = [
            int(port) for port in re.findall(r"metrics on http://[^:]+:(\d+)/", "".join(server.log))
        ]
        assert len(metrics_ports) == 2
        with grpc.insecure_channel(server.target) as channel:
            auth = auth_pb2_grpc.AuthServiceStub(channel)
            auth.Register(
                auth_pb2.RegisterRequest(username="outage", password="outage-password", email="o@e.com")
            )
            tokens = auth.Login(auth_pb2.LoginRequest(username="outage", password="outage-password"))
            metadata = (("authorization", f"Bearer {tokens.access_token}"),)
            billing = billing_pb2_grpc.BillingServiceStub(channel)
            for n in range(THREADS):
                billing.CreateLoan(
                    billing_pb2.CreateLoanRequest(
                        loan_id=f"loan-{n}", principal_amount="52000", term_weeks=520
                    ),
                    metadata=metadata,
                )

        burst = _Burst(server.target, metadata)
        burst.start()
        try:
            assert wait_until(lambda: burst.acknowledged() >= 100, 20) is not None
            cut_at = time.monotonic()
            proxy.cut()
            not_serving_s = wait_until(
                lambda: _all_say(server.target, health_pb2.HealthCheckResponse.NOT_SERVING), 2
            )
            assert not_serving_s is not None, "health still SERVING with the database cut off"
            # Each worker flips when one of its calls fails, or at its next periodic probe (5 s).
            both_down_s = wait_until(
                lambda: (
                    [metric_value(_scrape(port), "lending_database_reachable") for port in metrics_ports]
                    == [0, 0]
                ),
                6,
            )
            assert both_down_s is not None
            for service in ("lending.v1.BillingService", "lending.v1.AuthService", "lending.v1.AuditService"):
                assert _health(server.target, service) == health_pb2.HealthCheckResponse.NOT_SERVING
            # Liveness probes ask their own name: restarting the processes would not help.
            assert _health(server.target, "liveness") == health_pb2.HealthCheckResponse.SERVING
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - cut_at)))
            restored_at = time.monotonic()
            proxy.restore()
            serving_s = wait_until(lambda: _all_say(server.target, health_pb2.HealthCheckResponse.SERVING), 5)
            assert serving_s is not None and serving_s < RECOVERY_BOUND_S, serving_s
            time.sleep(1.5)
        finally:
            burst.stop()

        # Every call was answered OK or UNAVAILABLE; none INTERNAL, none hanging.
        codes = {
            outcome if not isinstance(outcome, billing_pb2.Payment) else "OK"
            for _, _, outcome, _, _ in burst.calls
        }
        assert codes <= {"OK", grpc.StatusCode.UNAVAILABLE}, codes
        during = [c for c in burst.calls if cut_at <= c[0] < restored_at]
        after = [c for c in burst.calls if c[0] >= restored_at]
        first_ok_s = min(
            end - restored_at for _, end, outcome, _, _ in after if isinstance(outcome, billing_pb2.Payment)
        )
        assert first_ok_s < RECOVERY_BOUND_S, first_ok_s
        late_failures = [
            c
            for c in after
            if c[0] >= restored_at + RECOVERY_BOUND_S and not isinstance(c[2], billing_pb2.Payment)
        ]
        assert late_failures == []

        # Nothing acknowledged is lost; retrying every unanswered request pays each at most once.
        acknowledged = {
            request: outcome
            for _, _, outcome, request, _ in burst.calls
            if isinstance(outcome, billing_pb2.Payment)
        }
        failed = {
            request: loan
            for _, _, outcome, request, loan in burst.calls
            if not isinstance(outcome, billing_pb2.Payment)
        }
        with grpc.insecure_channel(server.target) as channel:
            billing = billing_pb2_grpc.BillingServiceStub(channel)
            stored = {}
            for n in range(THREADS):
                payments = billing.ListPayments(
                    billing_pb2.ListPaymentsRequest(loan_id=f"loan-{n}", page_size=500), metadata=metadata
                ).payments
                stored.update({p.request_id: p for p in payments})
            assert all(
                stored[request].payment_id == payment.payment_id for request, payment in acknowledged.items()
            )
            committed_unacknowledged = [request for request in failed if request in stored]
            for request, loan_id in failed.items():
                again = billing.MakePayment(
                    billing_pb2.MakePaymentRequest(loan_id=loan_id, amount=WEEKLY, request_id=request),
                    metadata=metadata,
                )
                if request in stored:
                    assert again.payment_id == stored[request].payment_id  # returned, not paid twice
            total = 0
            for n in range(THREADS):
                loan = billing.GetLoan(billing_pb2.GetLoanRequest(loan_id=f"loan-{n}"), metadata=metadata)
                payments = billing.ListPayments(
                    billing_pb2.ListPaymentsRequest(loan_id=f"loan-{n}", page_size=500), metadata=metadata
                ).payments
                assert sorted(p.first_week for p in payments) == list(range(1, loan.installments_paid + 1))
                total += len(payments)
            assert total == len(acknowledged) + len(failed)

        log = "".join(server.log)
        assert "Traceback" not in log and "INTERNAL" not in log
        assert "health NOT_SERVING" in log and "health SERVING" in log
        unreachable_lines = log.count("WARNING lending_grpc.core.storage.database database unreachable")
        unavailable = sum(1 for c in burst.calls if c[2] == grpc.StatusCode.UNAVAILABLE)
        print(
            f"\n{len(burst.calls)} calls: {len(acknowledged)} acknowledged, {unavailable} UNAVAILABLE "
            f"({len(during)} started during the {OUTAGE_S} s outage); health NOT_SERVING "
            f"{not_serving_s:.2f} s after the cut (both workers' gauges 0 after "
            f"{not_serving_s + both_down_s:.2f} s), SERVING {serving_s:.2f} s after the restore; "
            f"first payment acknowledged {first_ok_s:.2f} s after the restore; "
            f"{len(committed_unacknowledged)} committed while the caller saw an error (its retry "
            f"returned it); {unreachable_lines} 'database unreachable' warning line(s) from 2 workers"
        )
        print("".join(line for line in server.log if " WARNING " in line))
    finally:
        assert server.terminate() == 0
        proxy.close()
        postgres.drop(url)


def _drop_file_permission_override() -> None:
    """In the child: as root, give up the capabilities that ignore file permissions."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_unreadable_sqlite_file_stops_the_start_with_one_line(tmp_path, workers):
    database = tmp_path / "locked.db"
    database.touch()
    database.chmod(0)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lending_grpc",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            workers,
            "--database-url",
            f"sqlite:///{database}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        cwd=tmp_path,
        preexec_fn=_drop_file_permission_override,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"lending-grpc: cannot open the database {database}: Permission denied: "
        "this user must be able to read and write the file"
    ]


def test_health_ignores_one_dropped_connection_and_stays_down_while_draining(postgres, tmp_path, caplog):
    import psycopg
    from helpers import make_settings

    from lending_grpc.server import create_server

    url = postgres.create()
    proxy = CuttableProxy(urlsplit(url).hostname, urlsplit(url).port or 5432)
    running = create_server(make_settings(tmp_path, database_url=_through(proxy, url)))
    target = f"127.0.0.1:{running.port}"
    stopper = threading.Thread(target=running.stop, kwargs=dict(grace=1.0, drain_delay=1.5))
    try:
        with grpc.insecure_channel(target) as channel:
            auth = auth_pb2_grpc.AuthServiceStub(channel)
            auth.Register(
                auth_pb2.RegisterRequest(username="drain", password="drain-password", email="d@e.com")
            )
            # A DBA ends the service's sessions: a call may fail, the probe reconnects, health stays.
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND application_name = 'lending-grpc'",
                    (url.rsplit("/", 1)[1],),
                )
            try:
                auth.Login(auth_pb2.LoginRequest(username="drain", password="drain-password"))
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
            time.sleep(0.5)
            assert _health(target) == health_pb2.HealthCheckResponse.SERVING
            assert "health NOT_SERVING" not in caplog.text

            proxy.cut()
            with pytest.raises(grpc.RpcError):
                auth.Login(auth_pb2.LoginRequest(username="drain", password="drain-password"))
            assert wait_until(lambda: _health(target) == health_pb2.HealthCheckResponse.NOT_SERVING, 2)
            stopper.start()  # SIGTERM's drain, while the database is still away
            time.sleep(0.2)
            proxy.restore()
            # The database is back, but the server is draining: it must not invite calls again.
            seen = set()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                seen.add(_health(target))
                time.sleep(0.05)
            assert seen == {health_pb2.HealthCheckResponse.NOT_SERVING}
    finally:
        if stopper.ident is None:
            running.stop(0)
        stopper.join(10)
        proxy.close()
        postgres.drop(url)
