"""Relay throughput for `make bench`: how fast `lending-grpc relay` drains a backlog into JetStream.

``seed_events`` writes a backlog straight into the event log through
``core/event_log.record`` (one loan, payment events with realistic payloads),
numbered before the clock starts. ``measure`` runs the real command
(`python -m lending_grpc relay`) into a fresh stream and reads the
throughput off the stream itself: events over the time between the first
and the last message's JetStream timestamps, so process start-up and
connecting are left out (the wall time, start-up included, is reported too).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NATS_URL = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")
START_NATS = (
    "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- "
    "-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
)


def seed_events(database_url: str, events: int) -> None:
    """Migrate, then record ``events`` PAYMENT_ACCEPTED events for one loan, numbered."""
    from bench import seed
    from lending_grpc.core import event_log, pagination
    from lending_grpc.core.billing import BillingCore
    from lending_grpc.core.clock import Clock
    from lending_grpc.core.storage.database import close_database, open_database
    from lending_grpc.core.storage.migrations import migrate
    from lending_grpc.core.storage.models import Loan, User
    from lending_grpc.core.views import Actor, PaymentView, Principal

    db = open_database(database_url)
    try:
        migrate(db)
        owner = seed._ensure_users(db, 1, seed.SEED_PASSWORD)[0]
        user = User.get_by_id(owner)
        actor = Actor(principal=Principal(user.id, user.user_id), name="bench")
        billing = BillingCore(db, Clock(), pagination.PageTokens(b"k" * 32))
        loan_id = f"relay-{uuid.uuid4().hex[:8]}"
        with db.unit_of_work():
            billing.create_loan(actor, loan_id, "1000000.00", start_date="2026-01-05", term_weeks=520)
        loan_pk = Loan.get((Loan.owner == owner) & (Loan.loan_id == loan_id)).id
        now_us = time.time_ns() // 1000
        value_date = dt.date(2026, 1, 12)
        with db.unit_of_work(), db.atomic():
            for i in range(events):
                payment = PaymentView(
                    payment_id=str(uuid.uuid4()),
                    loan_id=loan_id,
                    amount_cents=211_538,
                    payment_time_us=now_us + i,
                    first_week=i % 520 + 1,
                    last_week=i % 520 + 1,
                    outstanding_after_cents=110_000_000 - 211_538 * (i % 520 + 1),
                    request_id=uuid.uuid4().hex,
                    value_date=value_date,
                )
                event_log.record(
                    db,
                    event_log.PAYMENT_ACCEPTED,
                    loan_pk=loan_pk,
                    loan_id=loan_id,
                    owner_pk=owner,
                    owner_user_id=user.user_id,
                    occur_time_us=now_us + i,
                    effective_date=value_date,
                    resource=payment,
                )
        with db.unit_of_work():
            event_log.assign_sequences(db)  # PostgreSQL: numbered now, not on the relay's clock
    finally:
        close_database(db)


async def _stream_state(stream: str):
    """(messages, first message's time, last message's time); (0, None, None) before the stream exists."""
    import nats
    import nats.js.errors

    nc = await nats.connect(NATS_URL, allow_reconnect=False, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        try:
            state = (await js.stream_info(stream)).state
        except nats.js.errors.NotFoundError:
            return 0, None, None
        first = last = None
        if state.messages:
            first = (await js.get_msg(stream, state.first_seq)).time
            last = (await js.get_msg(stream, state.last_seq)).time
        return state.messages, first, last
    finally:
        await nc.close()


async def _delete_stream(stream: str) -> None:
    import nats

    nc = await nats.connect(NATS_URL, allow_reconnect=False, max_reconnect_attempts=1)
    try:
        await nc.jetstream().delete_stream(stream)
    except Exception:
        pass
    finally:
        await nc.close()


def nats_problem() -> str | None:
    """None when JetStream answers at NATS_URL; else what is wrong and how to start it."""

    async def check() -> None:
        import nats

        nc = await nats.connect(NATS_URL, allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=2)
        try:
            await nc.jetstream().account_info()
        finally:
            await nc.close()

    try:
        asyncio.run(check())
    except Exception as exc:
        return f"NATS JetStream at {NATS_URL} is not usable ({type(exc).__name__}); start it: {START_NATS}"
    return None


def measure(
    database_url: str, events: int, *, max_in_flight: int | None = None, timeout: float = 300
) -> dict:
    """Run the relay into a fresh stream until it holds ``events`` messages; the figures."""
    stream = f"BENCH_RELAY_{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, "-m", "lending_grpc", "relay", NATS_URL, "--stream", stream]
    argv += ["--subject-prefix", f"bench.{stream.lower()}", "--database-url", database_url]
    if max_in_flight is not None:
        argv += ["--max-in-flight", str(max_in_flight)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENDING_")}
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        count, first, last = 0, None, None
        while time.monotonic() - started < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"the relay exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            count, first, last = asyncio.run(_stream_state(stream))
            if count >= events:
                break
            time.sleep(0.1)
        wall = time.monotonic() - started
        if count < events:
            raise RuntimeError(f"the relay published {count} of {events} events in {timeout:.0f}s")
        span = (last - first).total_seconds()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        return {
            "events": count,
            "events_per_s": (count - 1) / span if span > 0 else float("inf"),
            "wall_s": wall,
            "exit_code": code,
        }
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        asyncio.run(_delete_stream(stream))


EVENTS = int(os.environ.get("BENCH_RELAY_EVENTS", "20000"))
MODES = ((None, "pipelined (default, 256 in flight)"), (1, "each ack awaited (--max-in-flight 1)"))


def run_all(work: Path, pg_url: str | None) -> tuple[list[dict], list[str]]:
    """Relay figures on SQLite (and PostgreSQL at ``pg_url``), both publish modes; rows and notes."""
    problem = nats_problem()
    if problem:
        return [], [f"Relay throughput skipped: {problem}."]
    backends = [("sqlite", f"sqlite:///{work / 'relay.db'}")]
    if pg_url:
        backends.append(("postgresql", pg_url))
    rows, notes = [], []
    for backend, url in backends:
        try:
            seed_events(url, EVENTS)
        except Exception as exc:  # PostgreSQL away: bench the rest
            notes.append(f"Relay on {backend}: could not seed ({type(exc).__name__}: {exc}); skipped.")
            continue
        for window, mode in MODES:
            result = measure(url, EVENTS, max_in_flight=window)
            rows.append({"backend": backend, "mode": mode, **result})
            print(
                f"relay {backend:10} {mode:40} {result['events_per_s']:8.0f} events/s",
                file=sys.stderr,
            )
    return rows, notes


def report_lines(rows: list[dict]) -> list[str]:
    """The report's relay section (Markdown)."""
    if not rows:
        return []
    lines = [
        "",
        f"Relay throughput into JetStream (`lending-grpc relay`, a backlog of {EVENTS} events drained into"
        " a fresh stream; events/s between the first and last message's JetStream timestamps; the wall"
        " time includes the process start):",
        "",
        "| database | publishing | events/s | wall s | exit |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['backend']} | {row['mode']} | {row['events_per_s']:.0f} | {row['wall_s']:.1f} | "
            f"{row['exit_code']} |"
        )
    return lines


if __name__ == "__main__":  # a quick look: python bench/relay.py [EVENTS]
    import tempfile

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "generated"))
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/relay.db"
        seed_events(url, n)
        for window in (1, None):
            print(window, measure(url, n, max_in_flight=window))
