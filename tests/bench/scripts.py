"""Running a bench script the way a user does: from the repository root, in its own process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_bench(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """`python bench/<args>`; asserts it exited 0 (showing the end of its stderr when it did not)."""
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result
