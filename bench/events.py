"""The event log's figures: what the outbox row costs a payment, and how soon a watcher hears of it.

    python -m bench.events            (make bench runs it and puts the result in its report)

1. Write cost: MakePayment through BillingCore on one database, in blocks
   that alternate between the real event log and one whose `record` does
   nothing (same process, same file, same fsyncs), so the ratio of the two
   throughputs is what the outbox row costs. SQLite and PostgreSQL.
2. Latency: a real server (`lending-grpc serve`, 1 and 2 workers, SQLite
   and PostgreSQL) and a WatchEvents stream on it; each MakePayment's reply
   time to the arrival of its PAYMENT_ACCEPTED event on the stream, p50 and
   p99. With 2 workers the payment and the stream are on different
   connections, so either worker may serve either.

Prints one JSON object; knobs: BENCH_EVENTS_CALLS (payments per block,
200), BENCH_EVENTS_BLOCKS (8), BENCH_EVENTS_LATENCY_CALLS (200),
BENCH_PG_URL (as make bench).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "generated"))

CALLS = int(os.environ.get("BENCH_EVENTS_CALLS", "200"))
BLOCKS = int(os.environ.get("BENCH_EVENTS_BLOCKS", "8"))
LATENCY_CALLS = int(os.environ.get("BENCH_EVENTS_LATENCY_CALLS", "200"))
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/lending_bench")
SECRET = "bench-secret-key-of-at-least-32-bytes-0000000"
DATA_KEY = base64.b64encode(b"bench-data-key-of-32-bytes-00000").decode()


def _reset_postgres(url: str) -> None:
    base, name = url.rsplit("/", 1)
    for sql in (f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'):
        subprocess.run(["psql", f"{base}/postgres", "-qc", sql], check=True, capture_output=True)


def write_cost(url: str) -> dict:
    """Payments per second with and without the event row, alternating blocks on one database."""
    from lending_grpc.core import event_log, pagination
    from lending_grpc.core.billing import BillingCore
    from lending_grpc.core.clock import Clock
    from lending_grpc.core.storage.database import close_database, open_database
    from lending_grpc.core.storage.migrations import migrate
    from lending_grpc.core.storage.models import User
    from lending_grpc.core.views import Actor, Principal

    db = open_database(url)
    real_record = event_log.record
    try:
        migrate(db)
        with db.unit_of_work():
            User.insert(
                user_id="00000000-0000-4000-8000-000000000001",
                username="bench",
                username_key="bench",
                email="",
                password_hash="x",
                create_time_us=0,
            ).execute()
            owner = User.get(User.username == "bench").id
            actor = Actor(principal=Principal(owner, "00000000-0000-4000-8000-000000000001"), name="bench")
            billing = BillingCore(db, Clock(), pagination.PageTokens(b"k" * 32))
            loans = BLOCKS * 2 * CALLS // 500 + 2  # both halves of the blocks pay, 500 payments a loan
            for n in range(loans):
                billing.create_loan(actor, f"W{n}", "5000000", term_weeks=520)
        rates: dict[str, list[float]] = {"with events": [], "without events": []}
        paid = 0
        for block in range(BLOCKS * 2):
            label = "with events" if block % 2 == 0 else "without events"
            event_log.record = real_record if label == "with events" else (lambda *a, **k: None)
            started = time.perf_counter()
            with db.unit_of_work():
                for _ in range(CALLS):
                    loan = f"W{paid // 500}"
                    billing.make_payment(actor, loan, "10576.92", f"w{paid}")
                    paid += 1
            rates[label].append(CALLS / (time.perf_counter() - started))
    finally:
        event_log.record = real_record
        close_database(db)
    with_, without = statistics.median(rates["with events"]), statistics.median(rates["without events"])
    return {"with_per_s": with_, "without_per_s": without, "ratio": with_ / without}


def _serve(url: str, workers: int, log: Path) -> tuple[subprocess.Popen, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENDING_")}
    env.update(
        LENDING_SECRET_KEY=SECRET,
        LENDING_DATA_KEY=DATA_KEY,
        LENDING_RATE_LIMIT_USER_PER_SECOND="0",
        LENDING_RATE_LIMIT_PEER_PER_SECOND="0",
        LENDING_INSECURE_FAST_PASSWORD_HASH="true",
        LENDING_DRAIN_DELAY_SECONDS="0",
    )
    argv = [sys.executable, "-m", "lending_grpc", "serve", "--listen", "127.0.0.1:0", "--database-url", url]
    if workers > 1:
        argv += ["--workers", str(workers)]
    out = open(log, "w")  # noqa: SIM115
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=out, env=env, cwd=ROOT, start_new_session=True
    )
    deadline = time.monotonic() + 60
    import re

    while time.monotonic() < deadline:
        match = re.search(r"serving on [^\s]+:(\d+)", log.read_text())
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(log.read_text()[-2000:])


def latency(url: str, workers: int) -> dict:
    """MakePayment's reply to the watcher receiving its event: p50 and p99 in milliseconds."""
    import grpc
    from lending.v1 import auth_pb2, auth_pb2_grpc, billing_pb2, billing_pb2_grpc, events_pb2, events_pb2_grpc

    work = Path(tempfile.mkdtemp())
    proc, port = _serve(url, workers, work / "server.log")
    try:
        target = f"127.0.0.1:{port}"
        writer_channel = grpc.insecure_channel(target)
        watcher_channel = grpc.insecure_channel(target)
        auth = auth_pb2_grpc.AuthServiceStub(writer_channel)
        auth.Register(auth_pb2.RegisterRequest(username="watcher", password="correct horse", email="w@x.io"))
        token = auth.Login(auth_pb2.LoginRequest(username="watcher", password="correct horse")).access_token
        md = (("authorization", f"Bearer {token}"),)
        billing = billing_pb2_grpc.BillingServiceStub(writer_channel)
        billing.CreateLoan(
            billing_pb2.CreateLoanRequest(loan_id="L", principal_amount="5000000", term_weeks=520),
            metadata=md,
        )
        replied: dict[str, float] = {}
        delays: list[float] = []
        done = threading.Event()

        def watch() -> None:
            stream = events_pb2_grpc.EventServiceStub(watcher_channel).WatchEvents(
                events_pb2.WatchEventsRequest(after_sequence=0), metadata=md
            )
            try:
                for event in stream:
                    if event.HasField("payment"):
                        arrived = time.perf_counter()
                        key = event.payment.request_id
                        while key not in replied:  # the reply may be processed after the event
                            time.sleep(0.0001)
                        delays.append(arrived - replied[key])
                        if len(delays) == LATENCY_CALLS:
                            done.set()
                            stream.cancel()
            except grpc.RpcError:
                done.set()

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        time.sleep(1.0)
        for n in range(LATENCY_CALLS):
            billing.MakePayment(
                billing_pb2.MakePaymentRequest(loan_id="L", amount="10576.92", request_id=f"p{n}"),
                metadata=md,
            )
            replied[f"p{n}"] = time.perf_counter()
            time.sleep(0.01)
        done.wait(60)
        delays.sort()
        ms = [max(d, 0.0) * 1000 for d in delays]
        return {
            "events": len(ms),
            "p50_ms": ms[len(ms) // 2] if ms else None,
            "p99_ms": ms[max(0, round(0.99 * len(ms)) - 1)] if ms else None,
        }
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait(20)


def main() -> int:
    results: dict = {"write_cost": {}, "latency": {}}
    work = Path(tempfile.mkdtemp())
    results["write_cost"]["sqlite"] = _child("--write-cost", f"sqlite:///{work / 'cost.db'}")
    pg = None
    try:
        _reset_postgres(PG_URL)
        pg = PG_URL
    except (OSError, subprocess.CalledProcessError) as exc:
        results["postgresql_skipped"] = str(exc)
    if pg:
        results["write_cost"]["postgresql"] = _child("--write-cost", pg)
    for backend in ("sqlite", "postgresql"):
        for workers in (1, 2):
            if backend == "postgresql":
                if not pg:
                    continue
                _reset_postgres(pg)
                url = pg
            else:
                url = f"sqlite:///{work / f'latency-{workers}.db'}"
            results["latency"][f"{backend}-{workers}w"] = latency(url, workers)
    print(json.dumps(results))
    return 0


def _child(flag: str, url: str) -> dict:
    """Run one measurement in a process of its own (a process serves one database)."""
    out = subprocess.run([sys.executable, __file__, flag, url], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write-cost":
        print(json.dumps(write_cost(sys.argv[2])))
        raise SystemExit(0)
    raise SystemExit(main())
