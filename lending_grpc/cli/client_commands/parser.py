"""The client subcommands' argument parsers, added to `lending-grpc` by one call from cli.py."""

from __future__ import annotations

import argparse

from lending_grpc.cli.client_commands import actions
from lending_grpc.cli.server_option import add_server_option
from lending_grpc.config import ClientEnv

run_client_command = actions.run  # cli.py's one entry into the client commands


def _connection_options() -> argparse.ArgumentParser:
    """Options every client command takes (after the subcommand: `lending-grpc loan list --json`)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    add_server_option(group)
    group.add_argument("--json", action="store_true", help="print JSON for programs instead of tables")
    group.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="deadline of each call (default 10)"
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=None,
        help=f"use TLS with the system's roots (env {ClientEnv.SERVER_TLS})",
    )
    group.add_argument(
        "--ca-file",
        metavar="PEM",
        help=f"CA certificate that signs the server's; implies --tls (env {ClientEnv.SERVER_CA_FILE})",
    )
    group.add_argument(
        "--client-cert",
        metavar="PEM",
        help=f"client certificate for mutual TLS (env {ClientEnv.CLIENT_CERT_FILE})",
    )
    group.add_argument(
        "--client-key", metavar="PEM", help=f"its private key (env {ClientEnv.CLIENT_KEY_FILE})"
    )
    return common


def _password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of prompting",
    )


def _loan_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("loan_id", metavar="LOAN_ID", help="the loan's identifier, e.g. L-1001")


def _owner_option(parser: argparse.ArgumentParser, what: str = "read") -> None:
    parser.add_argument(
        "--owner",
        metavar="USER_ID",
        default="",
        help=f"operators: {what} another user's loan, naming the borrower's user id (as `register` prints)",
    )


def _as_of_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--as-of",
        metavar="YYYY-MM-DD",
        help="judge as of the end of this day, payments by value date (default today)",
    )


def add_client_commands(commands: argparse._SubParsersAction) -> None:
    """Add the client commands (register, login, loan ..., pay, reverse, events ...) to `lending-grpc`."""
    common = [_connection_options()]

    def command(parent, name: str, run, help_text: str) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, parents=common, help=help_text, description=help_text)
        parser.set_defaults(client_command=run)
        return parser

    register = command(
        commands,
        "register",
        actions.register,
        "create an account; asks for its password (at least 8 characters) twice",
    )
    register.add_argument(
        "username",
        help="3-150 characters: letters, digits and @ . + - _ (e.g. ada or ada.l@example.com); "
        "unique on the server, whatever the case of its letters",
    )
    register.add_argument(
        "--email",
        required=True,
        metavar="ADDRESS",
        help="required: the account's email address, e.g. ada@example.com (the server stores it encrypted)",
    )
    _password_option(register)

    login = command(commands, "login", actions.login, "log in and cache the tokens (mode 0600)")
    login.add_argument("username", help="the account to log in as")
    _password_option(login)

    command(commands, "logout", actions.logout, "end the session on the server and forget its tokens here")

    loan = commands.add_parser(
        "loan", help="create and inspect loans", description="create and inspect loans"
    )
    loans = loan.add_subparsers(dest="loan_command", required=True, metavar="COMMAND")
    create = command(loans, "create", actions.loan_create, "create a loan (same loan_id and terms: no-op)")
    create.add_argument(
        "loan_id", metavar="LOAN_ID", help="your identifier for it: 1-64 letters, digits and ._-"
    )
    create.add_argument("principal", metavar="PRINCIPAL", help="amount lent, e.g. 5000000 or 5,000,000.00")
    create.add_argument("--start-date", metavar="YYYY-MM-DD", help="default: today in the service time zone")
    create.add_argument("--term-weeks", type=int, metavar="N", help="weekly installments, 1-520 (default 50)")
    create.add_argument("--interest-rate", metavar="RATE", help="flat rate over the term, 0-1 (default 0.10)")
    for name, run, help_text in (
        ("show", actions.loan_show, "a loan's terms and balance"),
        ("schedule", actions.loan_schedule, "every installment: due date, amount, payment"),
        ("outstanding", actions.loan_outstanding, "what is paid and what is still owed"),
        ("payments", actions.loan_payments, "the payments of a loan, oldest first, reversed ones marked"),
    ):
        read = command(loans, name, run, help_text)
        _loan_id(read)
        _owner_option(read)
    status = command(loans, "status", actions.loan_status, "delinquency status: missed installments, overdue")
    _loan_id(status)
    _as_of_option(status)
    _owner_option(status)
    command(loans, "list", actions.loan_list, "all your loans, oldest first")

    pay = command(commands, "pay", actions.pay, "pay whole installments of a loan, oldest first")
    _loan_id(pay)
    what = pay.add_mutually_exclusive_group(required=True)
    what.add_argument("amount", metavar="AMOUNT", nargs="?", help="e.g. 110000 or 110,000.00")
    what.add_argument("--payoff", action="store_true", help="pay the whole outstanding balance")
    pay.add_argument(
        "--request-id",
        metavar="ID",
        help="idempotency key (default: a new UUID, printed); repeat it to retry without paying twice",
    )
    _owner_option(pay, "record a collection on")
    pay.add_argument(
        "--value-date",
        metavar="YYYY-MM-DD",
        help="operators: when the money was received, from the loan's start date to today (default today)",
    )

    reverse = command(
        commands, "reverse", actions.reverse, "operators: take back a bounced or mistaken payment"
    )
    reverse.add_argument(
        "payment_id", metavar="PAYMENT_ID", help="the payment's id, as `pay` and `loan payments` print it"
    )
    reverse.add_argument(
        "--reason", required=True, help="why, 1-500 characters (kept with the payment and audited)"
    )

    delinquent = command(commands, "delinquent", actions.delinquent, "your loans with 2+ missed installments")
    _as_of_option(delinquent)

    history = command(
        commands, "history", actions.history, "the periods in which a loan was delinquent, oldest first"
    )
    _loan_id(history)
    _owner_option(history)

    portfolio = command(
        commands,
        "portfolio",
        actions.portfolio,
        "funding-quality report: loans and outstanding by days past due, TWP90 and TKB90",
    )
    _as_of_option(portfolio)
    portfolio.add_argument(
        "--all", action="store_true", help="operators: the whole book, every borrower's loans"
    )

    events = command(
        commands,
        "events",
        actions.events,
        "the loan event log, one line per event, oldest first (with --json: one JSON object per line)",
    )
    events.add_argument(
        "--after",
        type=int,
        default=0,
        metavar="N",
        help="only events with a sequence above N, the last one you processed (default 0: from the start)",
    )
    events.add_argument(
        "--follow",
        action="store_true",
        help="keep printing new events as they happen, reconnecting by itself, until Ctrl-C",
    )
    events.add_argument("--loan", metavar="LOAN_ID", default="", help="only the events of this loan")
