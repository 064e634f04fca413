"""SIGKILL during a burst of payments loses no acknowledged write, and retries never pay twice."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from helpers import ServerProcess, user_on
from lending.v1 import billing_pb2, billing_pb2_grpc

from lending_grpc.core.storage.database import sqlite_path

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
