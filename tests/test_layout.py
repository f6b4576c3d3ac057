"""The three rooms stay apart: pure ML imports without Django."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import sys, pkgutil, importlib
import workers.ml, workers.moe
for package in (workers.ml, workers.moe):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
leaked = sorted(name for name in sys.modules if name.split(".")[0] in {"django", "celery", "webapp"})
assert not leaked, leaked
"""


def test_it_imports_the_pure_ml_rooms_without_django_or_celery() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


def test_it_bans_django_imports_in_pure_ml_with_ruff() -> None:
    for room in ("ml", "moe"):
        config = (REPO_ROOT / "workers" / room / "ruff.toml").read_text()
        assert '"django".msg' in config
        assert '"celery".msg' in config
