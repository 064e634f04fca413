"""`make demo` (examples/demo.sh) runs from registration to payoff against the real server it starts."""

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
        "weekly payment  110,000.00\n",
        "   1  2026-01-12  110,000.00  no    -\n",
        "paid         110,000.00 on L-1001 (week 1)\n",
        "delinquent           YES\nmissed installments  2\noverdue              220,000.00\n",
        "L-1001       2  220,000.00              8  2026-01-19  2026-01-27\n",
        "paid         220,000.00 on L-1001 (weeks 2-3)\n",
        "delinquent           no\n",
        "lending-grpc: FAILED_PRECONDITION: 50000.00 is not a whole number of installments",
        "paid         5,170,000.00 on L-1001 (weeks 4-50)\n",
        "state           PAID_OFF\n",
        "FAILED_PRECONDITION: the loan is paid off and accepts no more payments\n(exit code 1)\n",
    ):
        assert expected in out, f"missing {expected!r} in:\n{out}"
    assert list(tmp_path.iterdir()) == []  # the temporary database and token cache were removed
