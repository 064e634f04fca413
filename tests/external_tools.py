"""Finding the command line tools that deployment tests drive (promtool, kubectl, ...).

Locally a missing tool skips the test and says how to get it; in CI (`CI=true`) it fails, so a
runner without the tool cannot turn the check into a silent skip. The same rule as
tests/test_deploy.py's `_tool`.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def require_tool(name: str, how_to_get_it: str) -> str:
    """The path of ``name`` (the virtualenv first, then PATH), or skip / fail saying ``how_to_get_it``."""
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing: {how_to_get_it}", pytrace=False)
        pytest.skip(f"{name} is not installed ({how_to_get_it})")
    return path
