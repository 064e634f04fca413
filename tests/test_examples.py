"""The worked example end to end: through raw stubs, `make demo` (the command line client), and the
Node.js example client."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import make_settings
from lending.v1 import billing_pb2

from lending_grpc.client import LendingClient
from lending_grpc.server import create_server

# == the worked example through raw stubs ================================================


def test_worked_example(api, alice):
    loan = api.billing.CreateLoan(
        billing_pb2.CreateLoanRequest(loan_id="L1", principal_amount="5000000", start_date="2026-01-05"),
        metadata=alice,
    )
    assert (loan.total_amount, loan.weekly_payment, loan.final_payment) == (
        "5500000.00",
        "110000.00",
        "110000.00",
    )
    payment = api.billing.MakePayment(
        billing_pb2.MakePaymentRequest(loan_id="L1", amount="110000.00", request_id="r1"), metadata=alice
    )
    assert payment.outstanding_balance == "5390000.00"
    outstanding = api.billing.GetOutstanding(billing_pb2.GetOutstandingRequest(loan_id="L1"), metadata=alice)
    assert outstanding.outstanding_balance == "5390000.00"
    # The payment is valued today: as of 2026-01-27 nothing had been paid, three installments were due.
    status = api.billing.GetDelinquencyStatus(
        billing_pb2.GetDelinquencyStatusRequest(loan_id="L1", as_of="2026-01-27"), metadata=alice
    )
    assert (status.is_delinquent, status.missed_payments, status.overdue_amount) == (True, 3, "330000.00")
    # Today the paid week counts: every installment due since 2026-01-12 but the first is missed.
    today = api.billing.GetDelinquencyStatus(
        billing_pb2.GetDelinquencyStatusRequest(loan_id="L1"), metadata=alice
    )
    assert today.is_delinquent and today.next_due_date == "2026-01-19"


# == `make demo` (examples/demo.sh) runs from registration to payoff against the real server it starts ===


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_walks_a_loan_to_payoff(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENDING_")}
    env.update(DEMO_CLI=str(Path(sys.executable).parent / "lending-grpc"), TMPDIR=str(tmp_path))
    result = subprocess.run(
        ["bash", str(ROOT / "examples" / "demo.sh")],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for expected in (
        "registered ada (user ",
        "granted role operator for user ",
        "weekly payment  110,000.00\n",
        "   1  2026-01-12  110,000.00  no    -\n",
        # olga's back-dated collections count from their value dates
        "paid         110,000.00 on L-1001 (week 1)\n",
        "value date   2026-01-12\n",
        "delinquent           YES\nmissed installments  2\noverdue              220,000.00\n",
        "L-1001       2  220,000.00              8  2026-01-19  2026-01-27\n",
        "paid         220,000.00 on L-1001 (weeks 2-3)\n",
        "as of                2026-01-28\ndelinquent           no\n",
        "lending-grpc: FAILED_PRECONDITION: 50000.00 is not a whole number of installments",
        # the bounced catch-up is reversed: the loan is delinquent on 2026-01-28 again
        "reversed     220,000.00 on L-1001 (weeks 2-3)\nvalue date   2026-01-28\n"
        "reason       transfer bounced\n",
        "  2026-01-28  yes: transfer bounced\n",
        "as of                2026-01-28\ndelinquent           YES\nmissed installments  2\n",
        "paid         5,390,000.00 on L-1001 (weeks 2-50)\n",
        "state           PAID_OFF\n",
        "DELINQUENT FROM  CURRENT AGAIN  DAYS  MOST MISSED\n"
        "2026-01-27       2026-02-10       14            3\n"
        "L-1001: 1 delinquency period\n",
        "FAILED_PRECONDITION: the loan is paid off and accepts no more payments\n(exit code 1)\n",
        # January's report: L-1001 12 days past due, L-0999 unpaid since October
        "funding quality as of 2026-01-31, the whole book: 2 loans with something outstanding\n"
        "QUALITY          DAYS PAST DUE  LOANS   OUTSTANDING\n"
        "CURRENT                      0      0          0.00\n"
        "SPECIAL_MENTION           1-30      1  5,390,000.00\n"
        "SUBSTANDARD              31-60      0          0.00\n"
        "DOUBTFUL                 61-90      0          0.00\n"
        "LOSS                   over 90      1  2,200,000.00\n"
        "total                               2  7,590,000.00\n"
        "TWP90  28.99%",
        "TKB90  71.01%",
    ):
        assert expected in out, f"missing {expected!r} in:\n{out}"
    log = out.split("ada$ lending-grpc events\n")[1].split("\n\n")[0].splitlines()[1:]  # without the header
    events = [line.split()[3] for line in log]
    assert events == [
        "LOAN_CREATED",
        "DELINQUENCY_STARTED",  # created already delinquent today
        "PAYMENT_ACCEPTED",
        "PAYMENT_ACCEPTED",
        "PAYMENT_REVERSED",
        "PAYMENT_ACCEPTED",
        "LOAN_PAID_OFF",
        "DELINQUENCY_ENDED",
        "LOAN_CREATED",
        "DELINQUENCY_STARTED",
    ], out
    assert list(tmp_path.iterdir()) == []  # the temporary database and token cache were removed


NODE_DIR = Path(__file__).resolve().parent.parent / "examples" / "node"
NPM_CI_TIMEOUT_SECONDS = 300
NODE_RUN_TIMEOUT_SECONDS = 120
PASSWORD = "correct horse battery"


def _require(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        reason = f"`{tool}` not found on PATH: the Node.js cross-language client check needs Node.js and npm"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true, so this is a failure, not a skip)")
        pytest.skip(reason)
    return found


def _ensure_node_modules(npm: str) -> None:
    """Run `npm ci` when node_modules is missing or older than package-lock.json."""
    node_modules = NODE_DIR / "node_modules"
    lock = NODE_DIR / "package-lock.json"
    if node_modules.is_dir() and node_modules.stat().st_mtime >= lock.stat().st_mtime:
        return
    try:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"`npm ci` in {NODE_DIR} timed out after {NPM_CI_TIMEOUT_SECONDS} s\n"
            f"--- stdout ---\n{exc.stdout}\n--- stderr ---\n{exc.stderr}"
        )
    assert result.returncode == 0, (
        f"`npm ci` in {NODE_DIR} failed with exit code {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with the client's packages installed (before any server starts)."""
    node = _require("node")
    _ensure_node_modules(_require("npm"))
    return node


