"""The set-up scripts agree with the project's pins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_it_installs_the_torch_that_pyproject_pins() -> None:
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pinned,) = [spec.split("==")[1] for spec in dependencies if spec.startswith("torch==")]
    installed = re.search(r'^TORCH_VERSION="([^"]+)"', (REPO_ROOT / "scripts" / "lib.sh").read_text(), re.M)
    assert installed is not None
    assert installed.group(1) == pinned
