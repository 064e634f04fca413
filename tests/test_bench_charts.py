"""`python -m bench.charts`: both benchmark charts redraw from the committed JSON alone.

The PNGs in bench/results/ are drawn from latest.json and scale.json beside
the tables; a change to bench/charts.py that breaks either would otherwise go
unnoticed until the next (long) `make bench`. matplotlib is a dev dependency:
without it the test skips, except under CI=true, where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import child_env

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def matplotlib_present():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("matplotlib is missing: install the dev dependencies (CI=true, so not a skip)")
        pytest.skip("matplotlib is missing (a dev dependency: pip install -e '.[dev]')")


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_SIGNATURE, path
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_both_charts_redraw_from_the_committed_json(tmp_path: Path):
    for name in ("latest.json", "scale.json"):
        shutil.copy(RESULTS / name, tmp_path / name)
    result = subprocess.run(
        [sys.executable, "-m", "bench.charts", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**child_env(), "DISPLAY": ""},  # no display: the Agg backend needs none
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"drew {tmp_path / 'throughput.png'}",
        f"drew {tmp_path / 'scale.png'}",
    ]
    # Real pictures of the committed ones' size (figure inches x 100 dpi; redrawn bytes vary with the
    # matplotlib and FreeType versions, so they are not compared).
    assert png_size(tmp_path / "throughput.png") == png_size(RESULTS / "throughput.png")
    assert png_size(tmp_path / "scale.png") == png_size(RESULTS / "scale.png")


def test_nothing_to_draw_is_an_error(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "bench.charts", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=child_env(),
    )
    assert result.returncode == 1
    assert result.stderr == f"no latest.json or scale.json in {tmp_path}\n"


def test_the_throughput_chart_marks_issue_9_targets():
    """The targets drawn are issue 9's, and make bench's MET/MISSED list is built from the same table."""
    from bench import charts

    assert charts.TARGETS == {
        ("echo", "GetDelinquencyStatus", "sqlite-2w"): 0.60,
        ("echo", "GetOutstanding", "sqlite-2w"): 0.60,
        ("echo", "GetDelinquencyStatus", "sqlite-1w"): 0.55,
        ("echo", "GetOutstanding", "sqlite-1w"): 0.55,
        ("echo", "GetDelinquencyStatus", "postgres-2w"): 0.45,
        ("echo", "GetOutstanding", "postgres-2w"): 0.45,
        ("raw", "MakePayment", "sqlite-1w"): 0.65,
        ("raw", "MakePayment", "sqlite-2w"): 0.65,
    }
    data = json.loads((RESULTS / "latest.json").read_text())
    cells = {(c["server"], c["method"], c["streams"]): c for c in data["cells"]}
    # The share is the row's req/s over its ceiling's, in the same run (whatever run is committed).
    ours, echo = cells[("sqlite-2w", "GetOutstanding", 16)], cells[("echo-2p", "GetOutstanding", 16)]
    assert charts.share(cells, "sqlite-2w", "GetOutstanding", 16, "echo") == ours["rps"] / echo["rps"]
    assert charts.ceilings_of("postgres-2w") == {"echo": "echo-2p", "raw": "raw-sqlite-2p"}
