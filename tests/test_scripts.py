"""The set-up scripts: they agree with the project's pins, and start only the services that are theirs."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_it_installs_the_torch_that_pyproject_pins() -> None:
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pinned,) = [spec.split("==")[1] for spec in dependencies if spec.startswith("torch==")]
    installed = re.search(r'^TORCH_VERSION="([^"]+)"', (REPO_ROOT / "scripts" / "lib.sh").read_text(), re.M)
    assert installed is not None
    assert installed.group(1) == pinned


def _lib(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `script` in bash after sourcing scripts/lib.sh, with `env` added to this process's environment."""
    return subprocess.run(
        ["bash", "-c", f'source "{REPO_ROOT}/scripts/lib.sh"; {script}'],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://postgres:postgres@127.0.0.1:5432/distillery", "127.0.0.1 5432"),
        ("postgres://user:p%40ss@db.internal:6543/app?sslmode=require", "db.internal 6543"),
        ("postgres:///distillery", "127.0.0.1 5432"),  # a Unix socket: the local server
        ("redis://:secret@127.0.0.1:6380/15", "127.0.0.1 6380"),
        ("redis://cache.internal", "cache.internal 5432"),  # no port: the default given
    ],
)
def test_it_reads_host_and_port_from_a_service_url(url: str, expected: str) -> None:
    result = _lib(f'url_host_port "{url}" 5432')

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_it_refuses_to_start_a_postgres_that_the_database_url_puts_elsewhere() -> None:
    # Nothing listens on port 1: the script must say so, not install or start a local cluster instead.
    result = _lib("ensure_postgres", DATABASE_URL="postgres://postgres@127.0.0.1:1/distillery")

    assert result.returncode != 0
    assert "PostgreSQL at 127.0.0.1:1 (DATABASE_URL) does not answer" in result.stderr
    assert "Starting PostgreSQL" not in result.stdout + result.stderr


def test_it_names_a_chromium_that_is_installed_but_does_not_run() -> None:
    # As Ubuntu's chromium package (a snap installer stub) does in a container: executable, but it never starts.
    result = _lib("ensure_chromium", DISTILLERY_CHROMIUM="/bin/false")

    assert result.returncode != 0
    assert "/bin/false is installed but does not run" in result.stderr
    assert "-m 'not browser'" in result.stderr
