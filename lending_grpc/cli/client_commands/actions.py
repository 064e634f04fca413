"""What each client subcommand does: call the SDK, print a table or JSON, exit with a clear code.

Exit codes: 0 done; 1 the server refused the request (bad input, not found,
payment not accepted, ...); 2 usage or local problem (bad flag, unreadable
file); 3 not logged in or the login was refused; 4 server unreachable, busy
or too slow: try again (a payment: with the same --request-id).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
from typing import Any, TextIO

import grpc

from lending_grpc.cli.client_commands import output
from lending_grpc.cli.client_commands.token_cache import CachedLogin, TokenCache, TokenCacheError
from lending_grpc.cli.server_option import ServerAddressError, server_address
from lending_grpc.client import (
    DelinquencyStatus,
    Event,
    EventType,
    FundingQuality,
    LendingClient,
    LendingError,
    Loan,
    LoanPaidOff,
    NotLoggedIn,
    Payment,
    TlsConfig,
    Unauthenticated,
)
from lending_grpc.config import ClientEnv

EXIT_REFUSED, EXIT_USAGE, EXIT_AUTH, EXIT_UNREACHABLE = 1, 2, 3, 4
_UNREACHABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}
_THOUSANDS = re.compile(r"\d{1,3}(,\d{3})+(\.\d*)?")
_TRUE = {"1", "true", "yes", "on"}


class UsageError(Exception):
    """A local problem with the command's input; printed as one line, exit code 2."""


