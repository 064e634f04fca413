"""Operator commands run on the server host: `users ...`, `audit export` and `close-day`.

They work on the database directly (no gRPC, no running server needed):
whoever can run them already holds the service's configuration. Each change
is audited with the actor `cli:<os user>`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import sys
import uuid
from collections.abc import Callable

from lending_grpc.config import Settings
from lending_grpc.core import audit, daily_close
from lending_grpc.core.admin import AccountAdmin
from lending_grpc.core.clock import Clock
from lending_grpc.core.errors import LendingError
from lending_grpc.core.plural import count
from lending_grpc.core.storage.database import close_database, open_database
from lending_grpc.core.storage.migrations import migrate
from lending_grpc.core.views import ROLES, Actor

COMMANDS = ("users", "audit", "close-day")
_DB_FLAGS = ("database_url", "db_busy_timeout_ms", "log_level")


def add_commands(commands, add_setting_flags: Callable[[argparse.ArgumentParser, tuple], None]) -> None:
    """Register `users` and `audit` on the top-level subparsers."""
    users = commands.add_parser("users", help="grant or revoke roles, erase a user's personal data")
    actions = users.add_subparsers(dest="users_action", required=True)
    roles = ", ".join(ROLES)
    for name, text in (("grant", "grant a role"), ("revoke", "revoke a role")):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("username", help="the account, as it registered")
        action.add_argument("role", choices=ROLES, help=f"the role: {roles}")
        add_setting_flags(action, _DB_FLAGS)
    erase_text = "remove a user's personal data and block the account (loans, payments, audit stay)"
    erase = actions.add_parser("erase", help=erase_text, description=erase_text)
    erase.add_argument("username", help="the account, as it registered")
    add_setting_flags(erase, _DB_FLAGS)

    audit_parser = commands.add_parser("audit", help="read the audit trail")
    audit_actions = audit_parser.add_subparsers(dest="audit_action", required=True)
    export = audit_actions.add_parser(
        "export", help="write audit events as JSON lines to stdout, oldest first"
    )
    export.add_argument(
        "--since", type=_instant, help="only events at or after this ISO 8601 time (UTC if naive)"
    )
    export.add_argument("--until", type=_instant, help="only events before this ISO 8601 time (UTC if naive)")
    add_setting_flags(export, _DB_FLAGS)

    close = commands.add_parser(
        "close-day",
        help="announce the delinquencies that began because a day passed (the server does this after "
        "midnight unless LENDING_DAILY_CLOSE=false)",
    )
    close.add_argument(
        "--date",
        type=_calendar_date,
        help="close every day not closed yet up to this one, YYYY-MM-DD (default: today in the service "
        "time zone)",
    )
    add_setting_flags(close, (*_DB_FLAGS, "time_zone"))


def _calendar_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date in the form YYYY-MM-DD") from None


def _instant(text: str) -> int:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1_000_000)


def _iso(micros: int) -> str:
    return dt.datetime.fromtimestamp(micros / 1_000_000, dt.UTC).isoformat().replace("+00:00", "Z")


def _export_audit(since: int | None, until: int | None) -> None:
    """Print the events as JSON lines on stdout, counting them on a terminal's stderr.

    The count shows only when stderr is a terminal and stdout is not (the
    usual `audit export > file`): on a terminal the lines scrolling by are
    progress enough, and a bar between them would only tear them.
    """
    # Imported here: every `lending-grpc` command, `serve` included, imports this module.
    from lending_grpc.cli.progress import progress

    with progress(desc="exporting audit events", unit=" events", enabled=not sys.stdout.isatty()) as bar:
        for view in audit.export(since, until):
            record = view.as_dict()
            record["time"] = _iso(view.time_us)
            print(json.dumps(record, sort_keys=True, separators=(",", ":")))
            bar.update()


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run a `users` or `audit` command; returns the exit code."""
    db = open_database(settings.database_url, busy_timeout_ms=settings.db_busy_timeout_ms)
    action = getattr(args, "users_action", None) or getattr(args, "audit_action", None)
    actor = Actor(
        name=f"cli:{getpass.getuser()}",
        rpc=" ".join(part for part in ("lending-grpc", args.command, action) if part),
        request_id=uuid.uuid4().hex,
    )
    try:
        migrate(db, settings.time_zone)
        with db.unit_of_work():
            if args.command == "close-day":
                clock = Clock(settings.time_zone)
                if args.date is not None and args.date > clock.today():
                    print("lending-grpc: --date must not be after today", file=sys.stderr)
                    return 2
                days = daily_close.close_through(db, clock, args.date)
                if not days:
                    last = daily_close.last_closed_day(db)
                    print(f"nothing to close: every day up to {last.isoformat()} is closed")
                for closed in days:
                    if closed.already_closed:
                        print(f"{closed.day.isoformat()} was already closed")
                    else:
                        started = closed.delinquencies_started
                        print(
                            f"closed {closed.day.isoformat()}: {started} "
                            f"{'delinquency' if started == 1 else 'delinquencies'} started"
                        )
                return 0
            if args.command == "audit":
                _export_audit(args.since, args.until)
                return 0
            admin = AccountAdmin(db, Clock(settings.time_zone))
            if action == "erase":
                report = admin.erase(actor, args.username)
                print(
                    f"erased user {report.user_id}: username is now {report.tombstone}, "
                    f"{count(report.sessions_revoked, 'session')} revoked; "
                    "loans, payments and audit rows kept"
                )
            else:
                user_id = admin.set_role(actor, args.username, args.role, granted=action == "grant")
                verb = "granted" if action == "grant" else "revoked"
                print(f"{verb} role {args.role} for user {user_id} ({args.username})")
        return 0
    except LendingError as exc:
        print(f"lending-grpc: {exc.message}", file=sys.stderr)
        return 1
    finally:
        close_database(db)
