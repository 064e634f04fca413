"""`serve --workers`: worker processes share one port, a killed worker is replaced, none outlives the
supervisor, and the servicing reads agree whichever worker answers. Payment races across processes are
in test_concurrency.py."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from helpers import (
    PASSWORD,
    WEEKLY,
    ServerProcess,
    create_on,
    pay_on_own_channel,
    read_on,
    run_cli,
    today,
    user_on,
)
from lending.v1 import auth_pb2, auth_pb2_grpc, billing_pb2, billing_pb2_grpc, events_pb2, events_pb2_grpc

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


def _connections_by_worker(pids: list[int], port: int) -> dict[int, int]:
    """How many established connections to ``port`` each worker holds (from /proc: which process
    answers a channel is the kernel's choice, SO_REUSEPORT, and shows only there)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # ESTABLISHED
                    inodes.add(fields[9])
    counts = {}
    for pid in pids:
        held = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            held += target.startswith("socket:[") and target[8:-1] in inodes
        counts[pid] = held
    return counts


def _signed_in(target: str, name: str):
    with grpc.insecure_channel(target) as channel:
        tokens = auth_pb2_grpc.AuthServiceStub(channel).Login(
            auth_pb2.LoginRequest(username=name, password=PASSWORD)
        )
    return (("authorization", f"Bearer {tokens.access_token}"),)


def test_servicing_reads_agree_across_workers(database_url, tmp_path):
    """A back-dated collection and a reversal written through one worker; history, report, status and
    the event log read through channels spread over both workers, to the cent.

    T is today. Loans of one borrower:
    - V: 1,000,001.00 (installments 22,000.02), started T-100, nothing paid: week 1 due T-93.
    - W: 5,000,000.00 (installments 110,000.00), started T-30: due T-23, T-16, T-9, T-2, T+5.
      The borrower pays 110,000.00 (valued T); an operator enters a 220,000.00 collection received
      T-10 (weeks 1-2 by value date); then the borrower's own payment bounces and is reversed.
    """
    T = today()

    def t(n: int) -> str:
        return (T + dt.timedelta(days=n)).isoformat()

    # Every read is repeated on each channel: the rate limits (tested on their own) would only get in the way.
    unlimited = {"LENDING_RATE_LIMIT_USER_PER_SECOND": "0", "LENDING_RATE_LIMIT_PEER_PER_SECOND": "0"}
    server = ServerProcess(database_url, "--workers", "2", env=unlimited)
    try:
        pids = [int(pid) for pid in re.search(r"pids ([\d ]+)", "".join(server.log)).group(1).split()]
        with grpc.insecure_channel(server.target) as channel:
            auth = auth_pb2_grpc.AuthServiceStub(channel)
            borrower = auth.Register(
                auth_pb2.RegisterRequest(username="wanda", password=PASSWORD, email="wanda@example.com")
            )
            auth.Register(
                auth_pb2.RegisterRequest(username="otto", password=PASSWORD, email="otto@example.com")
            )
        granted = run_cli("users", "grant", "otto", "operator", "--database-url", database_url, cwd=tmp_path)
        assert granted.returncode == 0, granted.stderr
        wanda, otto = _signed_in(server.target, "wanda"), _signed_in(server.target, "otto")

        with grpc.insecure_channel(server.target) as channel:
            billing = billing_pb2_grpc.BillingServiceStub(channel)
            for loan_id, principal, start in (("V", "1000001", t(-100)), ("W", "5000000", t(-30))):
                billing.CreateLoan(
                    billing_pb2.CreateLoanRequest(
                        loan_id=loan_id, principal_amount=principal, start_date=start
                    ),
                    metadata=wanda,
                )
            own = billing.MakePayment(
                billing_pb2.MakePaymentRequest(loan_id="W", amount="110000.00"), metadata=wanda
            )
            collected = billing.MakePayment(
                billing_pb2.MakePaymentRequest(
                    loan_id="W", amount="220000.00", owner=borrower.user_id, value_date=t(-10)
                ),
                metadata=otto,
            )
            assert (collected.value_date, collected.outstanding_balance) == (t(-10), "5170000.00")
            reversed_ = billing.ReversePayment(
                billing_pb2.ReversePaymentRequest(payment_id=own.payment_id, reason="bounced"), metadata=otto
            )
            assert (reversed_.reversed, reversed_.value_date) == (True, t(0))

        # Expected, worked out from the rules:
        # W counts only the collection (220,000.00, from T-10): 2 paid, 5,280,000.00 outstanding.
        #   History: weeks 1-2 missed from T-15 until the collection's value date T-10 (2 paid, 2 due);
        #   weeks 3-4 (T-9, T-2) missed from T-1, still at T (week 5 is due T+5).
        #   As of T: 2 missed (220,000.00), T - (T-9) = 9 days past due: SPECIAL_MENTION.
        # V: delinquent from T-85 (week 2 due T-86); at T 14 due (7k < 100), 14 missed; 93 days: LOSS.
        # Report as of T: 2 loans, 5,280,000.00 + 1,100,001.10 = 6,380,001.10;
        #   twp90 = 100 * 1,100,001.10 / 6,380,001.10 = 17.2413... -> 17.24, tkb90 82.76.
        # Report as of T-12: W had paid nothing: weeks 1-2 (T-23, T-16) missed, 11 days,
        #   SPECIAL_MENTION 5,500,000.00; V: 12 due (7k < 88), week 1 due T-93: 81 days, DOUBTFUL.
        #   6,600,001.10 in all, nothing LOSS: 0.00 / 100.00.
        histories = {"W": [(t(-15), t(-10), 2), (t(-1), "", 2)], "V": [(t(-85), "", 14)]}
        report_today = (
            t(0),
            2,
            "6380001.10",
            [(1, 0, "0.00"), (2, 1, "5280000.00"), (3, 0, "0.00"), (4, 0, "0.00"), (5, 1, "1100001.10")],
            "17.24",
            "82.76",
        )
        report_past = (
            t(-12),
            2,
            "6600001.10",
            [(1, 0, "0.00"), (2, 1, "5500000.00"), (3, 0, "0.00"), (4, 1, "1100001.10"), (5, 0, "0.00")],
            "0.00",
            "100.00",
        )
        E = events_pb2.EventType
        events_expected = [
            (E.EVENT_TYPE_LOAN_CREATED, "V", t(-100), ""),
            (E.EVENT_TYPE_DELINQUENCY_STARTED, "V", None, ""),  # created already delinquent
            (E.EVENT_TYPE_LOAN_CREATED, "W", t(-30), ""),
            (E.EVENT_TYPE_DELINQUENCY_STARTED, "W", None, ""),
            (E.EVENT_TYPE_PAYMENT_ACCEPTED, "W", t(0), own.payment_id),  # 1 of 4 due paid: 3 missed
            (E.EVENT_TYPE_PAYMENT_ACCEPTED, "W", t(-10), collected.payment_id),
            (E.EVENT_TYPE_DELINQUENCY_ENDED, "W", None, ""),  # 3 of 4 paid: 1 missed today
            (E.EVENT_TYPE_PAYMENT_REVERSED, "W", t(0), own.payment_id),
            (E.EVENT_TYPE_DELINQUENCY_STARTED, "W", None, ""),  # 2 of 4 paid again: 2 missed
        ]

        def read_everything(channel) -> None:
            billing = billing_pb2_grpc.BillingServiceStub(channel)
            for loan_id, expected in histories.items():
                reply = billing.GetDelinquencyHistory(
                    billing_pb2.GetDelinquencyHistoryRequest(loan_id=loan_id), metadata=wanda
                )
                assert [(p.start_date, p.end_date, p.max_missed_payments) for p in reply.periods] == expected
            operator_view = billing.GetDelinquencyHistory(
                billing_pb2.GetDelinquencyHistoryRequest(loan_id="W", owner=borrower.user_id), metadata=otto
            )
            assert len(operator_view.periods) == 2
            status = billing.GetDelinquencyStatus(
                billing_pb2.GetDelinquencyStatusRequest(loan_id="W"), metadata=wanda
            )
            assert (
                status.is_delinquent,
                status.missed_payments,
                status.overdue_amount,
                status.days_past_due,
            ) == (
                True,
                2,
                "220000.00",
                9,
            )
            money = billing.GetOutstanding(billing_pb2.GetOutstandingRequest(loan_id="W"), metadata=wanda)
            assert (money.paid_amount, money.outstanding_balance, money.installments_paid) == (
                "220000.00",
                "5280000.00",
                2,
            )
            for as_of, expected, who, whole_book in (
                ("", report_today, wanda, False),
                (t(-12), report_past, wanda, False),
                ("", report_today, otto, True),  # the book is wanda's two loans
            ):
                r = billing.GetPortfolioReport(
                    billing_pb2.GetPortfolioReportRequest(as_of=as_of, all_owners=whole_book), metadata=who
                )
                got = (
                    r.as_of,
                    r.loans,
                    r.outstanding_amount,
                    [(c.quality, c.loans, c.outstanding_amount) for c in r.categories],
                    r.twp90,
                    r.tkb90,
                )
                assert got == expected
            events_stub = events_pb2_grpc.EventServiceStub(channel)
            for who in (wanda, otto):
                events, after = [], 0
                while page := events_stub.ListEvents(
                    events_pb2.ListEventsRequest(after_sequence=after, page_size=2), metadata=who
                ).events:
                    events += page
                    after = page[-1].sequence
                assert [e.sequence for e in events] == sorted({e.sequence for e in events})
                assert all(e.owner == borrower.user_id for e in events)
                assert [
                    (
                        e.type,
                        e.loan_id,
                        e.effective_date if expected[2] is not None else None,
                        e.payment.payment_id,
                    )
                    for e, expected in zip(events, events_expected, strict=True)
                ] == events_expected
                assert events[7].payment.reversed and events[7].payment.reversal_reason == "bounced"
                assert events[8].delinquency.missed_payments == 2

        # New channels until each worker holds at least one on which everything was read and checked.
        channels: list[grpc.Channel] = []
        try:
            while len(channels) < 40:
                # A connection of its own: channels to one target otherwise share the process-wide
                # subchannel pool, so one connection, so one worker.
                channel = grpc.insecure_channel(
                    server.target, options=[("grpc.use_local_subchannel_pool", 1)]
                )
                channels.append(channel)
                read_everything(channel)
                held = _connections_by_worker(pids, server.port)
                if len(channels) >= 4 and all(held.values()):
                    break
            assert all(held.values()), held
        finally:
            for channel in channels:
                channel.close()
    finally:
        assert server.terminate() == 0
