"""The package stays mypy clean (the configuration is in mypy.ini)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    platform.python_implementation() != "CPython",
    reason="mypy runs on CPython (make typecheck); the types it checks are the same on PyPy",
)
def test_mypy_clean() -> None:
    """mypy run on the dmq package from the repository root reports no error."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "dmq"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
