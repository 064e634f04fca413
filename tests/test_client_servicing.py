"""Servicing through the clients (SDK and command line) against a real server: an operator's
back-dated collections, reversals, the delinquency history and the funding-quality report.

Dates are fixed in the past (the loans start in 2026) and every figure checked
is one the rest of the loan's life cannot change, so the tests do not depend on
the day they run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest
from databases import sqlite_url
from helpers import Cli, grant_operator, sign_up

from lending_grpc.cli.main import build_parser
from lending_grpc.client import (
    DelinquencyPeriod,
    FundingQuality,
    InvalidArgument,
    LendingClient,
    LoanState,
    NotFound,
    PermissionDenied,
)

JAN_12, JAN_27, JAN_28, FEB_10 = (
    dt.date(2026, 1, 12),
    dt.date(2026, 1, 27),
    dt.date(2026, 1, 28),
    dt.date(2026, 2, 10),
)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """The clients do not care which database serves them: SQLite only (storage has its own tests)."""
    return sqlite_url(tmp_path)


@dataclasses.dataclass
class Person:
    client: LendingClient
    user_id: str


@pytest.fixture
def target(server) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
def ada(target):
    """A borrower."""
    client, user_id = sign_up(target, "ada")
    with client:
        yield Person(client, user_id)


@pytest.fixture
def olga(target, server):
    """A field officer with the operator role."""
    client, user_id = sign_up(target, "olga")
    grant_operator(server.database, "olga")
    with client:
        yield Person(client, user_id)


def test_back_dated_collections_a_reversal_and_the_history(ada: Person, olga: Person) -> None:
    loan = ada.client.create_loan("L-1001", Decimal("5000000"), start_date="2026-01-05")
    assert (loan.weekly_payment, loan.total_amount) == (Decimal("110000.00"), Decimal("5500000.00"))

    first = olga.client.make_payment("L-1001", 110000, owner=ada.user_id, value_date=JAN_12)
    assert (first.value_date, first.first_week, first.last_week) == (JAN_12, 1, 1)
    assert (first.outstanding_balance, first.reversed, first.reverse_time) == (
        Decimal("5390000.00"),
        False,
        None,
    )
    status = ada.client.get_delinquency_status("L-1001", JAN_27)
    assert (status.is_delinquent, status.missed_payments, status.overdue_amount, status.days_past_due) == (
        True,
        2,
        Decimal("220000.00"),
        8,
    )

    catch_up = olga.client.make_payment("L-1001", "220000.00", owner=ada.user_id, value_date="2026-01-28")
    assert (catch_up.first_week, catch_up.last_week, catch_up.value_date) == (2, 3, JAN_28)
    assert not ada.client.get_delinquency_status("L-1001", JAN_28).is_delinquent
    assert olga.client.get_delinquency_status(
        "L-1001", JAN_27, owner=ada.user_id
    ).is_delinquent  # as it stood
    periods = ada.client.get_delinquency_history("L-1001").periods
    assert periods[0] == DelinquencyPeriod(JAN_27, JAN_28, 2)
    assert (periods[1].start_date, periods[1].end_date) == (FEB_10, None)  # weeks 4 and 5 went unpaid

    reversed_ = olga.client.reverse_payment(catch_up.payment_id, "transfer bounced")
    assert (reversed_.payment_id, reversed_.reversed, reversed_.reversal_reason) == (
        catch_up.payment_id,
        True,
        "transfer bounced",
    )
    assert reversed_.reverse_time is not None and reversed_.reverse_time.tzinfo is dt.UTC
    out = ada.client.get_outstanding("L-1001")
    assert (out.outstanding_balance, out.paid_amount, out.installments_paid, out.unapplied_amount) == (
        Decimal("5390000.00"),
        Decimal("110000.00"),
        1,
        Decimal("0.00"),
    )
    again = olga.client.reverse_payment(catch_up.payment_id, "a second time")
    assert again == reversed_  # unchanged: no second effect
    assert ada.client.get_outstanding("L-1001").outstanding_balance == Decimal("5390000.00")
    status = ada.client.get_delinquency_status("L-1001", JAN_28)
    assert (status.is_delinquent, status.missed_payments, status.next_due_date) == (
        True,
        2,
        dt.date(2026, 1, 19),
    )
    listed = list(olga.client.iter_payments("L-1001", owner=ada.user_id))
    assert [(p.amount, p.value_date, p.reversed) for p in listed] == [
        (Decimal("110000.00"), JAN_12, False),
        (Decimal("220000.00"), JAN_28, True),
    ]
    schedule = olga.client.get_schedule("L-1001", owner=ada.user_id)
    assert [item.paid for item in schedule.installments[:3]] == [True, False, False]

    payoff = olga.client.make_payment(
        "L-1001",
        olga.client.get_outstanding("L-1001", owner=ada.user_id).outstanding_balance,
        owner=ada.user_id,
        value_date=FEB_10,
    )
    assert (payoff.amount, payoff.first_week, payoff.last_week) == (Decimal("5390000.00"), 2, 50)
    assert ada.client.get_loan("L-1001").state is LoanState.PAID_OFF
    # One period now: the bounced catch-up no longer ends it on 2026-01-28.
    assert ada.client.get_delinquency_history("L-1001").periods == (DelinquencyPeriod(JAN_27, FEB_10, 3),)

    olga.client.reverse_payment(payoff.payment_id, "cheque bounced")
    reopened = olga.client.get_loan("L-1001", owner=ada.user_id)
    assert (reopened.state, reopened.outstanding_balance, reopened.installments_paid) == (
        LoanState.ACTIVE,
        Decimal("5390000.00"),
        1,
    )


def test_a_reversal_can_leave_an_unapplied_amount(ada: Person, olga: Person) -> None:
    loan = ada.client.create_loan("odd", 1000001, start_date="2026-01-05")
    assert (loan.weekly_payment, loan.final_payment) == (Decimal("22000.02"), Decimal("22000.12"))
    first = ada.client.make_payment("odd", "22000.02")
    ada.client.make_payment("odd", "1078001.08")  # weeks 2-50
    olga.client.reverse_payment(first.payment_id, "typed on the wrong loan")
    # 1,078,001.08 paid = 49 regular weeks (1,078,000.98) and 0.10 toward the final one.
    out = ada.client.get_outstanding("odd")
    assert (out.outstanding_balance, out.installments_paid, out.unapplied_amount) == (
        Decimal("22000.02"),
        49,
        Decimal("0.10"),
    )
    assert ada.client.get_loan("odd").unapplied_amount == Decimal("0.10")
    assert ada.client.make_payment("odd", "22000.02").outstanding_balance == Decimal("0.00")


def _book(ada: Person, olga: Person, bob: Person) -> None:
    """Loans in every funding-quality category as of 2026-06-30, and some that do not count."""
    a = ada.client
    a.create_loan("current", 1000000, start_date="2026-06-25")  # first due 07-02: 0 days past due
    a.create_loan("mention", 2000000, start_date="2026-06-01")  # due 06-08: 22 days
    a.create_loan("mention-paid-later", 1000, term_weeks=1, start_date="2026-06-01")
    a.make_payment("mention-paid-later", "1100.00")  # valued today: still owed on 06-30
    a.create_loan("substandard", 5000000, start_date="2026-05-04")
    olga.client.make_payment(
        "substandard", 110000, owner=ada.user_id, value_date="2026-05-11"
    )  # week 2: 43 days
    a.create_loan("doubtful", 1000001, start_date="2026-04-06")  # due 04-13: 78 days
    a.create_loan("loss", 3000000, start_date="2026-03-02")  # due 03-09: 113 days
    a.create_loan("paid-before", 1000, term_weeks=1, start_date="2026-03-02")
    olga.client.make_payment("paid-before", "1100.00", owner=ada.user_id, value_date="2026-03-09")
    a.create_loan("later", 1000000, start_date="2026-07-06")  # not started on 06-30
    bob.client.create_loan("bob-loss", 2000000, start_date="2026-01-05")  # due 01-12: 169 days


@pytest.fixture
def bob(target):
    client, user_id = sign_up(target, "bob")
    with client:
        yield Person(client, user_id)


def test_portfolio_report_by_funding_quality(ada: Person, olga: Person, bob: Person) -> None:
    _book(ada, olga, bob)
    mine = ada.client.get_portfolio_report(dt.date(2026, 6, 30))
    assert mine.as_of == dt.date(2026, 6, 30)
    assert [(c.quality, c.loans, c.outstanding_amount) for c in mine.categories] == [
        (FundingQuality.CURRENT, 1, Decimal("1100000.00")),
        (FundingQuality.SPECIAL_MENTION, 2, Decimal("2201100.00")),
        (FundingQuality.SUBSTANDARD, 1, Decimal("5390000.00")),
        (FundingQuality.DOUBTFUL, 1, Decimal("1100001.10")),
        (FundingQuality.LOSS, 1, Decimal("3300000.00")),
    ]
    assert (mine.loans, mine.outstanding_amount) == (6, Decimal("13091101.10"))
    assert (mine.twp90, mine.tkb90) == (Decimal("25.21"), Decimal("74.79"))  # 3,300,000 / 13,091,101.10

    book = olga.client.get_portfolio_report("2026-06-30", all_owners=True)
    assert book.category(FundingQuality.LOSS).loans == 2
    assert book.category(FundingQuality.LOSS).outstanding_amount == Decimal("5500000.00")
    assert (book.loans, book.outstanding_amount, book.twp90, book.tkb90) == (
        7,
        Decimal("15291101.10"),
        Decimal("35.97"),
        Decimal("64.03"),
    )
    empty = olga.client.get_portfolio_report("2026-06-30")  # olga has no loans of her own
    assert (empty.loans, empty.outstanding_amount, empty.twp90, empty.tkb90) == (
        0,
        Decimal("0.00"),
        Decimal("0.00"),
        Decimal("100.00"),
    )
    assert [c.quality for c in empty.categories] == list(FundingQuality)[1:]  # all five, in order


def test_operator_only_paths_and_field_errors(ada: Person, olga: Person) -> None:
    ada.client.create_loan("L1", 5000000, start_date="2026-01-05")
    payment = ada.client.make_payment("L1", 110000)
    assert payment.value_date is not None  # a borrower's own payment is valued today
    for call in (
        lambda: ada.client.make_payment("L1", 110000, value_date="2026-01-12"),
        lambda: ada.client.make_payment("L1", 110000, owner=olga.user_id),
        lambda: ada.client.reverse_payment(payment.payment_id, "mine"),
        lambda: ada.client.get_portfolio_report(all_owners=True),
        lambda: ada.client.get_delinquency_history("L1", owner=olga.user_id),
    ):
        with pytest.raises(PermissionDenied):
            call()
    with pytest.raises(InvalidArgument) as info:
        olga.client.make_payment("L1", 110000, owner=ada.user_id, value_date="2026-01-04")  # before the start
    assert info.value.field == "value_date"
    with pytest.raises(InvalidArgument) as info:
        olga.client.reverse_payment(payment.payment_id, "")
    assert info.value.field == "reason"
    with pytest.raises(NotFound):
        olga.client.reverse_payment("00000000-0000-0000-0000-000000000000", "no such payment")
    with pytest.raises(NotFound):
        olga.client.get_delinquency_history("L1")  # olga's own loan L1 does not exist
    with pytest.raises(InvalidArgument) as info:
        ada.client.get_portfolio_report("2026-02-30")
    assert info.value.field == "as_of"
    assert ada.client.get_outstanding("L1").installments_paid == 1  # nothing refused was recorded


# -- the command line --


@pytest.fixture
def people(target, server, tmp_path):
    """ada and olga (an operator) at their own terminals, logged in; ada's user id."""
    _, ada_id = sign_up(target, "ada")
    sign_up(target, "olga")
    grant_operator(server.database, "olga")
    return Cli(target, tmp_path / "ada").log_in("ada"), Cli(target, tmp_path / "olga").log_in("olga"), ada_id


