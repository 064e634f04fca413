"""`python -m bench.seed`: every seeded loan reconciles, histories vary, and the rows stay small."""

from __future__ import annotations

import datetime as dt
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ANONYMOUS, FixedClock, actor_of, all_payments, make_env

from bench.seed import SEED_PASSWORD, seed, table_bytes
from lending_grpc.core.schedule import LoanTerms
from lending_grpc.core.storage.database import close_database
from lending_grpc.core.storage.models import Loan, Payment, User

AS_OF = dt.date(2026, 6, 1)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def seeded(database_url: str):
    env = make_env(database_url, FixedClock(AS_OF))
    progress = io.StringIO()
    report = seed(env.db, 400, users=3, batch_size=150, as_of=AS_OF, stream=progress)
    yield env, report, progress.getvalue()
    close_database(env.db)


def _terms(row: Loan) -> LoanTerms:
    return LoanTerms(
        row.principal_cents,
        row.rate_e4,
        row.term_weeks,
        row.start_date,
        row.total_cents,
        row.weekly_cents,
        row.final_cents,
    )


def test_every_seeded_loan_reconciles_with_its_payments(seeded):
    env, report, _ = seeded
    rows = list(Loan.select().order_by(Loan.id))
    assert len(rows) == report.loans == 400
    assert Payment.select().count() == report.payments
    for row in rows:
        terms = _terms(row)
        # the terms are exactly what LoanTerms.build derives from principal, rate and term
        assert terms == LoanTerms.build(row.principal_cents, row.rate_e4, row.term_weeks, row.start_date)
        assert row.second_unpaid_due_date == terms.second_unpaid_due_date(row.paid_weeks)
        # Bounced attempts stay on record, reversed, and count for nothing.
        payments = [p for p in all_payments(env, row.owner_id, row.loan_id) if not p.is_reversed]
        week, running = 1, 0
        for payment in payments:
            assert payment.first_week == week
            assert payment.amount_cents == terms.cents_for_next(week - 1, payment.last_week - week + 1)
            running += payment.amount_cents
            assert payment.outstanding_after_cents == terms.total_cents - running
            week = payment.last_week + 1
        assert week == row.paid_weeks + 1
        assert running == row.paid_cents
        loan = env.billing.get_loan(row.owner_id, row.loan_id)
        assert loan.outstanding_cents == terms.outstanding_cents(row.paid_weeks)


def test_histories_vary_and_the_portfolio_query_agrees_with_the_rules(seeded):
    env, _, _ = seeded
    rows = list(Loan.select())
    standing = [env.delinquency.get_delinquency(row.owner_id, row.loan_id, AS_OF.isoformat()) for row in rows]
    delinquent = {s.loan_id for s in standing if s.standing.is_delinquent}
    paid_off = [row for row in rows if row.paid_weeks == row.term_weeks]
    untouched = [row for row in rows if row.paid_weeks == 0]
    assert 40 <= len(delinquent) <= 200
    assert paid_off and untouched
    assert len({row.start_date for row in rows}) > 200
    assert len({row.term_weeks for row in rows}) > 5
    listed = set()
    for owner in {row.owner_id for row in rows}:
        token = ""
        while True:
            page = env.delinquency.list_delinquent(owner, AS_OF.isoformat(), page_size=50, page_token=token)
            listed |= {item.loan_id for item in page.items}
            token = page.next_page_token
            if not token:
                break
    assert listed == delinquent


def test_a_seeded_loan_takes_payments_through_the_core(seeded):
    env, _, _ = seeded
    row = Loan.select().where(Loan.paid_weeks < Loan.term_weeks - 2).order_by(Loan.id).first()
    terms = _terms(row)
    payment = env.billing.make_payment(
        actor_of(row.owner_id), row.loan_id, f"{terms.weekly_cents / 100:.2f}", "after-seed"
    )
    assert (payment.first_week, payment.last_week) == (row.paid_weeks + 1, row.paid_weeks + 1)
    assert payment.outstanding_after_cents == terms.outstanding_cents(row.paid_weeks + 1)


def test_users_are_shared_and_seeding_again_adds_loans(seeded):
    env, _, progress = seeded
    assert [u.username for u in User.select().order_by(User.id)] == ["seed-0", "seed-1", "seed-2"]
    assert env.auth.login(ANONYMOUS, "seed-1", SEED_PASSWORD).access_token
    # Off a terminal the progress bar stays away (tests/test_progress.py draws it on one).
    assert progress == ""
    again = seed(env.db, 10, users=3, as_of=AS_OF, progress=False)
    assert (again.loans, User.select().count(), Loan.select().count()) == (10, 3, 410)
    assert Loan.select().where(Loan.loan_id == "S-00000410").count() == 1


def test_rows_stay_small(seeded):
    env, _, _ = seeded
    sizes = table_bytes(env.db)
    # Pages (4 or 8 KiB per table and index) dominate at 400 loans: make bench-scale measures 1,000,000.
    # Four indexes since schema v2 added (second_unpaid_due_date, id) for operators' portfolio scans.
    assert 0 < sizes["loan"] / 400 < 600
    assert sizes["payment"] > 0


@pytest.mark.slow
def test_cli_reports_what_it_seeded(tmp_path: Path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.seed",
            "--loans",
            "2000",
            "--users",
            "2",
            "--as-of",
            "2026-06-01",
            "--database-url",
            f"sqlite:///{tmp_path}/seed.db",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar into a pipe
    match = re.search(
        r"seeded 2000 loans and (\d+) payments for 2 users in [\d.]+s\n"
        r"the database holds 2000 loans and \1 payments in \d+ bytes: "
        r"(\d+) bytes per loan without payments, (\d+) bytes per payment",
        result.stdout,
    )
    assert match, result.stdout
    assert int(match.group(2)) < 500
