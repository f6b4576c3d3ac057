"""The local run's SQLite mode (WAL, busy timeout, IMMEDIATE transactions) survives concurrent writers.

This is the only test on SQLite: it tests the fallback database itself, not the app on a stand-in.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
WRITERS = 4
ROWS_PER_WRITER = 40

# Each writer process opens its own Django connection and writes rows one transaction at a time, with a
# read inside each transaction (the read-then-write pattern that deadlocks without BEGIN IMMEDIATE).
WRITER = """
import sys, django
django.setup()
from django.db import transaction
from webapp.tenants.models import AuditEvent
writer = sys.argv[1]
for index in range(int(sys.argv[2])):
    with transaction.atomic():
        AuditEvent.objects.filter(target__startswith=writer).count()
        AuditEvent.objects.create(action="auth.login", target=f"{writer}-{index}")
"""


def test_it_lets_several_processes_write_at_once(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "webapp.settings",
        "DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'distillery.sqlite3'}",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        timeout=120,
    )
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, f"w{n}", str(ROWS_PER_WRITER)],
            cwd=REPO_ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(WRITERS)
    ]
    errors = [proc.communicate(timeout=180)[1] for proc in writers]
    assert [proc.returncode for proc in writers] == [0] * WRITERS, errors

    with sqlite3.connect(tmp_path / "distillery.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        count = db.execute("SELECT COUNT(*) FROM tenants_auditevent").fetchone()[0]
    assert count == WRITERS * ROWS_PER_WRITER
