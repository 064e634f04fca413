"""Ceiling 2: each lending.v1 method as the same single SQLite transaction, with stdlib sqlite3.

Same schema (it serves a copy of a lending-grpc database), same pragmas
(WAL, synchronous=FULL, foreign keys, busy timeout), same statements per
call as lending-grpc issues (tests/test_query_counts.py), writers of one
process queued on a lock as in lending-grpc, hand-written SQL,
no ORM, no interceptors, no authentication (the owner is fixed), and a
minimal response. Login verifies the argon2id hash with the service's
parameters, since that is what a login costs.

    python bench/ceilings/raw_sqlite_server.py --database var/raw.db --owner 1 --workers 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "generated"))
from argon2 import PasswordHasher  # noqa: E402
from lending.v1 import auth_pb2, billing_pb2  # noqa: E402

from bench import methods  # noqa: E402
from bench.ceilings import common  # noqa: E402
from lending_grpc.core.storage.database import SQLITE_CACHE_KIB, SQLITE_MMAP_BYTES  # noqa: E402

PRAGMAS = (
    "journal_mode=wal",
    "synchronous=full",
    "foreign_keys=1",
    "busy_timeout=10000",
    f"mmap_size={SQLITE_MMAP_BYTES}",
    f"cache_size={-SQLITE_CACHE_KIB}",
)
LOAN_SQL = (
    "SELECT id, principal_cents, rate_e4, term_weeks, start_date, total_cents, weekly_cents, final_cents, "
    'paid_weeks, paid_cents FROM "loan" WHERE owner_id = ? AND loan_id = ?'
)


class RawSqlite:
    def __init__(self, path: str, owner: int) -> None:
        self._path = path
        self._owner = owner
        self._local = threading.local()
        self._hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
        # Writers of one process queue on a lock, not in SQLite's sleeping busy handler (as lending-grpc).
        self._writers = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=10)
            for pragma in PRAGMAS:
                conn.execute(f"PRAGMA {pragma}")
            self._local.conn = conn
        return conn

    def _loan(self, db, loan_id: str):
        row = db.execute(LOAN_SQL, (self._owner, loan_id)).fetchone()
        if row is None:
            raise LookupError(loan_id)
        return row

    def get_delinquency(self, request, context):
        row = self._loan(self._db(), request.loan_id)
        return billing_pb2.DelinquencyStatus(loan_id=request.loan_id, missed_payments=row[8] % 3)

    def get_outstanding(self, request, context):
        row = self._loan(self._db(), request.loan_id)
        return billing_pb2.Outstanding(loan_id=request.loan_id, outstanding_balance=str(row[5] - row[9]))

    def get_loan(self, request, context):
        row = self._loan(self._db(), request.loan_id)
        return billing_pb2.Loan(loan_id=request.loan_id, principal_amount=str(row[1]))

    def get_schedule(self, request, context):
        db = self._db()
        row = self._loan(db, request.loan_id)
        paid = db.execute(
            'SELECT first_week, last_week, payment_id FROM "payment" WHERE loan_id = ? ORDER BY first_week',
            (row[0],),
        ).fetchall()
        start = dt.date.fromisoformat(row[4])
        return billing_pb2.Schedule(
            loan_id=request.loan_id,
            installments=[
                billing_pb2.Installment(week=w, due_date=(start + dt.timedelta(days=7 * w)).isoformat())
                for w in range(1, row[3] + 1)
            ],
            total_amount=str(len(paid)),
        )

    def create_loan(self, request, context):
        with self._writers:
            return self._create_loan(request)

    def _create_loan(self, request):
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            existing = db.execute(LOAN_SQL, (self._owner, request.loan_id)).fetchone()
            if existing is None:
                cents = int(Decimal(request.principal_amount) * 100)
                db.execute(
                    'INSERT INTO "loan" (owner_id, loan_id, principal_cents, rate_e4, term_weeks, '
                    "start_date, "
                    "total_cents, weekly_cents, final_cents, paid_weeks, paid_cents, second_unpaid_due_date, "
                    "create_time_us) VALUES (?, ?, ?, 1000, 50, ?, ?, ?, ?, 0, 0, ?, ?)",
                    (
                        self._owner,
                        request.loan_id,
                        cents,
                        request.start_date,
                        cents * 11 // 10,
                        cents * 11 // 500,
                        cents * 11 // 500,
                        request.start_date,
                        time.time_ns() // 1000,
                    ),
                )
                _audit(db, "loan.created", request.loan_id, {"principal_cents": cents})
                loan_row = db.execute(LOAN_SQL, (self._owner, request.loan_id)).fetchone()[0]
                _event(db, self._owner, "LOAN_CREATED", loan_row, request.loan_id, request.start_date, {
                    "principal_amount": request.principal_amount, "start_date": request.start_date,
                })  # fmt: skip
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return billing_pb2.Loan(loan_id=request.loan_id, principal_amount=request.principal_amount)

    def make_payment(self, request, context):
        with self._writers:
            return self._make_payment(request)

    def _make_payment(self, request):
        # The six statements lending-grpc's MakePayment runs on a loan in good standing
        # (docs/development/architecture.md; tests/test_storage.py pins the count).
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            earlier = db.execute(
                'SELECT p.id, p.payment_id, l.loan_id FROM "payment" p JOIN "loan" l ON l.id = p.loan_id '
                "WHERE p.recorded_by_id = ? AND p.request_id = ?",
                (self._owner, request.request_id),
            ).fetchone()
            payment_id = "" if earlier is None else earlier[1]
            if earlier is None:
                row = self._loan(db, request.loan_id)
                cents = int(Decimal(request.amount) * 100)
                weeks = cents // row[6]
                today = dt.date.today().isoformat()
                now_us = time.time_ns() // 1000
                payment_id = str(uuid.uuid4())
                db.execute(
                    'UPDATE "loan" SET paid_weeks = ?, paid_cents = ?, second_unpaid_due_date = ?, '
                    "last_value_date = ? WHERE id = ? AND paid_cents = ?",
                    (row[8] + weeks, row[9] + cents, None, today, row[0], row[9]),
                )
                db.execute(
                    'INSERT INTO "payment" (payment_id, loan_id, owner_id, request_id, amount_cents, '
                    "first_week, last_week, outstanding_after_cents, payment_time_us, recorded_by_id, "
                    "value_date, running_paid_cents) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        payment_id,
                        row[0],
                        self._owner,
                        request.request_id,
                        cents,
                        row[8] + 1,
                        row[8] + weeks,
                        row[5] - row[9] - cents,
                        now_us,
                        self._owner,
                        today,
                        row[9] + cents,
                    ),
                ).fetchone()
                _audit(
                    db, "payment.accepted", request.loan_id, {"payment_id": payment_id, "amount_cents": cents}
                )
                _event(db, self._owner, "PAYMENT_ACCEPTED", row[0], request.loan_id, today, {
                    "payment_id": payment_id, "amount": request.amount, "value_date": today,
                })  # fmt: skip
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return billing_pb2.Payment(payment_id=payment_id, loan_id=request.loan_id, amount=request.amount)

    def login(self, request, context):
        row = (
            self._db()
            .execute('SELECT password_hash FROM "user" WHERE username_key = ?', (request.username.lower(),))
            .fetchone()
        )
        self._hasher.verify(row[0], request.password)
        return auth_pb2.Tokens(access_token="x", token_type="Bearer", expires_in=900)


def _audit(db: sqlite3.Connection, event: str, loan_id: str, summary: dict) -> None:
    """The audit row lending-grpc writes in the same transaction (the audit trail is part of the work)."""
    db.execute(
        'INSERT INTO "audit_event" (time_us, event, outcome, actor, subject, peer, rpc, request_id, loan_id, '
        "summary) VALUES (?, ?, 'ok', ?, ?, ?, ?, ?, ?, ?)",
        (
            time.time_ns() // 1000,
            event,
            "00000000-0000-0000-0000-000000000000",
            "00000000-0000-0000-0000-000000000000",
            "ipv4:127.0.0.1:50000",
            "/lending.v1.BillingService/MakePayment",
            str(uuid.uuid4()),
            loan_id,
            json.dumps(summary, separators=(",", ":"), sort_keys=True),
        ),
    )


def _event(
    db: sqlite3.Connection, owner: int, kind: str, loan_row: int, loan_id: str, day: str, body: dict
) -> None:
    """The event-log row lending-grpc writes in the same transaction, numbered as it numbers on SQLite."""
    db.execute(
        'INSERT INTO "event" (id, sequence, type, loan_row_id, loan_id, owner_id, owner_user_id, '
        "occur_time_us, effective_date, payload) VALUES "
        '((SELECT COALESCE(MAX("id"), 0) + 1 FROM "event"), '
        '(SELECT COALESCE(MAX("id"), 0) + 1 FROM "event"), ?, ?, ?, ?, ?, ?, ?, ?)',
        (
            kind,
            loan_row,
            loan_id,
            owner,
            "00000000-0000-0000-0000-000000000000",
            time.time_ns() // 1000,
            day,
            json.dumps(body, separators=(",", ":"), sort_keys=True),
        ),
    )


def make_handlers(path: str, owner: int) -> common.Handlers:
    raw = RawSqlite(path, owner)

    def unary(fn, request_type):
        return grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=request_type.FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )

    b = billing_pb2
    return {
        methods.GET_DELINQUENCY: unary(raw.get_delinquency, b.GetDelinquencyStatusRequest),
        methods.GET_OUTSTANDING: unary(raw.get_outstanding, b.GetOutstandingRequest),
        methods.GET_LOAN: unary(raw.get_loan, b.GetLoanRequest),
        methods.GET_SCHEDULE: unary(raw.get_schedule, b.GetScheduleRequest),
        methods.CREATE_LOAN: unary(raw.create_loan, b.CreateLoanRequest),
        methods.MAKE_PAYMENT: unary(raw.make_payment, b.MakePaymentRequest),
        methods.LOGIN: unary(raw.login, auth_pb2.LoginRequest),
    }


class _Factory:
    """Picklable handler factory for the spawned worker processes."""

    def __init__(self, path: str, owner: int) -> None:
        self.path, self.owner = path, owner

    def __call__(self) -> common.Handlers:
        return make_handlers(self.path, self.owner)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", required=True)
    parser.add_argument("--owner", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=16, help="RPC threads per process")
    args = parser.parse_args()
    common.run("raw-sqlite", _Factory(args.database, args.owner), args.workers, args.threads)
