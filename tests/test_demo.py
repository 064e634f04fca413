"""`make demo` (examples/demo.sh) runs from registration to payoff against the real server it starts:
a borrower, and an operator's back-dated collections, a reversal, the history, the report and the log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
