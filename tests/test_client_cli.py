"""The command line client: each command run as a real process against a real server."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from databases import sqlite_url
from helpers import PASSWORD, Cli, ServerProcess, bearer
from lending.v1 import auth_pb2, auth_pb2_grpc

from lending_grpc.cli.main import build_parser
from lending_grpc.config import CLIENT_ENV_NAMES, Settings, load_settings


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """The clients do not care which database serves them: SQLite only (storage has its own tests)."""
    return sqlite_url(tmp_path)


@pytest.fixture
def cli(server, tmp_path) -> Cli:
    return Cli(f"127.0.0.1:{server.port}", tmp_path)


def test_register_login_caches_tokens_privately(cli: Cli) -> None:
    out = cli("register", "ada", "--email", "ada@example.com", "--password-stdin", stdin=PASSWORD).stdout
    assert out.startswith("registered ada (user ") and out.endswith("next: lending-grpc login ada\n")
    out = cli("login", "ada", "--password-stdin", stdin=PASSWORD + "\n").stdout
    assert out == f"logged in to {cli.server} as ada; tokens saved in {cli.token_file}\n"
    assert stat.S_IMODE(cli.token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(cli.token_file.parent.stat().st_mode) == 0o700
    cached = json.loads(cli.token_file.read_text())["servers"][cli.server]
    assert cached["username"] == "ada" and cached["tokens"]["access_token"].count(".") == 2
    assert cli("loan", "list").stdout == (
        "no loans yet: create one with `lending-grpc loan create LOAN_ID PRINCIPAL`\n"
    )
    assert cli("logout").stdout == f"logged out of {cli.server}\n"
    # The session ended on the server: its access token is refused there, not only forgotten here.
    with grpc.insecure_channel(cli.server) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            auth_pb2_grpc.AuthServiceStub(channel).Logout(
                auth_pb2.LogoutRequest(), metadata=bearer(cached["tokens"]["access_token"]), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert cli("logout").stdout == f"not logged in to {cli.server}\n"
    result = cli("loan", "list", ok=False)
    assert result.returncode == 3
    assert result.stderr == (
        f"lending-grpc: UNAUTHENTICATED: not logged in to {cli.server}: run `lending-grpc login USERNAME`\n"
    )


def test_logout_with_the_server_away_forgets_the_tokens_and_says_the_session_lives_on(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "away.db")
    cli = Cli(server.target, tmp_path)
    try:
        cli.logged_in()
    finally:
        assert server.terminate() == 0
    result = cli("logout", ok=False)
    assert result.returncode == 4
    assert result.stderr == (
        f"lending-grpc: UNAVAILABLE: cannot reach {cli.server} (connection refused); the tokens are "
        "forgotten here, but the server was not told: the session stays valid on it until its refresh "
        "token expires\n"
    )
    assert cli.server not in json.loads(cli.token_file.read_text()).get("servers", {})


def test_worked_example_tables(cli: Cli) -> None:
    cli.logged_in()
    created = cli("loan", "create", "L-1001", "5,000,000", "--start-date", "2026-01-05").stdout
    assert created == (
        "loan            L-1001\n"
        "state           ACTIVE\n"
        "principal       5,000,000.00\n"
        "interest rate   0.10\n"
        "total           5,500,000.00\n"
        "term            50 weeks from 2026-01-05 to 2026-12-21\n"
        "weekly payment  110,000.00\n"
        "final payment   110,000.00\n"
        "paid            0.00 (0 of 50 weeks)\n"
        "outstanding     5,500,000.00\n"
    )
    paid = cli("pay", "L-1001", "110000", "--request-id", "pay-1").stdout.splitlines()
    assert paid[:2] == ["paid         110,000.00 on L-1001 (week 1)", "outstanding  5,390,000.00"]
    assert paid[3] == "request id   pay-1"

    schedule = cli("loan", "schedule", "L-1001").stdout.splitlines()
    assert schedule[0] == "WEEK  DUE DATE        AMOUNT  PAID  PAYMENT TIME"
    assert schedule[1].startswith("   1  2026-01-12  110,000.00  yes   20")
    assert schedule[1].endswith("Z") and len(schedule[1]) == len("   1  2026-01-12  110,000.00  yes   ") + 20
    assert schedule[2] == "   2  2026-01-19  110,000.00  no    -"
    assert schedule[50] == "  50  2026-12-21  110,000.00  no    -"
    assert schedule[51] == "50 installments, 1 paid; total 5,500,000.00"

    assert cli("loan", "outstanding", "L-1001").stdout == (
        "loan         L-1001\n"
        "total        5,500,000.00\n"
        "paid         110,000.00 (1 installment)\n"
        "outstanding  5,390,000.00 (49 installments)\n"
    )
    # The payment is valued today: on 2026-01-27 three installments were due and none was paid yet.
    assert cli("loan", "status", "L-1001", "--as-of", "2026-01-27").stdout == (
        "loan                 L-1001\n"
        "as of                2026-01-27\n"
        "delinquent           YES\n"
        "missed installments  3\n"
        "overdue              330,000.00\n"
        "days past due        15\n"
        "next due date        2026-01-12\n"
    )
    cli("loan", "create", "L-1002", "1000001", "--start-date", "2026-01-05")
    assert cli("delinquent", "--as-of", "2026-01-27").stdout == (
        "LOAN    MISSED     OVERDUE  DAYS PAST DUE  OLDEST DUE  AS OF\n"
        "L-1001       3  330,000.00             15  2026-01-12  2026-01-27\n"
        "L-1002       3   66,000.06             15  2026-01-12  2026-01-27\n"
    )
    assert cli("loan", "list").stdout == (
        "LOAN    STATE      PRINCIPAL      WEEKLY  PAID   OUTSTANDING  START\n"
        "L-1001  ACTIVE  5,000,000.00  110,000.00  1/50  5,390,000.00  2026-01-05\n"
        "L-1002  ACTIVE  1,000,001.00   22,000.02  0/50  1,100,001.10  2026-01-05\n"
    )

    catch_up = cli("pay", "L-1001", "220,000.00").stdout.splitlines()
    assert catch_up[0] == "paid         220,000.00 on L-1001 (weeks 2-3)"
    # Also valued today: it changes today's standing, not 2026-01-27's (an operator's back-dated
    # collection would: test_client_servicing.py).
    assert "missed installments  3\n" in cli("loan", "status", "L-1001", "--as-of", "2026-01-27").stdout
    payoff = cli("pay", "L-1001", "--payoff").stdout.splitlines()
    assert payoff[:2] == ["paid         5,170,000.00 on L-1001 (weeks 4-50)", "outstanding  0.00"]
    shown = cli("loan", "show", "L-1001").stdout
    assert (
        "state           PAID_OFF\n" in shown and "paid            5,500,000.00 (50 of 50 weeks)\n" in shown
    )
    payments = cli("loan", "payments", "L-1001").stdout.splitlines()
    assert payments[0].split() == [
        "PAYMENT",
        "TIME",
        "AMOUNT",
        "WEEKS",
        "OUTSTANDING",
        "AFTER",
        "PAYMENT",
        "ID",
        "VALUE",
        "DATE",
        "REVERSED",
    ]
    assert [line.split()[2:5] for line in payments[1:]] == [
        ["110,000.00", "1", "5,390,000.00"],
        ["220,000.00", "2-3", "5,170,000.00"],
        ["5,170,000.00", "4-50", "0.00"],
    ]


def test_counts_of_one_are_singular(cli: Cli) -> None:
    cli.logged_in()
    shown = cli("loan", "create", "L1", "1000", "--start-date", "2026-01-05", "--term-weeks", "1").stdout
    assert "term            1 week from 2026-01-05 to 2026-01-12\n" in shown
    assert "paid            0.00 (0 of 1 week)\n" in shown
    assert cli("loan", "outstanding", "L1").stdout.splitlines()[-1] == "outstanding  1,100.00 (1 installment)"
    assert cli("loan", "schedule", "L1").stdout.splitlines()[-1] == "1 installment, 0 paid; total 1,100.00"


def test_json_output_keeps_exact_decimal_strings(cli: Cli) -> None:
    cli.logged_in()
    loan = json.loads(cli("loan", "create", "L1", "1000001", "--start-date", "2026-01-05", "--json").stdout)
    assert loan["weekly_payment"] == "22000.02" and loan["final_payment"] == "22000.12"
    assert loan["state"] == "ACTIVE" and loan["start_date"] == "2026-01-05"
    payment = json.loads(cli("pay", "L1", "22000.02", "--json").stdout)
    assert (payment["amount"], payment["first_week"], payment["outstanding_balance"]) == (
        "22000.02",
        1,
        "1078001.08",
    )
    assert payment["payment_time"].endswith("Z")
    schedule = json.loads(cli("loan", "schedule", "L1", "--json").stdout)
    assert schedule["installments"][0]["paid"] is True
    assert schedule["installments"][49] == {
        "week": 50,
        "due_date": "2026-12-21",
        "due_amount": "22000.12",
        "paid": False,
        "payment_time": None,
        "payment_id": None,
    }
    listed = json.loads(cli("delinquent", "--as-of", "2026-01-27", "--json").stdout)
    # The payment is valued today: on 2026-01-27 none of the three installments due was paid yet.
    assert [(s["loan_id"], s["missed_payments"], s["overdue_amount"]) for s in listed["loans"]] == [
        ("L1", 3, "66000.06")
    ]
    assert json.loads(cli("loan", "list", "--json").stdout)["loans"][0]["loan_id"] == "L1"


def test_errors_are_one_line_with_exit_codes(cli: Cli) -> None:
    cli.logged_in()
    cli("loan", "create", "L1", "5000000", "--start-date", "2026-01-05")

    result = cli("loan", "show", "nope", ok=False)
    assert (result.returncode, result.stderr) == (1, "lending-grpc: NOT_FOUND: loan 'nope' not found\n")

    result = cli("pay", "L1", "50000", ok=False)
    assert result.returncode == 1
    assert result.stderr.startswith(
        "lending-grpc: FAILED_PRECONDITION: 50000.00 is not a whole number of installments; accepted: "
    )

    result = cli("pay", "L1", "12.345", "--json", ok=False)
    assert result.returncode == 1 and result.stdout == ""
    assert json.loads(result.stderr) == {
        "error": {
            "code": "INVALID_ARGUMENT",
            "message": "amount: '12.345' has more than 2 fraction digits",
            "reason": "INVALID_ARGUMENT",
            "field": "amount",
        }
    }

    cli("pay", "L1", "--payoff")
    result = cli("pay", "L1", "--payoff", ok=False)
    assert (result.returncode, result.stderr) == (
        1,
        "lending-grpc: FAILED_PRECONDITION: loan 'L1' is paid off: nothing to pay\n",
    )
    result = cli("pay", "L1", "110000", ok=False)
    assert (
        result.stderr
        == "lending-grpc: FAILED_PRECONDITION: the loan is paid off and accepts no more payments\n"
    )

    result = cli("login", "ada", "--password-stdin", stdin="wrong password", ok=False)
    assert result.returncode == 3 and result.stderr.startswith("lending-grpc: UNAUTHENTICATED: ")

    result = cli("loan", "show", "L1", "--ca-file", str(cli.home / "missing.pem"), ok=False)
    assert result.returncode == 2
    assert (
        result.stderr
        == f"lending-grpc: USAGE: cannot read {cli.home / 'missing.pem'}: No such file or directory\n"
    )

    result = cli("login", "ada", stdin="", ok=False)  # no terminal, no --password-stdin
    assert result.returncode == 2
    assert "use --password-stdin" in result.stderr or "--password-stdin" in result.stderr

    result = cli("pay", "L1", ok=False, one_line=False)  # argparse's usage text, exit 2
    assert result.returncode == 2
    assert result.stderr.endswith(
        "lending-grpc pay: error: one of the arguments AMOUNT --payoff is required\n"
    )


@pytest.mark.parametrize(
    ("server", "problem"),
    [
        ("nonsense", "expected HOST:PORT, e.g. 127.0.0.1:50051"),
        ("host:notaport", "the port must be a number from 1 to 65535"),
        (":99999", "the port must be a number from 1 to 65535"),
        (":50051", "the host is missing, e.g. 127.0.0.1:50051"),
        ("127.0.0.1:0", "the port must be a number from 1 to 65535"),
    ],
)
def test_a_malformed_server_address_is_a_usage_error(tmp_path: Path, server: str, problem: str) -> None:
    person = Cli("127.0.0.1:1", tmp_path)
    by_option = person("loan", "list", "--server", server, ok=False)
    assert (by_option.returncode, by_option.stderr) == (
        2,
        f"lending-grpc: USAGE: --server {server!r}: {problem}\n",
    )
    by_env = person("login", "ada", "--password-stdin", stdin=PASSWORD, ok=False, LENDING_SERVER=server)
    assert (by_env.returncode, by_env.stderr) == (
        2,
        f"lending-grpc: USAGE: LENDING_SERVER {server!r}: {problem}\n",
    )


def test_an_unreachable_server_is_exit_4_before_any_login_question(tmp_path: Path) -> None:
    dead = "127.0.0.1:1"
    person = Cli(dead, tmp_path)
    unreachable = f"lending-grpc: UNAVAILABLE: cannot reach {dead} (connection refused)\n"
    for command in (
        ["loan", "list"],  # not logged in either: the unreachable server is the first problem
        ["register", "ada", "--email", "ada@example.com", "--password-stdin"],
        ["login", "ada", "--password-stdin"],
    ):
        result = person(*command, stdin=PASSWORD, ok=False)
        assert (result.returncode, result.stderr) == (4, unreachable), command
    result = person("loan", "show", "L1", "--json", ok=False)
    assert result.returncode == 4 and json.loads(result.stderr) == {
        "error": {
            "code": "UNAVAILABLE",
            "message": f"cannot reach {dead} (connection refused)",
            "reason": "SERVER_UNREACHABLE",
        }
    }


def test_unreachable_server_is_exit_4_when_logged_in_too(cli: Cli) -> None:
    cli.logged_in()
    with open(cli.token_file) as handle:
        cached = json.load(handle)["servers"][cli.server]
    dead = "127.0.0.1:1"
    cli.token_file.write_text(json.dumps({"servers": {dead: cached}}))
    result = cli("loan", "list", "--timeout", "3", ok=False, LENDING_SERVER=dead)
    assert (result.returncode, result.stderr) == (
        4,
        f"lending-grpc: UNAVAILABLE: cannot reach {dead} (connection refused)\n",
    )


def test_a_revoked_login_says_to_log_in_again(cli: Cli) -> None:
    cli.logged_in()
    tokens = json.loads(cli.token_file.read_text())["servers"][cli.server]["tokens"]
    with grpc.insecure_channel(cli.server) as channel:  # logged out elsewhere, with the same session
        auth_pb2_grpc.AuthServiceStub(channel).Logout(
            auth_pb2.LogoutRequest(), metadata=bearer(tokens["access_token"])
        )
    result = cli("loan", "list", ok=False)
    assert (result.returncode, result.stderr) == (
        3,
        "lending-grpc: UNAUTHENTICATED: the token's session was revoked (logout, reuse or erasure): "
        "run `lending-grpc login ada` again\n",
    )
    cli.log_in("ada")
    assert cli("loan", "list").returncode == 0


@pytest.mark.slow
def test_a_login_to_a_server_whose_key_changed_says_to_log_in_again(tmp_path: Path) -> None:
    database = tmp_path / "k.db"
    before = ServerProcess(database)
    person = Cli(before.target, tmp_path / "home")
    try:
        person.logged_in()
    finally:
        before.terminate()
    after = ServerProcess(database, env={"LENDING_SECRET_KEY": "another-secret-key-of-at-least-32-bytes"})
    try:
        # The login is cached per server address: carry it over to the restarted server's port.
        cached = json.loads(person.token_file.read_text())["servers"][before.target]
        person.token_file.write_text(json.dumps({"servers": {after.target: cached}}))
        person.server = after.target
        refused = person("loan", "list", ok=False)
    finally:
        after.terminate()
    assert (refused.returncode, refused.stderr) == (
        3,
        "lending-grpc: UNAUTHENTICATED: the token was signed with a key this server does not accept: "
        "run `lending-grpc login ada` again\n",
    )


def test_a_rejected_cached_token_is_renewed_and_saved(cli: Cli) -> None:
    cli.logged_in()
    data = json.loads(cli.token_file.read_text())
    data["servers"][cli.server]["tokens"]["access_token"] = "expired-or-revoked"
    cli.token_file.write_text(json.dumps(data))
    cli("loan", "create", "L1", "1000", "--start-date", "2026-01-05")
    renewed = json.loads(cli.token_file.read_text())["servers"][cli.server]["tokens"]
    assert renewed["access_token"].count(".") == 2
    assert renewed["refresh_token"] != data["servers"][cli.server]["tokens"]["refresh_token"]
    assert stat.S_IMODE(cli.token_file.stat().st_mode) == 0o600


def test_client_variables_do_not_disturb_serve(tmp_path: Path) -> None:
    """LENDING_SERVER & co. may sit in the same .env as the server's settings."""
    assert not set(CLIENT_ENV_NAMES) & {Settings.env_name(f) for f in Settings.__dataclass_fields__}
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "LENDING_SERVER=127.0.0.1:50051\nLENDING_SERVER_CA_FILE=ca.pem\nLENDING_TIME_ZONE=UTC\n"
    )
    assert load_settings({}, environ={}, dotenv=dotenv).time_zone == "UTC"


