"""A call's deadline bounds its database work: a caller that gave up leaves nothing queued behind a lock."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from helpers import hold_payment_lock, metric_value, running_api, scrape, wait_until
from lending.v1 import billing_pb2

from lending_grpc.core.errors import DeadlineExceeded
from lending_grpc.core.storage.database import LendingDatabase

DEADLINE_S = 0.5
CALLS = 8  # twice the server's RPC threads: half of them wait for a thread first
# The machine this runs on has 2 cores shared with the whole suite: a server
# answer may come a little after the deadline, never a busy-timeout (10 s) later.
TOLERANCE_S = 0.4


def test_calls_blocked_by_a_lock_end_at_their_deadline_and_free_their_threads(tmp_path, database_url, caplog):
    with running_api(
        tmp_path, database_url, max_workers=4, db_busy_timeout_ms=10_000, metrics_listen="127.0.0.1:0"
    ) as api:
        metadata, _, _ = api.register_and_login()
        api.billing.CreateLoan(
            billing_pb2.CreateLoanRequest(loan_id="held", principal_amount="5000000"), metadata=metadata
        )
        caplog.set_level(logging.INFO, logger="lending_grpc.access")
        release = hold_payment_lock(database_url)
        try:

            def pay(n: int):
                started = time.monotonic()
                try:
                    api.billing.MakePayment(
                        billing_pb2.MakePaymentRequest(loan_id="held", amount="110000", request_id=f"r{n}"),
                        metadata=metadata,
                        timeout=DEADLINE_S,
                    )
                    code = grpc.StatusCode.OK
                except grpc.RpcError as err:
                    code = err.code()
                return code, time.monotonic() - started

            with ThreadPoolExecutor(CALLS) as pool:
                results = list(pool.map(pay, range(CALLS)))
            assert [code for code, _ in results] == [grpc.StatusCode.DEADLINE_EXCEEDED] * CALLS
            client_s = sorted(elapsed for _, elapsed in results)
            assert client_s[-1] < DEADLINE_S + TOLERANCE_S, client_s

            # The server's threads gave up at their deadline too: every call is answered (logged)
            # while the lock is still held, and every thread is free for new calls at once; without
            # the deadline they would be stuck for the 10 s busy timeout.
            # (gRPC runs no handler for a call that expired while it waited for a thread.)
            freed_s = wait_until(lambda: _in_flight(api.server, "MakePayment") == 0, 5)
            assert freed_s is not None, _access_lines(caplog, "MakePayment")
            freed_s += client_s[-1] - DEADLINE_S  # from the deadline on
            server_ms = _server_times_ms(caplog, "MakePayment")
            assert max(server_ms) < (DEADLINE_S + TOLERANCE_S) * 1000, server_ms
            assert _server_codes(caplog) == {"DEADLINE_EXCEEDED"}
            answered_after = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                loans = list(
                    pool.map(
                        lambda _: api.billing.GetLoan(
                            billing_pb2.GetLoanRequest(loan_id="held"), metadata=metadata, timeout=5
                        ),
                        range(4),
                    )
                )
            reads_s = time.monotonic() - answered_after
            assert [loan.installments_paid for loan in loans] == [0] * 4
            assert reads_s < TOLERANCE_S, reads_s
            print(
                f"\ndeadline {DEADLINE_S}s: the client saw DEADLINE_EXCEEDED after "
                f"{client_s[0]:.3f}-{client_s[-1]:.3f}s; the server's calls ended after "
                f"{min(server_ms):.0f}-{max(server_ms):.0f} ms (DEADLINE_EXCEEDED), every thread free "
                f"{freed_s:.3f}s after the deadline; 4 reads with the lock still held took {reads_s:.3f}s"
            )
        finally:
            release()
        # Nothing was written, and a retry with the same request id pays once.
        payment = api.billing.MakePayment(
            billing_pb2.MakePaymentRequest(loan_id="held", amount="110000", request_id="r0"),
            metadata=metadata,
        )
        assert payment.first_week == 1
        listed = api.billing.ListPayments(billing_pb2.ListPaymentsRequest(loan_id="held"), metadata=metadata)
        assert [p.payment_id for p in listed.payments] == [payment.payment_id]


def _in_flight(running, method: str) -> float:
    """Calls of ``method`` that reached a handler and have not finished, from the server's metrics."""
    text = scrape(running)
    labels = dict(grpc_method=method, grpc_service="lending.v1.BillingService", grpc_type="unary")
    started = metric_value(text, "grpc_server_started_total", **labels)
    handled = sum(
        metric_value(text, "grpc_server_handled_total", grpc_code=code, **labels)
        for code in ("OK", "DeadlineExceeded", "Unavailable")
    )
    return started - handled


def _access_lines(caplog, method: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"BillingService/{method} code=" in r.getMessage()]


def _server_times_ms(caplog, method: str) -> list[float]:
    return [float(re.search(r" ms=([\d.]+)", line).group(1)) for line in _access_lines(caplog, method)]


def _server_codes(caplog) -> set[str]:
    return {re.search(r" code=(\w+)", line).group(1) for line in _access_lines(caplog, "MakePayment")}


def test_a_call_whose_deadline_passed_starts_no_write():
    class _Db(LendingDatabase):
        def __init__(self) -> None:
            self._init_lending()

        def write_lock(self):
            return contextlib.nullcontext()

    db, ran = _Db(), []
    with pytest.raises(DeadlineExceeded), db.unit_of_work(time.monotonic() - 0.001):
        db.write_transaction(lambda: ran.append(1))
    assert ran == []
    with db.unit_of_work(time.monotonic() + 60):
        db.write_transaction(lambda: ran.append(1))
    assert ran == [1]
