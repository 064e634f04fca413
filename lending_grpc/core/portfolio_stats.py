"""The book's figures for monitoring: counts a dashboard or an alert watches, read on demand.

Each figure is one indexed COUNT; the metrics endpoint asks for them when
Prometheus scrapes, never on the RPC path.
"""

from __future__ import annotations

import datetime as dt

from lending_grpc.core import daily_close, event_log, reporting
from lending_grpc.core.storage.database import LendingDatabase
from lending_grpc.core.storage.models import Loan, LoginThrottle, Payment

Figures = dict[str, tuple[str, float]]  # metric name -> (help, value)


def portfolio_figures(db: LendingDatabase, today: dt.date, now_us: int) -> Figures:
    """Loans, active loans, payments, delinquent loans as of ``today``, and locked accounts at ``now_us``."""
    with db.connection_context():  # the scrape runs on the HTTP server's own thread
        loans = Loan.select().count()
        active = Loan.select().where(Loan.paid_weeks < Loan.term_weeks).count()
        payments = Payment.select().count()
        delinquent = Loan.select().where(Loan.second_unpaid_due_date < today).count()
        locked = LoginThrottle.select().where(LoginThrottle.locked_until_us > now_us).count()
        last_sequence = event_log.latest_sequence(db)
        last_close_us = daily_close.last_close_time_us(db)
    return {
        "lending_loans": ("Loans stored, every state.", loans),
        "lending_active_loans": ("Loans not yet paid off.", active),
        "lending_payments": ("Payments recorded.", payments),
        "lending_delinquent_loans": (
            "Loans with two or more missed installments as of today in the service time zone.",
            delinquent,
        ),
        "lending_locked_accounts": ("Accounts refusing sign-ins after too many failures.", locked),
        "lending_event_log_last_sequence": ("The highest sequence of the loan event log.", last_sequence),
        "lending_daily_close_last_run_timestamp_seconds": (
            "When the last daily close finished (Unix time; 0 before the first).",
            (last_close_us or 0) / 1_000_000,
        ),
    }


def funding_quality_figures(db: LendingDatabase, today: dt.date) -> Figures:
    """TKB90 of the whole book as of today (a scan of the book: cache it, see api/metrics.py)."""
    with db.connection_context():
        report = reporting.portfolio_report(db, today, None)
    return {
        "lending_tkb90_percent": (
            "TKB90 of the whole book as of today: 100 minus the share of the outstanding amount "
            "more than 90 days past due, in percent.",
            float(report.tkb90),
        )
    }