@pytest.mark.slow
def test_node_client_runs_worked_example(node: str, server) -> None:
    try:
        result = subprocess.run(
            [node, "worked_example.js", f"127.0.0.1:{server.port}"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=NODE_RUN_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"node worked_example.js timed out after {NODE_RUN_TIMEOUT_SECONDS} s\n"
            f"--- stdout ---\n{exc.stdout}\n--- stderr ---\n{exc.stderr}"
        )
    assert result.returncode == 0, (
        f"node worked_example.js exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    assert "all checks passed" in result.stdout, result.stdout


class NodeWatcher:
    """examples/node/watch_events.js running as ada (password on stdin); one JSON event per line."""

    def __init__(self, node: str, target: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [node, "watch_events.js", target, "ada", *args],
            cwd=NODE_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.proc.stdin.write(PASSWORD + "\n")
        self.proc.stdin.close()
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True
        ).start()

    def next_event(self) -> dict:
        try:
            return json.loads(self.lines.get(timeout=NODE_RUN_TIMEOUT_SECONDS))
        except queue.Empty:
            self.proc.kill()
            pytest.fail(f"node watch_events.js printed no event\n--- stderr ---\n{self.proc.stderr.read()}")

    def finish(self, count: int) -> tuple[list[dict], str]:
        """The ``count`` events it printed before stopping by itself (--count), and its stderr."""
        events = [self.next_event() for _ in range(count)]
        try:
            self.proc.wait(timeout=NODE_RUN_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        err = self.proc.stderr.read()
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}\n--- stderr ---\n{err}"
        assert self.lines.empty(), list(self.lines.queue)
        return events, err


@pytest.mark.slow
def test_node_watcher_prints_the_backlog_then_live_events(node: str, server) -> None:
    target = f"127.0.0.1:{server.port}"
    with LendingClient(target) as bootstrap:
        user = bootstrap.register("ada", PASSWORD, "ada@example.com")
    with LendingClient(target, username="ada", password=PASSWORD) as ada:
        ada.create_loan("L-1", 1000, term_weeks=2)  # before the watcher starts: the backlog
        watcher = NodeWatcher(node, target, "--count", "4")
        first = watcher.next_event()  # connected: the backlog came
        payment = ada.make_payment("L-1", "550.00")  # live, while it watches
        ada.make_payment("L-1", "550.00")  # the payoff: PAYMENT_ACCEPTED and LOAN_PAID_OFF
        rest, _ = watcher.finish(3)
    events = [first, *rest]
    assert [(e["type"], e["loan_id"], e["resource"]) for e in events] == [
        ("EVENT_TYPE_LOAN_CREATED", "L-1", "loan"),
        ("EVENT_TYPE_PAYMENT_ACCEPTED", "L-1", "payment"),
        ("EVENT_TYPE_PAYMENT_ACCEPTED", "L-1", "payment"),
        ("EVENT_TYPE_LOAN_PAID_OFF", "L-1", "loan"),
    ]
    sequences = [int(e["sequence"]) for e in events]
    assert sequences == sorted(set(sequences))
    assert {e["owner"] for e in events} == {user.user_id}
    assert events[0]["loan"]["total_amount"] == "1100.00"
    assert (events[1]["payment"]["payment_id"], events[1]["payment"]["amount"]) == (
        payment.payment_id,
        "550.00",
    )
    assert events[3]["loan"]["state"] == "LOAN_STATE_PAID_OFF"


@pytest.mark.slow
def test_node_watcher_resumes_after_a_server_restart(node: str, tmp_path: Path) -> None:
    running = create_server(make_settings(tmp_path))  # SQLite: a restart on the same port and file
    target = f"127.0.0.1:{running.port}"
    try:
        with LendingClient(target) as bootstrap:
            bootstrap.register("ada", PASSWORD, "ada@example.com")
        with LendingClient(target, username="ada", password=PASSWORD) as ada:
            ada.create_loan("L-1", 1000, term_weeks=2)
            watcher = NodeWatcher(node, target, "--after", "0", "--count", "3")
            first = watcher.next_event()  # connected: the backlog came
            running.stop(1.0)  # its stream ends with UNAVAILABLE
            running = create_server(make_settings(tmp_path, listen=target))
        with LendingClient(target, username="ada", password=PASSWORD) as ada:
            ada.make_payment("L-1", "550.00")
            ada.make_payment("L-1", "550.00")
        rest, err = watcher.finish(2)
    finally:
        running.stop(0)
    events = [first, *rest]
    assert [e["type"] for e in events] == [
        "EVENT_TYPE_LOAN_CREATED",
        "EVENT_TYPE_PAYMENT_ACCEPTED",
        "EVENT_TYPE_PAYMENT_ACCEPTED",
    ]
    assert [int(e["sequence"]) for e in events] == [1, 2, 3]  # nothing twice, nothing missed
    assert "UNAVAILABLE" in err and "resuming after sequence 1" in err