def _actions_without_help(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions if choice.help}
            for name, command in action.choices.items():
                if name not in helped:
                    missing.append(f"{path} {name}")
                missing += _actions_without_help(command, f"{path} {name}")
        elif not action.help:  # argparse.SUPPRESS (a hidden, deprecated alias) is a help of its own
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_argument_and_option_of_every_command_has_help() -> None:
    """Server, operator and client commands alike: `lending-grpc X --help` explains every part."""
    assert _actions_without_help(build_parser(), "lending-grpc") == []


def test_register_help_explains_the_username_and_the_email(tmp_path: Path) -> None:
    shown = " ".join(Cli("127.0.0.1:1", tmp_path)("register", "--help").stdout.split())
    assert "username 3-150 characters: letters, digits and @ . + - _ (e.g. ada or ada.l@example.com)" in shown
    assert "--email ADDRESS required: the account's email address, e.g. ada@example.com" in shown
    assert "password (at least 8 characters)" in shown


def test_a_reader_that_goes_away_stops_the_output_quietly(tmp_path: Path) -> None:
    """`lending-grpc audit export | head`: no "[Errno 32] Broken pipe", the exit status a shell expects."""
    reader, writer = os.pipe()
    os.close(reader)  # gone before the first line is written
    try:
        result = subprocess.run(
            [sys.executable, "-m", "lending_grpc", "migrate", "--database-url", sqlite_url(tmp_path / "m")],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
    finally:
        os.close(writer)
    assert result.returncode == 141
    assert "applied schema migration 4" in result.stderr  # it did its work, then stopped quietly
    assert "Broken pipe" not in result.stderr and "Traceback" not in result.stderr