def test_cli_collections_reversal_and_history(people) -> None:
    ada, olga, ada_id = people
    ada("loan", "create", "L-1001", "5,000,000", "--start-date", "2026-01-05")
    first = olga("pay", "L-1001", "110000", "--owner", ada_id, "--value-date", "2026-01-12").stdout
    assert first.startswith("paid         110,000.00 on L-1001 (week 1)\noutstanding  5,390,000.00\n")
    assert first.endswith("value date   2026-01-12\n")
    catch_up = json.loads(
        olga("pay", "L-1001", "220,000.00", "--owner", ada_id, "--value-date", "2026-01-28", "--json").stdout
    )
    assert (catch_up["amount"], catch_up["value_date"], catch_up["reversed"]) == (
        "220000.00",
        "2026-01-28",
        False,
    )

    history = ada("history", "L-1001").stdout.splitlines()
    assert history[:2] == [
        "DELINQUENT FROM  CURRENT AGAIN  DAYS  MOST MISSED",
        "2026-01-27       2026-01-28        1            2",
    ]
    assert history[2].split()[:3] == ["2026-02-10", "ongoing", "-"]  # still delinquent today
    assert history[3] == "L-1001: 2 delinquency periods, delinquent since 2026-02-10"

    reversed_ = olga("reverse", catch_up["payment_id"], "--reason", "transfer bounced").stdout.splitlines()
    assert reversed_[:4] == [
        "reversed     220,000.00 on L-1001 (weeks 2-3)",
        "value date   2026-01-28",
        "reason       transfer bounced",
        f"payment      {catch_up['payment_id']}",
    ]
    payments = olga("loan", "payments", "L-1001", "--owner", ada_id).stdout.splitlines()
    assert payments[0].split()[-3:] == ["VALUE", "DATE", "REVERSED"]
    assert payments[1].endswith("  2026-01-12  no")
    assert payments[2].endswith(f"{catch_up['payment_id']}  2026-01-28  yes: transfer bounced")

    olga("pay", "L-1001", "--payoff", "--owner", ada_id, "--value-date", "2026-02-20")
    assert ada("history", "L-1001").stdout == (
        "DELINQUENT FROM  CURRENT AGAIN  DAYS  MOST MISSED\n"
        "2026-01-27       2026-02-20       24            5\n"
        "L-1001: 1 delinquency period\n"
    )
    assert json.loads(ada("history", "L-1001", "--json").stdout) == {
        "loan_id": "L-1001",
        "periods": [{"start_date": "2026-01-27", "end_date": "2026-02-20", "max_missed_payments": 5}],
    }
    assert "paid         5,500,000.00 (50 installments)\n" in ada("loan", "outstanding", "L-1001").stdout
    ada("loan", "create", "L-1002", "1000", "--term-weeks", "1")  # starts today: nothing due yet
    assert ada("history", "L-1002").stdout == (
        "L-1002 has never been delinquent (2 or more missed installments)\n"
    )