class Context:
    """The parsed arguments plus the pieces every command needs."""

    def __init__(self, args: argparse.Namespace, environ=os.environ, stdout: TextIO = sys.stdout) -> None:
        self.args = args
        self.environ = environ
        self.stdout = stdout
        self.server = ""  # set by `check_server`
        self.cache = TokenCache()
        self.login: CachedLogin | None = None  # the cached login a command runs with

    def check_server(self) -> None:
        """Take the server's address from --server or LENDING_SERVER; UsageError if it is malformed."""
        try:
            self.server = server_address(self.args.server, self.environ)
        except ServerAddressError as exc:
            raise UsageError(str(exc)) from None

    def tls(self) -> TlsConfig | None:
        ca = self.args.ca_file or self.environ.get(ClientEnv.SERVER_CA_FILE)
        cert = self.args.client_cert or self.environ.get(ClientEnv.CLIENT_CERT_FILE)
        key = self.args.client_key or self.environ.get(ClientEnv.CLIENT_KEY_FILE)
        wanted = self.args.tls or self.environ.get(ClientEnv.SERVER_TLS, "").strip().lower() in _TRUE
        if not (wanted or ca or cert or key):
            return None
        try:
            return TlsConfig.from_files(ca, cert, key)
        except OSError as exc:
            raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def client(self, *, logged_in: bool = True) -> LendingClient:
        """A client connected to the server; with ``logged_in`` it resumes the cached login and saves
        renewals. An unreachable server is reported before a missing login: it is the first problem."""
        if self.args.timeout <= 0:
            raise UsageError("--timeout must be positive")
        cached = self.cache.load(self.server) if logged_in else None

        def save(tokens) -> None:
            self.cache.save(self.server, CachedLogin(cached.username, tokens))

        client = LendingClient(
            self.server,
            tls=self.tls(),
            tokens=cached.tokens if cached else None,
            on_tokens=save if cached else None,
            timeout=self.args.timeout,
        )
        try:
            client.connect()
            if logged_in and cached is None:
                raise NotLoggedIn(f"not logged in to {self.server}: run `lending-grpc login USERNAME`")
        except BaseException:
            client.close()
            raise
        self.login = cached
        return client

    def emit(self, human: str, data: Any) -> None:
        """Print ``human`` text, or ``data`` as JSON with --json."""
        print(output.to_json(data) if self.args.json else human, file=self.stdout)

    def line(self, text: str) -> None:
        """One line now, not when the buffer fills: for output that streams."""
        print(text, file=self.stdout, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the chosen client command; every failure becomes one line on stderr and an exit code."""
    ctx = Context(args)
    try:
        ctx.check_server()
        args.client_command(ctx)
        return 0
    except LendingError as exc:
        message = _login_again(ctx, exc) if isinstance(exc, Unauthenticated) else exc.message
        return _fail(ctx, exc.code.name, message, _exit_code(exc), reason=exc.reason, field=exc.field)
    except (UsageError, TokenCacheError) as exc:
        return _fail(ctx, "USAGE", str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail(ctx, "CANCELLED", "interrupted", 130)
    except BrokenPipeError:  # `lending-grpc loan schedule X | head`: not an error
        sys.stderr.close()
        return 0


def _login_again(ctx: Context, exc: Unauthenticated) -> str:
    """The server refused the cached login (expired, revoked, signed with a key it no longer has):
    say so, and what to do. Other refusals (a wrong password at `login`) keep their message."""
    if ctx.login is None:
        return exc.message
    why = "the session has expired" if isinstance(exc, NotLoggedIn) else exc.message
    return f"{why}: run `lending-grpc login {ctx.login.username}` again"


def _exit_code(exc: LendingError) -> int:
    if isinstance(exc, Unauthenticated):
        return EXIT_AUTH
    return EXIT_UNREACHABLE if exc.code in _UNREACHABLE else EXIT_REFUSED


def _fail(ctx: Context, code: str, message: str, exit_code: int, **extra: Any) -> int:
    if getattr(ctx.args, "json", False):
        error = {"code": code, "message": message, **{k: v for k, v in extra.items() if v}}
        print(json.dumps({"error": error}), file=sys.stderr)
    else:
        print(f"lending-grpc: {code}: {message}", file=sys.stderr)
    return exit_code


# -- input helpers --


def _read_password(args: argparse.Namespace, *, confirm: bool) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise UsageError("--password-stdin: standard input had no password")
        return password
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask for the password: pipe it in with --password-stdin")
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Repeat password: ") != password:
        raise UsageError("the passwords do not match")
    return password


def _amount(text: str) -> str:
    """Accept '110,000.00' as typed from our own tables; anything else goes to the server to judge."""
    text = text.strip()
    return text.replace(",", "") if _THOUSANDS.fullmatch(text) else text


# -- commands --


def register(ctx: Context) -> None:
    password = _read_password(ctx.args, confirm=True)
    with ctx.client(logged_in=False) as client:
        user = client.register(ctx.args.username, password, ctx.args.email)
    ctx.emit(
        f"registered {user.username} (user {user.user_id}); next: lending-grpc login {user.username}", user
    )


def login(ctx: Context) -> None:
    password = _read_password(ctx.args, confirm=False)
    with ctx.client(logged_in=False) as client:
        tokens = client.login(ctx.args.username, password)
    ctx.cache.save(ctx.server, CachedLogin(ctx.args.username, tokens))
    ctx.emit(
        f"logged in to {ctx.server} as {ctx.args.username}; tokens saved in {ctx.cache.path}",
        {"server": ctx.server, "username": ctx.args.username, "token_file": str(ctx.cache.path)},
    )


def logout(ctx: Context) -> None:
    """End the session on the server, then forget its tokens here (also when the server is away)."""
    if ctx.cache.load(ctx.server) is None:
        ctx.emit(f"not logged in to {ctx.server}", {"server": ctx.server, "logged_out": False})
        return
    try:
        with ctx.client() as client:
            client.logout()
        ended = True
    except Unauthenticated:  # revoked or expired already: nothing left to end on the server
        ended = False
    except LendingError as exc:
        ctx.cache.forget(ctx.server)
        exc.message += (
            "; the tokens are forgotten here, but the server was not told: the session stays valid "
            "on it until its refresh token expires"
        )
        raise
    ctx.cache.forget(ctx.server)
    ctx.emit(
        f"logged out of {ctx.server}" + ("" if ended else " (the server had already ended the session)"),
        {"server": ctx.server, "logged_out": True, "session_ended_now": ended},
    )


def loan_create(ctx: Context) -> None:
    a = ctx.args
    with ctx.client() as client:
        loan = client.create_loan(
            a.loan_id,
            _amount(a.principal),
            start_date=a.start_date,
            term_weeks=a.term_weeks,
            interest_rate=a.interest_rate,
        )
    ctx.emit(_loan_fields(loan), loan)


def loan_show(ctx: Context) -> None:
    with ctx.client() as client:
        loan = client.get_loan(ctx.args.loan_id, owner=ctx.args.owner)
    ctx.emit(_loan_fields(loan), loan)


def _loan_fields(loan) -> str:
    return output.fields(
        [
            ("loan", loan.loan_id),
            ("state", loan.state.value),
            ("principal", output.money(loan.principal_amount)),
            ("interest rate", str(loan.interest_rate)),
            ("total", output.money(loan.total_amount)),
            (
                "term",
                f"{output.count(loan.term_weeks, 'week')} from {loan.start_date} "
                f"to {output.day(loan.maturity_date)}",
            ),
            ("weekly payment", output.money(loan.weekly_payment)),
            ("final payment", output.money(loan.final_payment)),
            (
                "paid",
                f"{output.money(loan.paid_amount)} "
                f"({loan.installments_paid} of {output.count(loan.term_weeks, 'week')})",
            ),
            ("outstanding", output.money(loan.outstanding_balance)),
        ]
    )


def loan_list(ctx: Context) -> None:
    with ctx.client() as client:
        loans = list(client.iter_loans(page_size=500))
    if not loans and not ctx.args.json:
        ctx.emit("no loans yet: create one with `lending-grpc loan create LOAN_ID PRINCIPAL`", None)
        return
    rows = [
        [
            loan.loan_id,
            loan.state.value,
            output.money(loan.principal_amount),
            output.money(loan.weekly_payment),
            f"{loan.installments_paid}/{loan.term_weeks}",
            output.money(loan.outstanding_balance),
            loan.start_date.isoformat(),
        ]
        for loan in loans
    ]
    headers = ["LOAN", "STATE", "PRINCIPAL", "WEEKLY", "PAID", "OUTSTANDING", "START"]
    ctx.emit(output.table(headers, rows, right=(2, 3, 4, 5)), {"loans": loans})


def loan_schedule(ctx: Context) -> None:
    with ctx.client() as client:
        schedule = client.get_schedule(ctx.args.loan_id, owner=ctx.args.owner)
    rows = [
        [
            str(item.week),
            item.due_date.isoformat(),
            output.money(item.due_amount),
            "yes" if item.paid else "no",
            output.instant(item.payment_time),
        ]
        for item in schedule.installments
    ]
    paid = sum(1 for item in schedule.installments if item.paid)
    text = output.table(["WEEK", "DUE DATE", "AMOUNT", "PAID", "PAYMENT TIME"], rows, right=(0, 2))
    total = output.money(schedule.total_amount)
    text += f"\n{output.count(len(rows), 'installment')}, {paid} paid; total {total}"
    ctx.emit(text, schedule)


def loan_outstanding(ctx: Context) -> None:
    with ctx.client() as client:
        out = client.get_outstanding(ctx.args.loan_id, owner=ctx.args.owner)
    pairs = [
        ("loan", out.loan_id),
        ("total", output.money(out.total_amount)),
        ("paid", f"{output.money(out.paid_amount)} ({output.count(out.installments_paid, 'installment')})"),
        (
            "outstanding",
            f"{output.money(out.outstanding_balance)} "
            f"({output.count(out.installments_remaining, 'installment')})",
        ),
    ]
    if out.unapplied_amount:
        pairs.append(
            ("unapplied", f"{output.money(out.unapplied_amount)} (counts toward the next installment)")
        )
    text = output.fields(pairs)
    ctx.emit(text, out)


def loan_payments(ctx: Context) -> None:
    with ctx.client() as client:
        payments = list(client.iter_payments(ctx.args.loan_id, page_size=500, owner=ctx.args.owner))
    rows = [
        [
            output.instant(p.payment_time),
            output.money(p.amount),
            _weeks(p),
            output.money(p.outstanding_balance),
            p.payment_id,
            output.day(p.value_date),
            f"yes: {p.reversal_reason}" if p.reversed else "no",
        ]
        for p in payments
    ]
    headers = ["PAYMENT TIME", "AMOUNT", "WEEKS", "OUTSTANDING AFTER", "PAYMENT ID", "VALUE DATE", "REVERSED"]
    ctx.emit(output.table(headers, rows, right=(1, 3)), {"payments": payments})


def _weeks(payment: Payment) -> str:
    """'4' or '2-3': the weeks a payment covered when it was recorded."""
    if payment.first_week == payment.last_week:
        return str(payment.first_week)
    return f"{payment.first_week}-{payment.last_week}"


def loan_status(ctx: Context) -> None:
    with ctx.client() as client:
        status = client.get_delinquency_status(ctx.args.loan_id, ctx.args.as_of, owner=ctx.args.owner)
    ctx.emit(_status_fields(status), status)


def _status_fields(status) -> str:
    return output.fields(
        [
            ("loan", status.loan_id),
            ("as of", status.as_of.isoformat()),
            ("delinquent", "YES" if status.is_delinquent else "no"),
            ("missed installments", str(status.missed_payments)),
            ("overdue", output.money(status.overdue_amount)),
            ("days past due", str(status.days_past_due)),
            ("next due date", output.day(status.next_due_date)),
        ]
    )


def pay(ctx: Context) -> None:
    a = ctx.args
    with ctx.client() as client:
        if a.payoff:
            amount = client.get_outstanding(a.loan_id, owner=a.owner).outstanding_balance
        else:
            amount = _amount(a.amount)
        if a.payoff and not amount:  # the server would call 0.00 a malformed amount: say what is meant
            raise LoanPaidOff(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"loan '{a.loan_id}' is paid off: nothing to pay",
                reason="LOAN_PAID_OFF",
            )
        payment = client.make_payment(
            a.loan_id, amount, request_id=a.request_id, owner=a.owner, value_date=a.value_date
        )
    text = output.fields(
        [
            ("paid", f"{output.money(payment.amount)} on {payment.loan_id} ({_week_words(payment)})"),
            ("outstanding", output.money(payment.outstanding_balance)),
            ("payment", payment.payment_id),
            ("request id", payment.request_id),
            ("time", output.instant(payment.payment_time)),
            ("value date", output.day(payment.value_date)),
        ]
    )
    ctx.emit(text, payment)


def _week_words(payment: Payment) -> str:
    return (
        f"week {payment.first_week}"
        if payment.first_week == payment.last_week
        else f"weeks {_weeks(payment)}"
    )


def reverse(ctx: Context) -> None:
    with ctx.client() as client:
        payment = client.reverse_payment(ctx.args.payment_id, ctx.args.reason)
    text = output.fields(
        [
            ("reversed", f"{output.money(payment.amount)} on {payment.loan_id} ({_week_words(payment)})"),
            ("value date", output.day(payment.value_date)),
            ("reason", payment.reversal_reason),
            ("payment", payment.payment_id),
            ("paid at", output.instant(payment.payment_time)),
            ("reversed at", output.instant(payment.reverse_time)),
        ]
    )
    ctx.emit(text, payment)


def delinquent(ctx: Context) -> None:
    with ctx.client() as client:
        loans = list(client.iter_delinquent_loans(ctx.args.as_of, page_size=500))
    if not loans and not ctx.args.json:
        when = ctx.args.as_of or "today"
        ctx.emit(f"no delinquent loans as of {when}", None)
        return
    rows = [
        [
            s.loan_id,
            str(s.missed_payments),
            output.money(s.overdue_amount),
            str(s.days_past_due),
            output.day(s.next_due_date),
            s.as_of.isoformat(),
        ]
        for s in loans
    ]
    headers = ["LOAN", "MISSED", "OVERDUE", "DAYS PAST DUE", "OLDEST DUE", "AS OF"]
    ctx.emit(output.table(headers, rows, right=(1, 2, 3)), {"loans": loans})


def history(ctx: Context) -> None:
    with ctx.client() as client:
        found = client.get_delinquency_history(ctx.args.loan_id, owner=ctx.args.owner)
    if not found.periods:
        ctx.emit(f"{found.loan_id} has never been delinquent (2 or more missed installments)", found)
        return
    rows = [
        [
            period.start_date.isoformat(),
            output.day(period.end_date) if period.end_date else "ongoing",
            str((period.end_date - period.start_date).days) if period.end_date else "-",
            str(period.max_missed_payments),
        ]
        for period in found.periods
    ]
    headers = ["DELINQUENT FROM", "CURRENT AGAIN", "DAYS", "MOST MISSED"]
    summary = f"{found.loan_id}: {output.count(len(rows), 'delinquency period')}"
    if found.periods[-1].end_date is None:
        summary += f", delinquent since {found.periods[-1].start_date}"
    ctx.emit(f"{output.table(headers, rows, right=(2, 3))}\n{summary}", found)


_DAYS_PAST_DUE = {
    FundingQuality.CURRENT: "0",
    FundingQuality.SPECIAL_MENTION: "1-30",
    FundingQuality.SUBSTANDARD: "31-60",
    FundingQuality.DOUBTFUL: "61-90",
    FundingQuality.LOSS: "over 90",
}


def portfolio(ctx: Context) -> None:
    with ctx.client() as client:
        report = client.get_portfolio_report(ctx.args.as_of, all_owners=ctx.args.all)
    rows = [
        [
            item.quality.value,
            _DAYS_PAST_DUE.get(item.quality, "?"),
            str(item.loans),
            output.money(item.outstanding_amount),
        ]
        for item in report.categories
    ]
    rows.append(["total", "", str(report.loans), output.money(report.outstanding_amount)])
    scope = "the whole book" if ctx.args.all else "your loans"
    text = "\n".join(
        [
            f"funding quality as of {report.as_of}, {scope}: "
            f"{output.count(report.loans, 'loan')} with something outstanding",
            output.table(["QUALITY", "DAYS PAST DUE", "LOANS", "OUTSTANDING"], rows, right=(1, 2, 3)),
            output.fields(
                [
                    ("TWP90", f"{report.twp90}%  (share of the outstanding over 90 days past due)"),
                    ("TKB90", f"{report.tkb90}%  (100 - TWP90)"),
                ]
            ),
        ]
    )
    ctx.emit(text, report)


_EVENT_HEADER = f"{'SEQ':>6}  {'TIME':<20}  {'TYPE':<19}  {'EFFECTIVE':<10}  {'LOAN':<10}  DETAIL"


def events(ctx: Context) -> None:
    """The log from --after on, one line per event; with --follow, then each new event until Ctrl-C.

    --json prints JSON Lines (one object per event), so a pipe can process
    them as they come.
    """
    a = ctx.args
    with ctx.client() as client:
        if not a.follow:
            shown = 0
            for event in client.iter_events(a.after, page_size=500, loan_id=a.loan):
                if not shown and not a.json:
                    ctx.line(_EVENT_HEADER)
                ctx.line(_event_json(event) if a.json else _event_line(event))
                shown += 1
            if not shown and not a.json:
                ctx.line(f"no events after sequence {a.after}")
            return

        def note(error: LendingError, delay: float) -> None:
            print(
                f"lending-grpc: {error.code.name}: {error.message} "
                f"(resuming after sequence {watch.last_sequence} in {delay:.1f} s)",
                file=sys.stderr,
                flush=True,
            )

        watch = client.watch_events(a.after, a.loan, on_reconnect=note)
        try:
            with watch:
                if not a.json:
                    ctx.line(_EVENT_HEADER)
                for event in watch:
                    ctx.line(_event_json(event) if a.json else _event_line(event))
        except KeyboardInterrupt:  # how --follow is meant to end: not an error
            return


def _event_line(event: Event) -> str:
    stamp = output.instant(event.occur_time)
    return (
        f"{event.sequence:>6}  {stamp:<20}  {event.type.value:<19}  {output.day(event.effective_date):<10}  "
        f"{event.loan_id:<10}  {_event_detail(event)}"
    ).rstrip()


def _event_detail(event: Event) -> str:
    resource = event.resource
    if isinstance(resource, Payment):
        text = f"{output.money(resource.amount)} for {_week_words(resource)}"
        if event.type is EventType.PAYMENT_REVERSED:
            return f"{text} reversed: {resource.reversal_reason}"
        return f"{text}, outstanding {output.money(resource.outstanding_balance)}"
    if isinstance(resource, Loan):
        if event.type is EventType.LOAN_CREATED:
            return (
                f"{output.money(resource.principal_amount)} over {output.count(resource.term_weeks, 'week')} "
                f"at {resource.interest_rate}, weekly {output.money(resource.weekly_payment)}"
            )
        if event.type is EventType.LOAN_PAID_OFF:
            return f"paid off: {output.money(resource.paid_amount)} paid"
        return f"outstanding {output.money(resource.outstanding_balance)}"
    if isinstance(resource, DelinquencyStatus):
        if not resource.missed_payments:
            return "nothing overdue"
        return (
            f"{output.count(resource.missed_payments, 'installment')} missed, "
            f"{output.money(resource.overdue_amount)} overdue, "
            f"{output.count(resource.days_past_due, 'day')} past due"
        )
    return ""


def _event_json(event: Event) -> str:
    """One line of JSON; the resource under the name the protobuf oneof gives it."""
    data = output.plain(event)
    resource = data.pop("resource")
    kind = {Loan: "loan", Payment: "payment", DelinquencyStatus: "delinquency"}.get(type(event.resource))
    if kind is not None:
        data[kind] = resource
    return json.dumps(data)
