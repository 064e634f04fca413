"""`make bench-scale`: does a call cost the same with 1,000 and with 1,000,000 loans?

Seeds one SQLite database per size with `python -m bench.seed` (10 users, histories
judged as of 2026-06-01; reused from var/bench/ when already seeded, set
BENCH_SCALE_RESEED=1 to rebuild), records the seeding time and the bytes
per loan, then measures in-process, below gRPC (so the database's share is
not diluted by the RPC's fixed cost), interleaving the sizes block by block:

- GetLoan, GetOutstanding and GetDelinquencyStatus: the servicer's core
  call and protobuf conversion for random loans of one user, spread over
  the whole table;
- MakePayment: one installment on random loans (a write with fsync);
- ListDelinquentLoans: the first 100-row page, and the page after it, as of
  dates from two years before to two years after the seeding date.

It prints and writes bench/results/scale.md, with EXPLAIN QUERY PLAN of the
portfolio query, on SQLite and (BENCH_SCALE_PG_URL, seeded with
BENCH_SCALE_PG_LOANS loans) PostgreSQL. Knobs: BENCH_SCALE_SIZES ("1000,1000000"), BENCH_SCALE_CALLS
(calls per block, 400), BENCH_SCALE_BLOCKS (blocks per size, 5).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "generated"))

AS_OF = dt.date(2026, 6, 1)
USERS = 10
SIZES = [int(s) for s in os.environ.get("BENCH_SCALE_SIZES", "1000,1000000").split(",")]
CALLS = int(os.environ.get("BENCH_SCALE_CALLS", "400"))
BLOCKS = int(os.environ.get("BENCH_SCALE_BLOCKS", "5"))
VAR = ROOT / "var" / "bench"
OUT = Path(os.environ.get("BENCH_SCALE_OUT", ROOT / "bench/results/scale.md"))
# PostgreSQL's plan is shown too when a server is reachable (set BENCH_SCALE_PG_URL= to skip).
PG_URL = os.environ.get("BENCH_SCALE_PG_URL", "postgresql://postgres@127.0.0.1:5432/lending_bench_scale")
PG_LOANS = int(os.environ.get("BENCH_SCALE_PG_LOANS", "200000"))
OPS = ("GetLoan", "GetOutstanding", "GetDelinquencyStatus", "MakePayment", "ListDelinquentLoans page")


def seed_database(loans: int) -> dict:
    """Seed (or reuse) the database of ``loans`` loans; return its path and figures."""
    path = VAR / f"scale-{loans}.db"
    info_path = path.with_suffix(".json")
    if path.exists() and info_path.exists() and not os.environ.get("BENCH_SCALE_RESEED"):
        return json.loads(info_path.read_text())
    VAR.mkdir(parents=True, exist_ok=True)
    for stale in VAR.glob(f"scale-{loans}.db*"):
        stale.unlink()
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "bench.seed", "--loans", str(loans), "--users", str(USERS),
         "--as-of", AS_OF.isoformat(), "--database-url", f"sqlite:///{path}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
        env={**os.environ, "LENDING_SECRET_KEY": "x" * 40},
    )  # fmt: skip
    info = {
        "path": str(path),
        "loans": loans,
        "seconds": time.perf_counter() - started,
        "report": out.stdout.strip(),
    }
    info_path.write_text(json.dumps(info))
    return info


# -- one measurement block, in a child process (a process serves one database) ----


def measure_block(path: str, loans: int, calls: int, block: int) -> dict:
    from lending.v1 import billing_pb2

    from lending_grpc.api import messages
    from lending_grpc.core import pagination
    from lending_grpc.core.billing import BillingCore
    from lending_grpc.core.clock import Clock
    from lending_grpc.core.money import format_cents
    from lending_grpc.core.storage.database import close_database, open_database
    from lending_grpc.core.storage.models import User
    from lending_grpc.core.views import Actor, Principal

    db = open_database(f"sqlite:///{path}")
    billing = BillingCore(db, Clock(), pagination.PageTokens(b"k" * 32))
    owner = User.get(User.username == "seed-0").id
    actor = Actor(principal=Principal(owner, "seed-0"), name="bench")
    rng = random.Random(block * 7919 + loans)
    # seed-0 owns the loans whose row id is a multiple of USERS (round-robin seeding)
    ids = [f"S-{rng.randrange(USERS, loans + 1, USERS):08d}" for _ in range(calls)]
    timings: dict[str, float] = {}

    def timed(name: str, fn) -> None:
        for loan_id in ids[:20]:  # warm the statement cache and the pages
            fn(loan_id)
        started = time.perf_counter()
        for loan_id in ids:
            fn(loan_id)
        timings[name] = (time.perf_counter() - started) / len(ids) * 1e6

    timed("GetLoan", lambda loan_id: messages.loan(billing.get_loan(owner, loan_id)))
    timed("GetOutstanding", lambda loan_id: messages.outstanding(billing.get_loan(owner, loan_id)))
    timed(
        "GetDelinquencyStatus",
        lambda loan_id: messages.delinquency(billing.get_delinquency(owner, loan_id, AS_OF.isoformat())),
    )
    # MakePayment: one installment of loans with two or more left, found before the clock starts.
    payable, left = [], {}
    for loan_id in ids:
        view = billing.get_loan(owner, loan_id)
        left.setdefault(loan_id, view.terms.term_weeks - view.paid_weeks)
        if left[loan_id] >= 2:
            left[loan_id] -= 1
            payable.append((loan_id, format_cents(view.terms.weekly_cents)))
    started = time.perf_counter()
    for i, (loan_id, amount) in enumerate(payable):
        messages.payment(billing.make_payment(actor, loan_id, amount, f"scale-{block}-{i}-{time.time_ns()}"))
    timings["MakePayment"] = (time.perf_counter() - started) / max(len(payable), 1) * 1e6

    # Portfolio pages: the first 100 and the next 100, as of dates around the seeding date.
    page_ms = []
    for days in range(-730, 731, 73):
        as_of = (AS_OF + dt.timedelta(days=days)).isoformat()
        started = time.perf_counter()
        page = billing.list_delinquent(owner, as_of, 100)
        billing_pb2.ListDelinquentLoansResponse(
            loans=[messages.delinquency(v) for v in page.items], next_page_token=page.next_page_token
        )
        page_ms.append((time.perf_counter() - started) * 1000)
        if page.next_page_token:
            started = time.perf_counter()
            billing.list_delinquent(owner, "", 100, page.next_page_token)
            page_ms.append((time.perf_counter() - started) * 1000)
    timings["ListDelinquentLoans page"] = statistics.median(page_ms) * 1000
    timings["page_max_ms"] = max(page_ms)
    timings["page_ms"] = page_ms
    close_database(db)
    return timings


def explain(url: str) -> str:
    from peewee import Tuple

    from lending_grpc.core.storage.database import close_database, open_database
    from lending_grpc.core.storage.models import Loan, User

    db = open_database(url)
    postgres = url.startswith("postgresql")
    try:
        owner = User.get(User.username == "seed-0").id
        day, last_due = AS_OF, AS_OF - dt.timedelta(days=30)
        first = (
            Loan.select()
            .where(Loan.owner == owner)
            .where(Loan.second_unpaid_due_date < day)
            .order_by(Loan.second_unpaid_due_date, Loan.id)
            .limit(101)
        )
        after = (
            Loan.select()
            .where(Loan.owner == owner)
            .where(Tuple(Loan.second_unpaid_due_date, Loan.id) > Tuple(last_due, 12345))
            .where(Loan.second_unpaid_due_date < day)
            .order_by(Loan.second_unpaid_due_date, Loan.id)
            .limit(101)
        )
        lines = []
        for label, query in (("first page", first), ("next page (after a page token)", after)):
            sql, params = query.sql()
            prefix = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " if postgres else "EXPLAIN QUERY PLAN "
            plan = db.execute_sql(prefix + sql, params).fetchall()
            lines += [f"-- {label}", sql, *[f"  {row[-1]}" for row in plan], ""]
        return "\n".join(lines)
    finally:
        close_database(db)


def explain_postgres() -> str:
    """Seed a fresh PostgreSQL database with PG_LOANS loans and explain the portfolio query there."""
    base, name = PG_URL.rsplit("/", 1)
    for sql in (f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'):
        subprocess.run(["psql", f"{base}/postgres", "-qc", sql], check=True, capture_output=True)
    subprocess.run(
        [sys.executable, "-m", "bench.seed", "--loans", str(PG_LOANS),
         "--users", str(USERS), "--as-of", AS_OF.isoformat(), "--no-progress", "--database-url", PG_URL],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    subprocess.run(["psql", PG_URL, "-qc", "ANALYZE"], check=True, capture_output=True)
    out = subprocess.run(
        [sys.executable, __file__, "--explain", PG_URL], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return out.stdout.strip()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--explain":
        print(explain(sys.argv[2]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--block":
        path, loans, block = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(measure_block(path, loans, CALLS, block)))
        return 0
    seeded = {}
    for loans in SIZES:
        print(f"seeding {loans} loans (or reusing var/bench)...", file=sys.stderr)
        seeded[loans] = seed_database(loans)
    results: dict[int, list[dict]] = {loans: [] for loans in SIZES}
    for block in range(BLOCKS):
        for loans in SIZES:  # interleaved: both sizes see the same disk and the same neighbours
            out = subprocess.run(
                [sys.executable, __file__, "--block", seeded[loans]["path"], str(loans), str(block)],
                capture_output=True, text=True, check=True, cwd=ROOT,
            )  # fmt: skip
            results[loans].append(json.loads(out.stdout))
            print(f"block {block} {loans:>9} loans: {results[loans][-1]}", file=sys.stderr)
    small, large = SIZES[0], SIZES[-1]
    med = {n: {op: statistics.median(r[op] for r in results[n]) for op in OPS} for n in SIZES}
    lines = [
        "# 1,000 vs 1,000,000 loans",
        "",
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores, load average"
        f" {os.getloadavg()[0]:.1f} at the end (other work shares the machine); SQLite (WAL,"
        " synchronous=FULL); in-process core call + protobuf conversion, below gRPC.",
        f"- {BLOCKS} blocks of {CALLS} calls per size, sizes interleaved; median of the blocks' means"
        " (in brackets: the lowest and highest block)."
        " Reads and payments hit random loans of one user spread over the whole table.",
        "",
        "| operation | " + " | ".join(f"{n:,} loans" for n in SIZES) + f" | {large:,} / {small:,} |",
        "| --- | " + " | ".join("---:" for _ in SIZES) + " | ---: |",
    ]
    for op in OPS:
        unit = "us/call" if op != "ListDelinquentLoans page" else "us/page (median)"
        spread = {n: (min(r[op] for r in results[n]), max(r[op] for r in results[n])) for n in SIZES}
        cells = " | ".join(f"{med[n][op]:.0f} {unit} ({spread[n][0]:.0f}-{spread[n][1]:.0f})" for n in SIZES)
        lines.append(f"| {op} | {cells} | {med[large][op] / med[small][op]:.2f} |")
    pages = sorted(ms for r in results[large] for ms in r["page_ms"])
    p99 = pages[max(0, round(0.99 * len(pages)) - 1)]
    lines += [
        "",
        f"- 100-row ListDelinquentLoans pages at {large:,} loans ({len(pages)} pages: first and next pages"
        f" as of 21 dates, {BLOCKS} blocks): median {statistics.median(pages):.1f} ms,"
        f" p99 {p99:.1f} ms, slowest {pages[-1]:.1f} ms (target < 50 ms).",
        "",
        "Seeding (`python -m bench.seed --users 10`):",
        "",
    ]
    for n in SIZES:
        lines += [f"- {n:,} loans: {seeded[n]['report'].replace(chr(10), '; ')}"]
    lines += ["", "EXPLAIN QUERY PLAN of the portfolio query (SQLite, at the largest size):", "", "```"]
    lines += [explain(f"sqlite:///{seeded[large]['path']}"), "```"]
    if PG_URL:
        lines += ["", f"PostgreSQL, {PG_LOANS:,} loans over {USERS} users (EXPLAIN ANALYZE):", "", "```"]
        lines += [explain_postgres(), "```"]
    report = "\n".join(lines) + "\n"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
