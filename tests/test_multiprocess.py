"""`serve --workers`: worker processes share one port, a killed worker is replaced, none outlives the
supervisor. Payment races across processes are in test_concurrency.py."""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import WEEKLY, ServerProcess, create_on, pay_on_own_channel, read_on, user_on
from lending.v1 import billing_pb2

pytestmark = pytest.mark.slow


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
