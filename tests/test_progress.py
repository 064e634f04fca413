"""Long work shows a progress bar on a terminal and stays quiet off one.

Seeding (`python -m bench.seed`), `lending-grpc audit export`, and the rounds
of `make bench-scale` run as real child processes twice: once with stderr on a
pseudo-terminal, where the bar must appear, and once into pipes, where no
carriage return or escape code may. The rounds of `make bench` are checked in
process (a whole run needs h2load and five servers).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from databases import sqlite_url
from helpers import ANONYMOUS, child_env, make_env

from lending_grpc.core.storage.database import close_database

ROOT = Path(__file__).resolve().parent.parent
SEED = [sys.executable, "-m", "bench.seed", "--users", "2", "--as-of", "2026-06-01"]


def on_terminal(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    stdout=None,
    columns: int = 100,
    timeout: float = 120,
) -> tuple[int, str]:
    """Run ``argv`` with stderr (and stdout unless given) on a pseudo-terminal; exit code and screen text.

    ``columns=0`` leaves the terminal unsized, as ``script`` under a pipe or
    some CI runners do.
    """
    master, slave = pty.openpty()
    if columns:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=slave if stdout is None else stdout,
        stderr=slave,
        cwd=ROOT,
        env=env or child_env(),
    )
    os.close(slave)
    screen, deadline = bytearray(), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every process holding the terminal has closed it
                break
            if not data:
                break
            screen += data
        else:
            proc.kill()
            pytest.fail(f"{argv} did not finish in {timeout}s:\n{screen.decode(errors='replace')[-2000:]}")
        return proc.wait(timeout=30), screen.decode(errors="replace")
    finally:
        os.close(master)


def in_pipes(argv: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env or child_env(), check=False
    )


def assert_quiet(stderr: str) -> None:
    """Nothing of a progress bar: no carriage return, no escape code, no tqdm rate."""
    stderr = stderr.replace("\r\n", "\n")  # a terminal shows each newline as \r\n
    assert "\r" not in stderr and "\x1b" not in stderr, repr(stderr[-500:])
    assert "%|" not in stderr and "/s]" not in stderr, stderr[-500:]


# -- seeding -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("columns", [100, 0], ids=["sized", "unsized"])
def test_seeding_shows_a_bar_on_a_terminal(tmp_path: Path, columns: int):
    code, screen = on_terminal(
        [*SEED, "--loans", "300", "--database-url", sqlite_url(tmp_path)], columns=columns
    )
    assert code == 0, screen
    last = screen.split("seeded 300")[0].rstrip("\r\n").rsplit("\r", 1)[-1]
    assert last.startswith("seeding loans: 100%|") and "| 300/300 [" in last, screen
    assert "seeded 300 loans and " in screen  # the closing report still follows
    # An unsized terminal gets 80 columns, not an empty line.
    bars = [part for part in screen.replace("\n", "\r").split("\r") if part.startswith("seeding loans")]
    assert bars and max(len(bar) for bar in bars) <= (columns or 80)


def test_seeding_into_pipes_writes_no_bar(tmp_path: Path):
    result = in_pipes([*SEED, "--loans", "300", "--database-url", sqlite_url(tmp_path)])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("seeded 300 loans and ")


def test_no_progress_keeps_a_terminal_quiet(tmp_path: Path):
    argv = [*SEED, "--loans", "50", "--no-progress", "--database-url", sqlite_url(tmp_path)]
    code, screen = on_terminal(argv)
    assert code == 0, screen
    assert_quiet(screen)


# -- audit export --------------------------------------------------------------------------------------


@pytest.fixture
def audited(tmp_path: Path) -> str:
    """A SQLite database holding 7 audit events (one per registration)."""
    url = sqlite_url(tmp_path)
    env = make_env(url)
    try:
        for i in range(7):
            env.auth.register(ANONYMOUS, f"user{i}", "correct horse battery", f"user{i}@example.com")
    finally:
        close_database(env.db)
    return url


def test_audit_export_counts_events_on_a_terminal_while_the_lines_go_to_a_file(audited, tmp_path):
    export = [sys.executable, "-m", "lending_grpc", "audit", "export", "--database-url", audited]
    with open(tmp_path / "audit.jsonl", "w") as out:
        code, screen = on_terminal(export, stdout=out)
    assert code == 0, screen
    last = screen.rstrip("\r\n").rsplit("\r", 1)[-1]  # the bar as it was left
    assert last.startswith("exporting audit events: 7 events [") and last.endswith(" events/s]")
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["user.register"] * 7


def test_audit_export_on_a_terminal_prints_lines_without_a_bar(audited):
    code, screen = on_terminal(
        [sys.executable, "-m", "lending_grpc", "audit", "export", "--database-url", audited]
    )
    assert code == 0, screen
    assert_quiet(screen)
    assert screen.count('"event":"user.register"') == 7


def test_audit_export_into_pipes_writes_no_bar(audited):
    result = in_pipes([sys.executable, "-m", "lending_grpc", "audit", "export", "--database-url", audited])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) == 7


# -- the progress helper itself ------------------------------------------------------------------------


class _Terminal(io.StringIO):
    """A stream that says it is a terminal (for in-process checks)."""

    def isatty(self) -> bool:
        return True


def test_the_helper_draws_only_on_a_terminal():
    from lending_grpc.cli.progress import progress

    for stream, drawn in ((_Terminal(), True), (io.StringIO(), False)):
        with progress(total=3, desc="work", unit=" cells", stream=stream) as bar:
            for _ in range(3):
                bar.update()
        assert ("work: 100%|" in stream.getvalue()) is drawn
    off = _Terminal()
    with progress(total=3, desc="work", unit=" cells", stream=off, enabled=False) as bar:
        bar.update(3)
    assert off.getvalue() == ""


# -- make bench and make bench-scale -------------------------------------------------------------------

# bench/run.py's rounds with a stand-in measurement: a whole run needs h2load and five servers.
BENCH_ROUNDS = """
import sys
from types import SimpleNamespace
from bench import run
run.ROUNDS, run.STREAMS, run.SELECTED = 1, [16, 64], ["GetOutstanding", "MakePayment"]
figures = {"rps": 100.0, "p50_ms": 1.0, "p99_ms": 2.0, "cpu_us": 300.0, "errors": {}}
servers = [SimpleNamespace(name=name) for name in ("sqlite-1w", "echo-1p")]
results = run.measure_all(servers, {}, measure=lambda *args: dict(figures))
print(len(results), "cells measured", file=sys.stderr)
"""
FIGURES = "sqlite-1w GetOutstanding 16 100 req/s p50 1.00 p99 2.00 ms cpu 300 us/call"  # spaces squeezed


def test_bench_rounds_show_a_bar_on_a_terminal():
    code, screen = on_terminal([sys.executable, "-c", BENCH_ROUNDS])
    assert code == 0, screen
    last_bar = screen.split("8 cells measured")[0].rstrip("\r\n").rsplit("\r", 1)[-1]
    assert last_bar.startswith("make bench: 100%|") and "| 8/8 [" in last_bar, screen
    # Each cell's figures are printed whole, on lines of their own above the bar.
    lines = [" ".join(line.split()) for line in screen.replace("\r\n", "\n").split("\n")]
    assert any(line.endswith(FIGURES) for line in lines), screen


def test_bench_rounds_into_pipes_print_the_figures_and_no_bar():
    result = in_pipes([sys.executable, "-c", BENCH_ROUNDS])
    assert result.returncode == 0, result.stderr
    assert_quiet(result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 9 and lines[-1] == "8 cells measured"
    assert " ".join(lines[0].split()) == FIGURES


def _scale_env(tmp_path: Path) -> dict[str, str]:
    """A make bench-scale in miniature: two small SQLite books, one block of 20 calls."""
    return child_env(
        BENCH_SCALE_SIZES="20,60",
        BENCH_SCALE_CALLS="20",
        BENCH_SCALE_BLOCKS="1",
        BENCH_SCALE_BACKENDS="sqlite",
        BENCH_SCALE_VAR=str(tmp_path / "var"),
        BENCH_SCALE_OUT=str(tmp_path / "results" / "scale.md"),
    )


@pytest.mark.slow
def test_bench_scale_shows_seeding_and_steps_on_a_terminal_and_nothing_in_pipes(tmp_path: Path):
    env = _scale_env(tmp_path)
    code, screen = on_terminal([sys.executable, "bench/scale.py"], env=env)
    assert code == 0, screen[-3000:]
    assert "seeding 60 loans on sqlite" in screen and "| 60/60 [" in screen  # the seeder's own bar
    steps = [part for part in screen.replace("\n", "\r").split("\r") if part.startswith("make bench-scale:")]
    assert steps and steps[-1].startswith("make bench-scale: 100%|") and "| 4/4 [" in steps[-1]
    assert "# 20 vs 60 loans" in screen  # the report follows on stdout
    results = tmp_path / "results"
    data = json.loads((results / "scale.json").read_text())
    assert data["sizes"] == [20, 60] and set(data["backends"]) == {"sqlite"}
    assert set(data["backends"]["sqlite"]["median"]) == {"20", "60"}
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no chart scale.png" in screen
    else:
        assert (results / "scale.png").read_bytes()[:4] == b"\x89PNG"
    # Again into pipes, seeding afresh: the seeding and per-block lines, no bar.
    result = in_pipes([sys.executable, "bench/scale.py"], env={**env, "BENCH_SCALE_RESEED": "1"})
    assert result.returncode == 0, result.stderr
    assert_quiet(result.stderr)
    assert [line.split(" (")[0] for line in result.stderr.splitlines() if line.startswith("seeding")] == [
        "seeding 20 loans on sqlite",
        "seeding 60 loans on sqlite",
    ]
    assert result.stderr.count("sqlite block 0 ") == 2
