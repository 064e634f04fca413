"""Backups taken while payments are written restore to a server with every earlier payment and its audit.

SQLite: `lending-grpc backup` / `lending-grpc restore`, with the generated key
files. PostgreSQL: the pg_dump / pg_restore commands the operations docs give.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
import uuid

import grpc
import pytest
from helpers import PayingThreads, ServerProcess, run_cli, wait_until
from lending.v1 import auth_pb2, auth_pb2_grpc, billing_pb2, billing_pb2_grpc

from lending_grpc.core.storage.migrations import LATEST_VERSION

pytestmark = pytest.mark.slow

THREADS = 6
WEEKLY = "110.00"  # 52,000.00 over 520 weeks at 10%
PASSWORD = "backup-password"
# Generated keys: the server makes them beside the SQLite file, and the backup must carry them.
GENERATED_KEYS = {"LENDING_SECRET_KEY": "", "LENDING_DATA_KEY": ""}
NO_LIMITS = {"LENDING_RATE_LIMIT_USER_PER_SECOND": "0", "LENDING_RATE_LIMIT_PEER_PER_SECOND": "0"}


class _Payments(PayingThreads):
    """THREADS threads paying their own loan until stopped; every acknowledgement is timed."""

    def __init__(self, target: str, metadata) -> None:
        super().__init__(target, metadata, THREADS)
        self.acknowledged: list[tuple[float, billing_pb2.Payment]] = []

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def _run(self, n: int) -> None:
        with grpc.insecure_channel(self.target) as channel:
            billing = billing_pb2_grpc.BillingServiceStub(channel)
            while not self._stop.is_set():
                request = billing_pb2.MakePaymentRequest(
                    loan_id=f"loan-{n}", amount=WEEKLY, request_id=str(uuid.uuid4())
                )
                payment = billing.MakePayment(request, metadata=self.metadata, timeout=10)
                with self._lock:
                    self.acknowledged.append((time.monotonic(), payment))


def _set_up(target: str):
    """A user with THREADS loans; returns its auth metadata."""
    with grpc.insecure_channel(target) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        auth.Register(
            auth_pb2.RegisterRequest(username="saved", password=PASSWORD, email="saved@example.com")
        )
        tokens = auth.Login(auth_pb2.LoginRequest(username="saved", password=PASSWORD))
        metadata = (("authorization", f"Bearer {tokens.access_token}"),)
        for n in range(THREADS):
            billing_pb2_grpc.BillingServiceStub(channel).CreateLoan(
                billing_pb2.CreateLoanRequest(loan_id=f"loan-{n}", principal_amount="52000", term_weeks=520),
                metadata=metadata,
            )
    return metadata


def _while_paying(server: ServerProcess, metadata, backup) -> tuple[dict, dict, float]:
    """Run ``backup()`` in the middle of a payment burst.

    Returns the payments acknowledged before it started and all acknowledged
    ones (payment_id -> Payment), and how long the backup took.
    """
    burst = _Payments(server.target, metadata).start()
    try:
        assert wait_until(lambda: burst.count() >= 100, 30) is not None
        started = time.monotonic()
        backup()
        took = time.monotonic() - started
        ended = time.monotonic()
        assert wait_until(lambda: sum(t > ended for t, _ in burst.acknowledged) >= 50, 30) is not None
    finally:
        burst.stop()
    before = {p.payment_id: p for t, p in burst.acknowledged if t < started}
    return before, {p.payment_id: p for _, p in burst.acknowledged}, took


def _check_restored(target: str, before: dict, everything: dict) -> set[str]:
    """The restored server has every payment acknowledged before the backup; returns the ids it has."""
    with grpc.insecure_channel(target) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        tokens = auth.Login(auth_pb2.LoginRequest(username="saved", password=PASSWORD))  # the user is there
        metadata = (("authorization", f"Bearer {tokens.access_token}"),)
        billing = billing_pb2_grpc.BillingServiceStub(channel)
        restored = {}
        for n in range(THREADS):
            loan = billing.GetLoan(billing_pb2.GetLoanRequest(loan_id=f"loan-{n}"), metadata=metadata)
            payments = billing.ListPayments(
                billing_pb2.ListPaymentsRequest(loan_id=f"loan-{n}", page_size=500), metadata=metadata
            ).payments
            # One moment of the database: the loan's summary agrees with its payments.
            assert sorted(p.first_week for p in payments) == list(range(1, loan.installments_paid + 1))
            assert loan.paid_amount == f"{110 * len(payments)}.00"
            restored.update({p.payment_id: p for p in payments})
    for payment_id, payment in before.items():
        assert restored[payment_id].first_week == payment.first_week
        assert restored[payment_id].request_id == payment.request_id
    assert set(restored) <= set(everything)  # nothing that was never acknowledged... or half-written
    return set(restored)


def _audit(database_url: str, cwd, **env) -> list[dict]:
    result = run_cli("audit", "export", "--database-url", database_url, cwd=cwd, **env)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _check_audit(restored: list[dict], source: list[dict], payments: set[str]) -> None:
    """Every restored audit event is the source's, unchanged, and each restored payment has its event.

    (On PostgreSQL the snapshot need not be a prefix of the trail: sequence
    numbers are taken at insert, and transactions commit in another order.)
    """
    by_seq = {event["seq"]: event for event in source}
    assert all(event == by_seq[event["seq"]] for event in restored)
    accepted = [event["summary"]["payment_id"] for event in restored if event["event"] == "payment.accepted"]
    assert sorted(accepted) == sorted(payments)


def test_sqlite_backup_under_load_restores_into_a_fresh_directory(tmp_path):
    source_db = tmp_path / "live" / "lending.db"
    source_url = f"sqlite:///{source_db}"
    server = ServerProcess(source_db, env={**GENERATED_KEYS, **NO_LIMITS})
    backup_file = tmp_path / "backups" / "lending-1.db"
    outcome = {}
    try:
        metadata = _set_up(server.target)

        def backup() -> None:
            outcome["backup"] = run_cli(
                "backup", str(backup_file), "--database-url", source_url, cwd=tmp_path, **GENERATED_KEYS
            )

        before, everything, took = _while_paying(server, metadata, backup)
    finally:
        assert server.terminate() == 0
    made = outcome["backup"]
    assert made.returncode == 0, made.stderr
    lines = made.stdout.splitlines()
    assert lines[0].startswith(f"backed up {source_db} to {backup_file} in ")
    assert f"schema version {LATEST_VERSION}, integrity ok; 1 user, 6 loans, " in lines[0]
    assert lines[1:] == [
        f"JWT signing key: generated, {source_db}.jwt-key; copied to {backup_file}.jwt-key",
        f"data encryption key: generated, {source_db}.data-key; copied to {backup_file}.data-key",
    ]
    for suffix in (".jwt-key", ".data-key"):
        copy = backup_file.with_name(backup_file.name + suffix)
        assert copy.read_bytes() == source_db.with_name(source_db.name + suffix).read_bytes()
        assert copy.stat().st_mode & 0o777 == 0o600
    assert backup_file.stat().st_mode & 0o777 == 0o600

    # A fresh directory, as on a new machine: restore, then serve it.
    fresh_db = tmp_path / "fresh" / "lending.db"
    fresh_url = f"sqlite:///{fresh_db}"
    restored = run_cli(
        "restore", str(backup_file), "--database-url", fresh_url, cwd=tmp_path, **GENERATED_KEYS
    )
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.splitlines()[1:] == [
        f"JWT signing key: copied {backup_file}.jwt-key to {fresh_db}.jwt-key",
        f"data encryption key: copied {backup_file}.data-key to {fresh_db}.data-key",
        "emails: readable with the data key (1 checked)",
    ]
    again = run_cli("restore", str(backup_file), "--database-url", fresh_url, cwd=tmp_path, **GENERATED_KEYS)
    assert again.returncode == 1
    assert "already exists and holds data: stop the service and pass --force to replace it" in again.stderr

    trail = _audit(fresh_url, tmp_path, **GENERATED_KEYS)  # before the restored server adds to it
    server = ServerProcess(fresh_db, env=GENERATED_KEYS)
    try:
        payments = _check_restored(server.target, before, everything)
    finally:
        assert server.terminate() == 0
    with sqlite3.connect(fresh_db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    source_trail = _audit(source_url, tmp_path, **GENERATED_KEYS)
    _check_audit(trail, source_trail, payments)
    assert trail == source_trail[: len(trail)]  # one writer: the backup's moment cuts the trail in two
    count = len(payments)
    copy_s = float(lines[0].split(" in ", 1)[1].split(" s:", 1)[0])
    print(
        f"\nSQLite: backup command {took:.2f} s (the copy itself {copy_s:.2f} s) during "
        f"{len(everything)} acknowledged payments; restored {count} payments, all {len(before)} "
        "acknowledged before the backup began among them"
    )


def test_a_damaged_backup_is_refused_and_nothing_is_changed(tmp_path):
    source = tmp_path / "live.db"
    assert run_cli("migrate", "--database-url", f"sqlite:///{source}", cwd=tmp_path).returncode == 0
    damaged = tmp_path / "damaged.db"
    shutil.copyfile(source, damaged)
    with open(damaged, "r+b") as handle:  # overwrite the second page: a table's b-tree
        handle.seek(4096)
        handle.write(b"\xff" * 512)
    target = tmp_path / "target" / "lending.db"
    result = run_cli("restore", str(damaged), "--database-url", f"sqlite:///{target}", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"lending-grpc: {damaged} ")
    assert not target.exists()


@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="pg_dump and pg_restore are not installed")
def test_postgresql_pg_dump_under_load_restores_into_a_new_database(postgres, tmp_path):
    url = postgres.create()
    server = ServerProcess(url, env=NO_LIMITS)
    dump = tmp_path / "lending.dump"
    try:
        metadata = _set_up(server.target)

        def backup() -> None:
            # The command docs/operations/backups.md gives.
            subprocess.run(
                ["pg_dump", "--format=custom", "--no-owner", f"--file={dump}", url],
                check=True,
                capture_output=True,
                timeout=60,
            )

        before, everything, took = _while_paying(server, metadata, backup)
    finally:
        assert server.terminate() == 0
    restored_url = postgres.create(migrated=False)  # an empty database, as on a new server
    try:
        subprocess.run(
            ["pg_restore", "--no-owner", "--exit-on-error", f"--dbname={restored_url}", str(dump)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        trail = _audit(restored_url, tmp_path)  # before the restored server adds to it
        server = ServerProcess(restored_url)
        try:
            payments = _check_restored(server.target, before, everything)
        finally:
            assert server.terminate() == 0
        _check_audit(trail, _audit(url, tmp_path), payments)
        count = len(payments)
    finally:
        postgres.drop(restored_url)
        postgres.drop(url)
    print(
        f"\nPostgreSQL: pg_dump in {took:.2f} s during {len(everything)} acknowledged payments; restored "
        f"{count} payments, all {len(before)} acknowledged before the dump began among them"
    )


def test_restore_keeps_what_it_would_replace_unless_forced(tmp_path):
    live = tmp_path / "live" / "lending.db"
    url = f"sqlite:///{live}"
    server = ServerProcess(live, env=GENERATED_KEYS)  # generates its keys
    try:
        _set_up(server.target)
    finally:
        assert server.terminate() == 0
    backup_file = tmp_path / "b.db"
    assert (
        run_cli("backup", str(backup_file), "--database-url", url, cwd=tmp_path, **GENERATED_KEYS).returncode
        == 0
    )
    # Another database with other keys where the backup is to go.
    other = tmp_path / "other" / "lending.db"
    assert run_cli("migrate", "--database-url", f"sqlite:///{other}", cwd=tmp_path).returncode == 0
    other.with_name("lending.db.data-key").write_text("1:" + "A" * 43 + "=\n")
    refused = run_cli(
        "restore", str(backup_file), "--database-url", f"sqlite:///{other}", cwd=tmp_path, **GENERATED_KEYS
    )
    assert refused.returncode == 1
    assert (
        refused.stderr.strip()
        == f"lending-grpc: {other}.data-key holds a different key: pass --force to replace it"
    )
    with sqlite3.connect(other) as conn:
        assert conn.execute('SELECT count(*) FROM "user"').fetchone() == (0,)  # untouched
    forced = run_cli(
        "restore",
        str(backup_file),
        "--force",
        "--database-url",
        f"sqlite:///{other}",
        cwd=tmp_path,
        **GENERATED_KEYS,
    )
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.splitlines()[-1] == "emails: readable with the data key (1 checked)"
    assert (
        other.with_name("lending.db.data-key").read_bytes()
        == live.with_name("lending.db.data-key").read_bytes()
    )
    # A service configured with another data key is told its emails are lost before it serves.
    elsewhere = tmp_path / "elsewhere" / "lending.db"
    wrong_key = run_cli("restore", str(backup_file), "--database-url", f"sqlite:///{elsewhere}", cwd=tmp_path)
    assert wrong_key.returncode == 1
    assert wrong_key.stderr.strip() == (
        "emails: NOT readable with this data key (sealed value failed authentication (wrong key, row or "
        "tampering)): configure the key the backup was made with"
    )
    # PostgreSQL has its own tools: the command says which.
    postgres = run_cli(
        "backup",
        str(tmp_path / "pg.db"),
        "--database-url",
        "postgresql://u@db.internal/lending",
        cwd=tmp_path,
    )
    assert postgres.returncode == 2
    assert (
        "pg_dump --format=custom --no-owner --file=lending.dump 'postgresql://u@db.internal/lending'"
        in postgres.stderr
    )
