"""`make bench-scale`: does a call cost the same on a 1,000-loan and a 1,000,000-loan book?

Seeds one database per size and backend with `python -m bench.seed` (10
users; start dates over the past two years, payments spread over them,
about one payment in ten recorded days after its value date, one in forty a
bounced attempt that was reversed), reused from var/bench/ (SQLite) or the
lending_bench_scale_* databases (PostgreSQL) when already seeded; set
BENCH_SCALE_RESEED=1 to rebuild. Then measures in-process, below gRPC (so
the database's share is not diluted by the RPC's fixed cost), interleaving
the sizes block by block:

- GetLoan, GetOutstanding, GetDelinquencyStatus (today and 90 days ago):
  the core call and protobuf conversion for random loans of one user;
- MakePayment (one installment) and ReversePayment (a random payment of a
  random loan): writes with fsync, whose cost must not grow with the book.
  An operator makes them, each on a different loan of any owner that the
  bench has not touched before, so both books' loans are in the state the
  seeder left them in. The small book is restored from a copy taken after
  seeding before each of its blocks: it has too few loans to spare, and a
  loan paid a dozen times (the 1,000-loan book's 100 loans of one user, in
  4 blocks of 300 calls, before this rule) is ahead of schedule and skips the
  delinquency bookkeeping a payment on a seeded loan does, which made the
  small book look cheaper than any book is on a loan's first payment;
- ListDelinquentLoans: a 100-row page as of today and as of 90 days ago,
  for one owner and for the whole book (operators' all_owners);
- GetPortfolioReport for the whole book as of today and 90 days ago
  (largest size only: the report scans the book by design).

Writes bench/results/scale.md, the same figures as scale.json, and draws
them in scale.png (per-call cost against book size; bench/charts.py). On a
terminal, bars show the seeding and count the measuring steps. Knobs:
BENCH_SCALE_SIZES ("1000,1000000"), BENCH_SCALE_CALLS (calls per block, 300),
BENCH_SCALE_BLOCKS (4), BENCH_SCALE_BACKENDS ("sqlite,postgresql"),
BENCH_SCALE_PG_URL (the server, postgresql://postgres@127.0.0.1:5432),
BENCH_SCALE_VAR (where the SQLite books are kept, var/bench),
BENCH_SCALE_OUT (bench/results/scale.md).
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
import zoneinfo
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "generated"))

from bench import charts  # noqa: E402
from lending_grpc.cli.progress import progress  # noqa: E402

TODAY = dt.datetime.now(zoneinfo.ZoneInfo("Asia/Jakarta")).date()
PAST = TODAY - dt.timedelta(days=90)
USERS = 10
SIZES = [int(s) for s in os.environ.get("BENCH_SCALE_SIZES", "1000,1000000").split(",")]
CALLS = int(os.environ.get("BENCH_SCALE_CALLS", "300"))
BLOCKS = int(os.environ.get("BENCH_SCALE_BLOCKS", "4"))
BACKENDS = [b for b in os.environ.get("BENCH_SCALE_BACKENDS", "sqlite,postgresql").split(",") if b]
PG_SERVER = os.environ.get("BENCH_SCALE_PG_URL", "postgresql://postgres@127.0.0.1:5432")
VAR = Path(os.environ.get("BENCH_SCALE_VAR", ROOT / "var" / "bench"))
OUT = Path(os.environ.get("BENCH_SCALE_OUT", ROOT / "bench/results/scale.md"))
PER_CALL = (
    "GetLoan",
    "GetOutstanding",
    "GetDelinquencyStatus (today)",
    "GetDelinquencyStatus (90 days ago)",
    "MakePayment",
    "ReversePayment",
)
PAGES = (
    "ListDelinquentLoans page, one owner, today",
    "ListDelinquentLoans page, one owner, 90 days ago",
    "ListDelinquentLoans page, all owners, today",
    "ListDelinquentLoans page, all owners, 90 days ago",
)
REPORTS = ("GetPortfolioReport, whole book, today", "GetPortfolioReport, whole book, 90 days ago")


def _sqlite_file(loans: int) -> Path:
    return VAR / f"scale-{loans}.db"


def _pg_name(loans: int) -> str:
    return f"lending_bench_scale_{loans}"


def database_url(backend: str, loans: int) -> str:
    if backend == "sqlite":
        return f"sqlite:///{_sqlite_file(loans)}"
    return f"{PG_SERVER}/{_pg_name(loans)}"


def _marker(backend: str, loans: int) -> Path:
    return VAR / f"scale-{backend}-{loans}.json"


def _psql(sql: str) -> str:
    return subprocess.run(
        ["psql", f"{PG_SERVER}/postgres", "-Atqc", sql], check=True, capture_output=True, text=True
    ).stdout.strip()


def _recreate_pg(name: str, template: str | None = None) -> None:
    """Drop the PostgreSQL database ``name`` and create it anew, empty or a copy of ``template``."""
    _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    copy = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
    _psql(f'CREATE DATABASE "{name}"{copy}')


def _remove_sqlite(loans: int) -> None:
    for stale in VAR.glob(f"{_sqlite_file(loans).name}*"):  # with its -wal and -shm
        stale.unlink()


def seed_database(backend: str, loans: int) -> dict:
    """Seed (or reuse) the database of ``loans`` loans on ``backend``; return its URL and figures."""
    marker = _marker(backend, loans)
    url = database_url(backend, loans)
    reusable = marker.exists() and (loans != SIZES[0] or _has_pristine(backend, loans))
    if reusable and not os.environ.get("BENCH_SCALE_RESEED"):
        return json.loads(marker.read_text())
    VAR.mkdir(parents=True, exist_ok=True)
    if backend == "sqlite":
        _remove_sqlite(loans)
    else:
        _recreate_pg(_pg_name(loans))
    started = time.perf_counter()
    print(f"seeding {loans:,} loans on {backend} ({url})", file=sys.stderr)
    # The seeder's stderr is ours: its bar shows on a terminal (it stays quiet elsewhere).
    out = subprocess.run(
        [sys.executable, "-m", "bench.seed", "--loans", str(loans), "--users", str(USERS),
         "--as-of", TODAY.isoformat(), "--database-url", url],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True,
    )  # fmt: skip
    if backend == "postgresql":
        subprocess.run(["psql", url, "-qc", "VACUUM ANALYZE"], check=True, capture_output=True)
    info = {
        "url": url,
        "loans": loans,
        "seconds": time.perf_counter() - started,
        "report": out.stdout.strip(),
    }
    if loans == SIZES[0]:
        _keep_pristine(backend, loans)
    marker.write_text(json.dumps(info))
    return info


def _pristine(backend: str, loans: int) -> str:
    """Where the copy of the freshly seeded book is kept: a file or a database name."""
    if backend == "sqlite":
        return str(VAR / f"scale-{loans}.seeded.db")
    return f"{_pg_name(loans)}_seeded"


def _has_pristine(backend: str, loans: int) -> bool:
    if backend == "sqlite":
        return Path(_pristine(backend, loans)).exists()
    return _psql(f"SELECT 1 FROM pg_database WHERE datname = '{_pristine(backend, loans)}'") == "1"


def _keep_pristine(backend: str, loans: int) -> None:
    """Copy the freshly seeded book aside, for `restore_database`."""
    copy = _pristine(backend, loans)
    if backend == "postgresql":
        _recreate_pg(copy, template=_pg_name(loans))
        return
    import sqlite3

    Path(copy).unlink(missing_ok=True)
    with sqlite3.connect(_sqlite_file(loans)) as source, sqlite3.connect(copy) as target:
        source.backup(target)


def restore_database(backend: str, loans: int) -> None:
    """Put the book back as the seeder left it (the small book, before each of its blocks)."""
    copy = _pristine(backend, loans)
    if backend == "postgresql":
        _recreate_pg(_pg_name(loans), template=copy)
        return
    import shutil

    _remove_sqlite(loans)
    shutil.copyfile(copy, _sqlite_file(loans))


# -- one measurement block, in a child process (a process serves one database) ----


def measure_block(url: str, loans: int, calls: int, block: int) -> dict:
    from lending.v1 import billing_pb2

    from lending_grpc.api import messages
    from lending_grpc.core import pagination
    from lending_grpc.core.billing import BillingCore
    from lending_grpc.core.clock import Clock
    from lending_grpc.core.delinquency import DelinquencyCore
    from lending_grpc.core.storage.database import close_database, open_database
    from lending_grpc.core.storage.models import User
    from lending_grpc.core.views import Actor, Principal

    db = open_database(url)
    clock, tokens = Clock(), pagination.PageTokens(b"k" * 32)
    billing = BillingCore(db, clock, tokens)
    delinquency = DelinquencyCore(db, clock, tokens, billing)
    seed0 = User.get(User.username == "seed-0")
    owner = seed0.id
    operator = Actor(principal=Principal(owner, seed0.user_id, "operator"), name="bench-operator")
    rng = random.Random(block * 7919 + loans)
    # seed-0 owns the loans whose row id is a multiple of USERS (round-robin seeding)
    ids = [f"S-{rng.randrange(USERS, loans + 1, USERS):08d}" for _ in range(calls)]
    timings: dict[str, float] = {}

    def timed(name: str, fn, items) -> None:
        items = list(items)
        for item in items[:10]:  # warm the statement cache and the pages
            fn(item)
        started = time.perf_counter()
        for item in items[10:]:
            fn(item)
        timings[name] = (time.perf_counter() - started) / max(len(items) - 10, 1) * 1e6

    with db.unit_of_work():
        timed("GetLoan", lambda loan_id: messages.loan(billing.get_loan(owner, loan_id)), ids)
        timed("GetOutstanding", lambda loan_id: messages.outstanding(billing.get_loan(owner, loan_id)), ids)
        for label, day in (("today", TODAY), ("90 days ago", PAST)):
            timed(
                f"GetDelinquencyStatus ({label})",
                lambda loan_id, day=day: messages.delinquency(
                    delinquency.get_delinquency(owner, loan_id, day.isoformat())
                ),
                ids,
            )
        # The writes' loans, found before the clock starts: distinct loans of any owner, in random
        # order, that no earlier block or run has paid or reversed (see the module's docstring).
        payable, reversible = _write_samples(billing, rng, loans, calls)
        timed(
            "MakePayment",
            lambda item: messages.payment(
                billing.make_payment(
                    operator, item[1], item[2], f"scale-{block}-{item[1]}-{time.time_ns()}", owner=item[0]
                )
            ),
            payable,
        )
        timed(
            "ReversePayment",
            lambda payment_id: messages.payment(billing.reverse_payment(operator, payment_id, "bench")),
            reversible,
        )

        def page(scope, day: dt.date) -> None:
            first = delinquency.list_delinquent(scope, day.isoformat(), 100)
            billing_pb2.ListDelinquentLoansResponse(loans=[messages.delinquency(v) for v in first.items])
            if first.next_page_token:
                delinquency.list_delinquent(scope, "", 100, first.next_page_token)

        for name, scope, day in (
            (PAGES[0], owner, TODAY),
            (PAGES[1], owner, PAST),
            (PAGES[2], None, TODAY),
            (PAGES[3], None, PAST),
        ):
            runs = []
            for _ in range(6):
                started = time.perf_counter()
                page(scope, day)
                runs.append((time.perf_counter() - started) / 2 * 1e6)  # two pages each
            timings[name] = statistics.median(runs[1:])
    close_database(db)
    return timings


def _write_samples(billing, rng: random.Random, loans: int, calls: int) -> tuple[list, list]:
    """``calls`` loans to pay one installment on and ``calls`` other loans' payments to reverse.

    Loans are drawn at random from the whole book, each used once, skipping
    those the bench has written to before (its payments' request ids start
    with "scale-", its reversals' reason is "bench"). A loan with two or more
    installments left is paid; of the others, and once enough are paid, one
    with a counting payment has a random one reversed.
    """
    from lending_grpc.core.money import format_cents
    from lending_grpc.core.storage.models import Loan, Payment

    payable: list[tuple[int, str, str]] = []
    reversible: list[str] = []
    order = list(range(1, loans + 1))
    rng.shuffle(order)
    for start in range(0, len(order), 500):
        if len(payable) >= calls and len(reversible) >= calls:
            break
        rows = {row.id: row for row in Loan.select(Loan.id, Loan.owner, Loan.loan_id).where(
            Loan.id.in_(order[start : start + 500])
        )}  # fmt: skip
        touched = {
            p.loan_id
            for p in Payment.select(Payment.loan).where(
                Payment.loan.in_(list(rows))
                & (Payment.request_id.startswith("scale-") | (Payment.reversal_reason == "bench"))
            )
        }
        for pk in order[start : start + 500]:
            row = rows.get(pk)
            if row is None or pk in touched:
                continue
            # Loans alternate between the two lists, so each gets the same mix of loans.
            if len(payable) < calls and (len(payable) <= len(reversible) or len(reversible) >= calls):
                view = billing.get_loan(row.owner_id, row.loan_id)
                if view.terms.term_weeks - view.paid_weeks >= 2:
                    # A seeded reversal can leave part of an installment paid: the payment tops it up.
                    due = view.terms.weekly_cents * (view.paid_weeks + 1) - view.paid_cents
                    payable.append((row.owner_id, row.loan_id, format_cents(due)))
            elif len(reversible) < calls:
                counting = list(
                    Payment.select(Payment.payment_id).where(
                        (Payment.loan == pk) & Payment.reverse_time_us.is_null()
                    )
                )
                if counting:
                    reversible.append(rng.choice(counting).payment_id)
    return payable, reversible


def measure_reports(url: str) -> dict:
    from lending_grpc.api import messages
    from lending_grpc.core.reporting import portfolio_report
    from lending_grpc.core.storage.database import close_database, open_database

    db = open_database(url)
    timings = {}
    try:
        with db.unit_of_work():
            for name, day in zip(REPORTS, (TODAY, PAST), strict=True):
                runs = []
                for _ in range(3):
                    started = time.perf_counter()
                    messages.portfolio_report(portfolio_report(db, day, None))
                    runs.append(time.perf_counter() - started)
                timings[name] = {"median_s": statistics.median(runs), "max_s": max(runs)}
    finally:
        close_database(db)
    return timings


def explain(url: str) -> str:
    """The plans of the past-date delinquency list's two index ranges."""
    from lending_grpc.core.storage.database import close_database, open_database
    from lending_grpc.core.storage.models import DelinquencySpan, Loan

    db = open_database(url)
    postgres = url.startswith("postgresql")
    try:
        current = (
            Loan.select()
            .where(
                (Loan.second_unpaid_due_date < PAST)
                & (Loan.last_value_date.is_null() | (Loan.last_value_date <= PAST))
            )
            .order_by(Loan.second_unpaid_due_date, Loan.id)
            .limit(101)
        )
        spans = (
            DelinquencySpan.select()
            .where(
                (DelinquencySpan.month == PAST.replace(day=1))
                & (DelinquencySpan.start_date <= PAST)
                & (DelinquencySpan.end_date > PAST)
            )
            .order_by(DelinquencySpan.second_unpaid_due_date, DelinquencySpan.loan)
            .limit(101)
        )
        lines = []
        for label, query in (("loans whose row holds their standing", current), ("finished spans", spans)):
            sql, params = query.sql()
            prefix = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " if postgres else "EXPLAIN QUERY PLAN "
            plan = db.execute_sql(prefix + sql, params).fetchall()
            lines += [f"-- {label}", *[f"  {row[-1]}" for row in plan], ""]
        return "\n".join(lines)
    finally:
        close_database(db)


def _child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--block":
        print(json.dumps(measure_block(sys.argv[2], int(sys.argv[3]), CALLS, int(sys.argv[4]))))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--reports":
        print(json.dumps(measure_reports(sys.argv[2])))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--explain":
        print(json.dumps({"plan": explain(sys.argv[2])}))
        return 0
    small, large = SIZES[0], SIZES[-1]
    seeded = {b: {n: seed_database(b, n) for n in SIZES} for b in BACKENDS}
    results: dict[str, dict] = {}
    # Each step is one child process: the blocks, then the reports and the plans of each backend.
    steps = len(BACKENDS) * (BLOCKS * len(SIZES) + 2)
    with progress(total=steps, desc="make bench-scale", unit=" steps") as bar:
        for backend in BACKENDS:
            blocks: dict[int, list[dict]] = {n: [] for n in SIZES}
            for block in range(BLOCKS):
                for loans in SIZES:  # interleaved: both sizes see the same disk and the same neighbours
                    url = seeded[backend][loans]["url"]
                    if loans == small:
                        restore_database(backend, loans)
                    blocks[loans].append(_child("--block", url, str(loans), str(block)))
                    bar.write(
                        f"{backend} block {block} {loans:>9} loans: {blocks[loans][-1]}", file=sys.stderr
                    )
                    bar.update()
            ops = (*PER_CALL, *PAGES)
            results[backend] = {
                "median": {n: {op: statistics.median(b[op] for b in blocks[n]) for op in ops} for n in SIZES},
                "spread": {
                    n: {op: (min(b[op] for b in blocks[n]), max(b[op] for b in blocks[n])) for op in ops}
                    for n in SIZES
                },
            }
            results[backend]["reports"] = _child("--reports", seeded[backend][large]["url"])
            bar.update()
            results[backend]["plan"] = _child("--explain", seeded[backend][large]["url"])["plan"]
            bar.update()
    lines = [
        f"# {small:,} vs {large:,} loans",
        "",
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores, load average"
        f" {os.getloadavg()[0]:.1f} at the end (other work shares the machine); in-process core call +"
        f' protobuf conversion, below gRPC. Today is {TODAY}; "90 days ago" is {PAST}.',
        f"- {BLOCKS} blocks of {CALLS} calls per size, sizes interleaved; median of the blocks' means (in"
        " brackets: the lowest and highest block). Reads hit random loans of one user (100,000 loans at the"
        " largest size) spread over the whole table; writes are an operator's, each on a different loan"
        " of any owner in the state the seeder left it (the small book is restored before each block);"
        " pages are the mean of a first and a next page.",
        "",
    ]
    targets = []
    for backend in BACKENDS:
        med, spread = results[backend]["median"], results[backend]["spread"]
        lines += [
            f"## {backend}",
            "",
            f"| operation | {small:,} loans | {large:,} loans | {large:,} / {small:,} |",
            "| --- | ---: | ---: | ---: |",
        ]
        for op in (*PER_CALL, *PAGES):
            cells = " | ".join(
                f"{med[n][op]:,.0f} us ({spread[n][op][0]:,.0f}-{spread[n][op][1]:,.0f})" for n in SIZES
            )
            lines.append(f"| {op} | {cells} | {med[large][op] / med[small][op]:.2f} |")
        lines += ["", f"Whole-book reports at {large:,} loans (3 runs):", ""]
        for name, figures in results[backend]["reports"].items():
            lines.append(f"- {name}: median {figures['median_s']:.2f} s, slowest {figures['max_s']:.2f} s")
            targets.append(
                (f"{backend}: {name} <= 3 s", figures["max_s"] <= 3.0, f"{figures['max_s']:.2f} s")
            )
        past_page = max(med[large][PAGES[1]], med[large][PAGES[3]]) / 1000
        targets.append(
            (
                f"{backend}: a 100-row ListDelinquentLoans page as of 90 days ago <= 100 ms",
                past_page <= 100,
                f"{past_page:.1f} ms",
            )
        )
        for op in ("MakePayment", "ReversePayment"):
            ratio = med[large][op] / med[small][op]
            targets.append(
                (
                    f"{backend}: {op} at {large:,} loans within 1.5x of {small:,}",
                    ratio <= 1.5,
                    f"{ratio:.2f}x",
                )
            )
        lines += [
            "",
            f"Plans of the past-date delinquency list at {large:,} loans:",
            "",
            "```",
            results[backend]["plan"],
            "```",
            "",
        ]
    lines += ["## Targets", ""] + [
        f"- {'MET' if ok else 'MISSED'}: {name} ({figure})" for name, ok, figure in targets
    ]
    lines += ["", "## Seeding (`python -m bench.seed --users 10`)", ""]
    for backend in BACKENDS:
        for n in SIZES:
            info = seeded[backend][n]
            lines.append(
                f"- {backend}, {n:,} loans ({info['seconds']:.0f} s): {info['report'].replace(chr(10), '; ')}"
            )
    report = "\n".join(lines) + "\n"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(report)
    # The same figures as JSON beside the table; the chart is drawn from them (python -m bench.charts).
    data = {
        "date": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "today": TODAY.isoformat(),
        "sizes": SIZES,
        "blocks": BLOCKS,
        "calls": CALLS,
        "backends": results,
        "targets": [{"target": name, "met": ok, "figure": figure} for name, ok, figure in targets],
        "seeding": {backend: {str(n): seeded[backend][n] for n in SIZES} for backend in BACKENDS},
    }
    text = json.dumps(data, indent=1) + "\n"
    OUT.with_suffix(".json").write_text(text)
    # Drawn from the JSON as written (sizes become string keys there), as `python -m bench.charts` does.
    charts.draw_quietly(charts.scale_chart, json.loads(text), OUT.parent / charts.SCALE_PNG)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
