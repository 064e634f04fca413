"""Several server processes on one database (SQLite file and PostgreSQL) stay exact under concurrency."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from helpers import (
    WEEKLY,
    ServerProcess,
    cents,
    create_on,
    make_settings,
    pay_on_own_channel,
    read_on,
    user_on,
)
from lending.v1 import billing_pb2

pytestmark = pytest.mark.slow


@pytest.fixture
def targets(database_url):
    """Two independent server processes on one database, each on a port of its own."""
    servers = [ServerProcess(database_url) for _ in range(2)]
    yield [server.target for server in servers]
    assert [server.terminate() for server in servers] == [0, 0]


def test_hundred_payments_across_processes_pay_each_installment_once(targets):
    metadata = user_on(targets[0])
    create_on(targets[0], metadata, "shared", term_weeks=60)
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(
                lambda i: pay_on_own_channel(targets[i % 2], metadata, "shared", WEEKLY, f"pay-{i}"),
                range(100),
            )
        )
    accepted = [r for r in results if isinstance(r, billing_pb2.Payment)]
    refused = [r for r in results if not isinstance(r, billing_pb2.Payment)]
    assert len(accepted) == 60
    assert refused == [grpc.StatusCode.FAILED_PRECONDITION] * 40
    assert sorted(p.first_week for p in accepted) == list(range(1, 61))
    assert all(p.last_week == p.first_week for p in accepted)
    loan, payments = read_on(targets[1], metadata, "shared")
    assert loan.installments_paid == 60 and loan.state == billing_pb2.LOAN_STATE_PAID_OFF
    assert loan.outstanding_balance == "0.00" and loan.paid_amount == "6600000.00"
    assert sum(cents(p.amount) for p in payments) == 660_000_000
    assert sorted(p.first_week for p in payments) == list(range(1, 61))


def test_thirty_retries_of_one_request_across_processes_make_one_payment(targets):
    metadata = user_on(targets[0])
    create_on(targets[0], metadata, "retried")
    start = threading.Barrier(30)
    with ThreadPoolExecutor(30) as pool:
        results = list(
            pool.map(
                lambda i: pay_on_own_channel(
                    targets[i % 2], metadata, "retried", WEEKLY, "same-request", start
                ),
                range(30),
            )
        )
    assert all(isinstance(r, billing_pb2.Payment) for r in results), results
    assert len({r.payment_id for r in results}) == 1
    assert {(r.first_week, r.last_week) for r in results} == {(1, 1)}
    loan, payments = read_on(targets[1], metadata, "retried")
    assert len(payments) == 1 and loan.installments_paid == 1 and loan.outstanding_balance == "5390000.00"


def test_two_concurrent_payoffs_one_wins_one_is_refused(targets):
    metadata = user_on(targets[0])
    loans = [f"payoff-{n}" for n in range(8)]
    for loan_id in loans:
        create_on(targets[0], metadata, loan_id)
    for loan_id in loans:
        start = threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            results = list(
                pool.map(
                    lambda i, loan_id=loan_id, start=start: pay_on_own_channel(
                        targets[i], metadata, loan_id, "5500000.00", f"{loan_id}-{i}", start
                    ),
                    range(2),
                )
            )
        winners = [r for r in results if isinstance(r, billing_pb2.Payment)]
        assert len(winners) == 1, results
        assert grpc.StatusCode.FAILED_PRECONDITION in results
        assert (winners[0].first_week, winners[0].last_week, winners[0].outstanding_balance) == (
            1,
            50,
            "0.00",
        )
        loan, payments = read_on(targets[0], metadata, loan_id)
        assert len(payments) == 1 and loan.paid_amount == "5500000.00" and loan.outstanding_balance == "0.00"


def test_workers_share_one_port_and_a_killed_worker_is_replaced(database_url):
    server = ServerProcess(database_url, "--workers", "2")
    try:
        pids = [int(pid) for pid in re.search(r"pids ([\d ]+)", "".join(server.log)).group(1).split()]
        assert len(pids) == 2 and os.getpid() not in pids
        metadata = user_on(server.target)
        create_on(server.target, metadata, "workers", term_weeks=100)
        # Channels of their own: SO_REUSEPORT spreads connections, not calls on one connection.
        with ThreadPoolExecutor(8) as pool:
            first = list(
                pool.map(
                    lambda i: pay_on_own_channel(server.target, metadata, "workers", WEEKLY, f"w-{i}"),
                    range(40),
                )
            )
        assert all(isinstance(r, billing_pb2.Payment) for r in first)

        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "worker 0 restarted" not in "".join(server.log) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "worker 0 restarted" in "".join(server.log), "".join(server.log)

        with ThreadPoolExecutor(8) as pool:
            second = list(
                pool.map(
                    lambda i: pay_on_own_channel(server.target, metadata, "workers", WEEKLY, f"w-{i}"),
                    range(80),
                )
            )
        assert all(isinstance(r, billing_pb2.Payment) for r in second)
        # The first 40 were retries: the same payments, not new ones.
        assert [p.payment_id for p in second[:40]] == [p.payment_id for p in first]
        loan, payments = read_on(server.target, metadata, "workers")
        assert loan.installments_paid == 80 and len(payments) == 80
        assert sorted(p.first_week for p in payments) == list(range(1, 81))
    finally:
        assert server.terminate() == 0


def test_dropped_postgresql_connections_never_surface_as_internal(postgres, tmp_path):
    """PostgreSQL restarts or a DBA kills sessions: calls fail UNAVAILABLE (never INTERNAL), then recover."""
    import psycopg

    from lending_grpc.server import create_server

    url = postgres.create()
    running = create_server(make_settings(tmp_path, database_url=url))
    try:
        target = f"127.0.0.1:{running.port}"
        metadata = user_on(target)
        create_on(target, metadata, "resilient")
        dbname = url.rsplit("/", 1)[1]
        with psycopg.connect(url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            ).fetchone()[0]
        assert killed >= 1
        outcomes = []
        for i in range(6):
            result = pay_on_own_channel(target, metadata, "resilient", WEEKLY, f"after-kill-{i}")
            outcomes.append(result if isinstance(result, grpc.StatusCode) else "OK")
        assert set(outcomes) <= {"OK", grpc.StatusCode.UNAVAILABLE}, outcomes
        assert outcomes[-3:] == ["OK"] * 3, outcomes
        # Nothing half-written: the loan reconciles with the payments that were acknowledged.
        loan, payments = read_on(target, metadata, "resilient")
        assert loan.installments_paid == len(payments) == outcomes.count("OK")
    finally:
        running.stop(0)
        postgres.drop(url)


def test_the_postgresql_pool_is_bounded_and_shared_by_more_threads(postgres, tmp_path):
    import psycopg

    from lending_grpc.server import create_server

    url = postgres.create()
    running = create_server(make_settings(tmp_path, database_url=url, db_pool_size=2, max_workers=16))
    dbname = url.rsplit("/", 1)[1]
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        with psycopg.connect(url, autocommit=True) as admin:
            while not done.is_set():
                seen.append(
                    admin.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                        (dbname, "lending-grpc"),
                    ).fetchone()[0]
                )
                time.sleep(0.005)

    try:
        target = f"127.0.0.1:{running.port}"
        metadata = user_on(target)
        create_on(target, metadata, "pooled", term_weeks=60)
        watcher = threading.Thread(target=watch)
        watcher.start()
        with ThreadPoolExecutor(16) as pool:
            results = list(
                pool.map(
                    lambda i: pay_on_own_channel(target, metadata, "pooled", WEEKLY, f"p-{i}"), range(60)
                )
            )
        done.set()
        watcher.join()
        assert all(isinstance(r, billing_pb2.Payment) for r in results), results
        assert seen and max(seen) <= 2, max(seen)
        assert sorted(r.first_week for r in results) == list(range(1, 61))
    finally:
        done.set()
        running.stop(0)
        postgres.drop(url)


def test_workers_do_not_outlive_a_killed_supervisor(tmp_path):
    server = ServerProcess(tmp_path / "orphans.db", "--workers", "2")
    pids = [int(pid) for pid in re.search(r"pids ([\d ]+)", "".join(server.log)).group(1).split()]
    server.kill()  # SIGKILL: the supervisor gets no chance to stop its workers
    deadline = time.monotonic() + 20
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in pids if _running(pid)]
    assert alive == [], "workers outlived their supervisor"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
