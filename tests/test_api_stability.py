"""`make buf-breaking` guards existing clients: additions pass, removals and renames fail.

Runs buf (through npx, the version the Makefile pins) on copies of protos/
against the committed baseline api-baseline/lending-v1.json. Skipped without
npx locally; a failure when CI=true, like the Node.js client test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "api-baseline" / "lending-v1.json"
BUF_VERSION = re.search(r"^BUF_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)


def buf_breaking(protos: Path) -> subprocess.CompletedProcess:
    npx = shutil.which("npx")
    if npx is None:
        reason = "`npx` not found: the buf breaking check needs Node.js"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true, so this is a failure, not a skip)")
        pytest.skip(reason)
    return subprocess.run(
        [npx, "--yes", f"@bufbuild/buf@{BUF_VERSION}", "breaking", "--against", str(BASELINE)],
        cwd=protos,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    return tmp_path


def edit(workspace: Path, old: str, new: str) -> None:
    path = workspace / "protos" / "lending" / "v1" / "billing.proto"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.slow
def test_additions_pass(workspace: Path) -> None:
    edit(
        workspace,
        "  string reversal_reason = 12;\n}",
        "  string reversal_reason = 12;\n  // A note for the borrower.\n  string note = 13;\n}",
    )
    result = buf_breaking(workspace)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_a_renamed_field_and_a_deleted_field_fail(workspace: Path) -> None:
    edit(
        workspace,
        "  string amount = 3;\n  // When the payment was recorded.",
        "  string amount_paid = 3;\n  // When.",
    )
    edit(workspace, "  string request_id = 3;", "  reserved 3;")
    result = buf_breaking(workspace)
    assert result.returncode != 0
    assert 'Field "3" on message "Payment" changed name from "amount" to "amount_paid".' in result.stdout
    assert (
        'Previously present field "3" with name "request_id" on message "MakePaymentRequest" was deleted.'
        in (result.stdout)
    )