def test_cli_portfolio_table_and_json(people, target) -> None:
    ada, olga, ada_id = people
    bob, _ = sign_up(target, "bob")
    with (
        LendingClient(target, username="ada", password="correct horse battery") as a,
        LendingClient(target, username="olga", password="correct horse battery") as o,
        bob,
    ):
        _book(Person(a, ada_id), Person(o, ""), Person(bob, ""))
    assert ada("portfolio", "--as-of", "2026-06-30").stdout == (
        "funding quality as of 2026-06-30, your loans: 6 loans with something outstanding\n"
        "QUALITY          DAYS PAST DUE  LOANS    OUTSTANDING\n"
        "CURRENT                      0      1   1,100,000.00\n"
        "SPECIAL_MENTION           1-30      2   2,201,100.00\n"
        "SUBSTANDARD              31-60      1   5,390,000.00\n"
        "DOUBTFUL                 61-90      1   1,100,001.10\n"
        "LOSS                   over 90      1   3,300,000.00\n"
        "total                               6  13,091,101.10\n"
        "TWP90  25.21%  (share of the outstanding over 90 days past due)\n"
        "TKB90  74.79%  (100 - TWP90)\n"
    )
    report = json.loads(olga("portfolio", "--as-of", "2026-06-30", "--all", "--json").stdout)
    assert report["categories"][4] == {"quality": "LOSS", "loans": 2, "outstanding_amount": "5500000.00"}
    assert (report["as_of"], report["loans"], report["outstanding_amount"]) == (
        "2026-06-30",
        7,
        "15291101.10",
    )
    assert (report["twp90"], report["tkb90"]) == ("35.97", "64.03")
    assert olga("portfolio", "--as-of", "2026-06-30").stdout.startswith(
        "funding quality as of 2026-06-30, your loans: 0 loans with something outstanding\n"
    )
    later = ada("portfolio", "--as-of", "2026-07-03").stdout.splitlines()  # 'current' missed 07-02's week
    assert later[2] == "CURRENT                      0      0           0.00"
    assert later[3].split()[:3] == ["SPECIAL_MENTION", "1-30", "3"]


