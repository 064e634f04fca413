"""The client subcommands' argument parsers, added to `lending-grpc` by one call from cli.py."""

from __future__ import annotations

import argparse

from lending_grpc.cli.client_commands import actions
from lending_grpc.config import ClientEnv

DEFAULT_SERVER = "127.0.0.1:50051"

run_client_command = actions.run  # cli.py's one entry into the client commands


def _connection_options() -> argparse.ArgumentParser:
    """Options every client command takes (after the subcommand: `lending-grpc loan list --json`)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument(
        "--server",
        metavar="HOST:PORT",
        help=f"server address (env {ClientEnv.SERVER}, default {DEFAULT_SERVER})",
    )
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


def add_client_commands(commands: argparse._SubParsersAction) -> None:
    """Add register, login, logout, loan ..., pay and delinquent to the `lending-grpc` parser."""
    common = [_connection_options()]

    def command(parent, name: str, run, help_text: str) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, parents=common, help=help_text, description=help_text)
        parser.set_defaults(client_command=run)
        return parser

    register = command(commands, "register", actions.register, "create an account")
    register.add_argument("username")
    register.add_argument("--email", required=True)
    _password_option(register)

    login = command(commands, "login", actions.login, "log in and cache the tokens (mode 0600)")
    login.add_argument("username")
    _password_option(login)

    command(commands, "logout", actions.logout, "forget the cached tokens of the server")

    loan = commands.add_parser(
        "loan", help="create and inspect loans", description="create and inspect loans"
    )
    loans = loan.add_subparsers(dest="loan_command", required=True, metavar="COMMAND")
    create = command(loans, "create", actions.loan_create, "create a loan (same loan_id and terms: no-op)")
    create.add_argument("loan_id", metavar="LOAN_ID")
    create.add_argument("principal", metavar="PRINCIPAL", help="amount lent, e.g. 5000000 or 5,000,000.00")
    create.add_argument("--start-date", metavar="YYYY-MM-DD", help="default: today in the service time zone")
    create.add_argument("--term-weeks", type=int, metavar="N", help="weekly installments, 1-520 (default 50)")
    create.add_argument("--interest-rate", metavar="RATE", help="flat rate over the term, 0-1 (default 0.10)")
    for name, run, help_text in (
        ("show", actions.loan_show, "a loan's terms and balance"),
        ("schedule", actions.loan_schedule, "every installment: due date, amount, payment"),
        ("outstanding", actions.loan_outstanding, "what is paid and what is still owed"),
        ("payments", actions.loan_payments, "the payments of a loan, oldest first"),
    ):
        command(loans, name, run, help_text).add_argument("loan_id", metavar="LOAN_ID")
    status = command(loans, "status", actions.loan_status, "delinquency status: missed installments, overdue")
    status.add_argument("loan_id", metavar="LOAN_ID")
    status.add_argument("--as-of", metavar="YYYY-MM-DD", help="judge as of this date (default today)")
    command(loans, "list", actions.loan_list, "all your loans, oldest first")

    pay = command(commands, "pay", actions.pay, "pay whole installments of a loan, oldest first")
    pay.add_argument("loan_id", metavar="LOAN_ID")
    what = pay.add_mutually_exclusive_group(required=True)
    what.add_argument("amount", metavar="AMOUNT", nargs="?", help="e.g. 110000 or 110,000.00")
    what.add_argument("--payoff", action="store_true", help="pay the whole outstanding balance")
    pay.add_argument(
        "--request-id",
        metavar="ID",
        help="idempotency key (default: a new UUID, printed); repeat it to retry without paying twice",
    )

    delinquent = command(commands, "delinquent", actions.delinquent, "your loans with 2+ missed installments")
    delinquent.add_argument("--as-of", metavar="YYYY-MM-DD", help="judge as of this date (default today)")
