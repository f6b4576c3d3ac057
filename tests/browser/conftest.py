"""The browser tier: the real app served over HTTP (tests/webapp/api/live_stack.py) and driven in headless Chromium
by Playwright.

Chromium is Debian's (/usr/bin/chromium, installed by scripts/lib.sh `ensure_chromium`), never a Playwright
download. Screenshots of each step go to var/test-artifacts/screenshots/ (git-ignored), for a human to look at
when a run fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.webapp.api.live_stack import (  # noqa: F401 - fixtures
    engine_service,
    engine_url,
    expert_dirs,
    live_engine,
    model_cache_dir,
    web_url,
)

CHROMIUM = Path(os.environ.get("DISTILLERY_CHROMIUM", "/usr/bin/chromium"))
# The test machine has no network: without the background-networking flags Chromium keeps retrying refused
# connections (component updates, sync, QUIC probes) and a page load can hang behind them.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts" / "screenshots"


@pytest.fixture
def browser(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Headless Chromium, started after the test database is ready and closed before it is flushed.

    Playwright's sync API keeps an asyncio loop on the test's thread, which trips Django's async-safety check on
    every ORM call the test makes between browser steps; that ORM use is plain synchronous code, hence the flag.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: scripts/test.sh installs Debian's (ensure_chromium)")
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    return SCREENSHOTS


# The models a browser journey distils with: the tiny random-initialised base as student and teacher, so a job
# trains in seconds on two cores. The same values go to the served app (settings) and the workers (environment).
TINY = "tiny:llama-2l"
TINY_TEACHER = f"Tiny teacher={TINY}"
WORKER_HOSTNAMES = {"cpu": "cpu-browser@distillery", "gpu": "gpu-browser@distillery", "ops": "ops-browser@distillery"}


@pytest.fixture
def stack_data_dir(tmp_path: Path, settings: Any) -> Path:
    """One data directory for the served app and the workers: uploads, artifacts and checkpoints."""
    data = tmp_path / "data"
    settings.MEDIA_ROOT = data / "media"
    settings.ARTIFACTS_DIR = data / "artifacts"
    settings.CHECKPOINTS_DIR = data / "checkpoints"
    settings.MOE_BASE_MODEL = TINY
    settings.GLOBAL_TEACHERS = [TINY_TEACHER]
    settings.WEBHOOK_ALLOW_PRIVATE = True  # the journey's webhook receiver listens on 127.0.0.1
    return data


@pytest.fixture
def stack_workers(transactional_db: None, stack_data_dir: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A Celery worker per queue, started as the Procfile starts them, on the test database and the data directory
    the served app writes to: the ingest (cpu) and the distillation (gpu) of what the browser uploads and starts,
    and the webhook deliveries (ops)."""
    from django.conf import settings
    from django.db import connection

    from tests.conftest import _start_worker
    from webapp.celery import app as celery_app
    from webapp.core.health import workers_by_queue

    celery_app.control.purge()
    db = connection.settings_dict
    env = {
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "DATA_DIR": str(stack_data_dir),
        "MODEL_CACHE_DIR": str(settings_model_cache()),
        "MOE_BASE_MODEL": TINY,
        "GLOBAL_TEACHERS": TINY_TEACHER,
        "TORCH_THREADS_WORKER_GPU": "2",
        "WEBHOOK_ALLOW_PRIVATE": "1",
        # The served app's keys: a worker reads what it encrypted (webhook secrets), as every host must.
        "SECRET_KEY": settings.SECRET_KEY,
        "FIELD_ENCRYPTION_KEYS": ",".join(settings.FIELD_ENCRYPTION_KEYS),
    }
    logs = tmp_path / "worker-logs"
    logs.mkdir()
    processes = [_start_worker(queue, logs, env, hostname=name) for queue, name in WORKER_HOSTNAMES.items()]
    try:
        deadline = time.monotonic() + 90
        while True:
            consumers = workers_by_queue(timeout=1.0)
            if all(name in consumers.get(queue, []) for queue, name in WORKER_HOSTNAMES.items()):
                break
            if time.monotonic() > deadline or any(process.poll() is not None for process in processes):
                pytest.fail(f"Celery workers did not come up:\n{worker_logs(logs)}")
        yield {"logs": str(logs)}
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def worker_logs(directory: Path | str) -> str:
    """The workers' last log lines, for a failure message."""
    return "\n".join(f"--- {path.name}\n{path.read_text()[-3000:]}" for path in sorted(Path(directory).glob("*.log")))


def settings_model_cache() -> Path:
    from django.conf import settings

    return Path(settings.MODEL_CACHE_DIR)