def test_cli_refusals_and_exit_codes(people) -> None:
    ada, olga, ada_id = people
    ada("loan", "create", "L1", "5000000", "--start-date", "2026-01-05")
    paid = json.loads(ada("pay", "L1", "110000", "--json").stdout)

    result = ada("reverse", paid["payment_id"], "--reason", "mine", ok=False)
    assert (result.returncode, result.stderr) == (
        1,
        "lending-grpc: PERMISSION_DENIED: ReversePayment is for operators only\n",
    )
    result = ada("pay", "L1", "110000", "--value-date", "2026-01-12", ok=False)
    assert result.returncode == 1 and result.stderr.startswith("lending-grpc: PERMISSION_DENIED: ")
    result = ada("portfolio", "--all", ok=False)
    assert result.returncode == 1 and result.stderr.startswith("lending-grpc: PERMISSION_DENIED: ")
    result = olga("pay", "L1", "110000", "--owner", ada_id, "--value-date", "2999-01-01", "--json", ok=False)
    assert result.returncode == 1
    assert json.loads(result.stderr)["error"]["field"] == "value_date"
    result = olga("reverse", paid["payment_id"], "--reason", "", ok=False)
    assert result.returncode == 1 and result.stderr.startswith("lending-grpc: INVALID_ARGUMENT: reason")
    result = olga("history", "L1", ok=False)  # olga has no loan L1
    assert (result.returncode, result.stderr) == (1, "lending-grpc: NOT_FOUND: loan 'L1' not found\n")
    result = olga("reverse", paid["payment_id"], ok=False, one_line=False)  # argparse: --reason is required
    assert result.returncode == 2 and "the following arguments are required: --reason" in result.stderr
    assert (
        ada("loan", "outstanding", "L1").stdout.splitlines()[2] == "paid         110,000.00 (1 installment)"
    )


def _client_command_parsers(parser: argparse.ArgumentParser, name: str = "lending-grpc"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _client_command_parsers(sub, f"{name} {sub_name}")
    if parser.get_default("client_command") is not None:
        yield name, parser


def test_every_client_argument_has_help() -> None:
    commands = dict(_client_command_parsers(build_parser()))
    for expected in (
        "lending-grpc reverse",
        "lending-grpc history",
        "lending-grpc portfolio",
        "lending-grpc events",
    ):
        assert expected in commands
    missing = [
        f"{name} {action.dest}"
        for name, parser in commands.items()
        for action in parser._actions
        if not action.help and action.help != argparse.SUPPRESS
    ]
    assert missing == []
