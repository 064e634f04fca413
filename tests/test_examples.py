"""Cross-language check: the Node.js example client (examples/node, @grpc/grpc-js) runs the worked example.

Needs `node` and `npm` on PATH. Without them the test is skipped locally and fails in CI
(environment variable CI=true), so a CI image that lost Node.js cannot pass silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent.parent / "examples" / "node"
NPM_CI_TIMEOUT_SECONDS = 300
NODE_RUN_TIMEOUT_SECONDS = 120


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
