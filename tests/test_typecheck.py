"""The package stays mypy clean (the configuration is in mypy.ini)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_clean() -> None:
    """mypy run on the dmq package from the repository root reports no error."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "dmq"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
