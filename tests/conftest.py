"""Fixtures shared by every tier.

`celery_workers`: real Celery worker processes, one per queue, started as the Procfile starts them (the cpu and
gpu workers in the solo pool, for a test's predictability; the ops worker with its threads), over the real Redis
broker (the test settings' Redis database). Module-scoped: started on first use and stopped (warm shutdown) when
the module's tests are done.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from webapp.celery import CPU_QUEUE, GPU_QUEUE, OPS_QUEUE
from webapp.celery import app as celery_app

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKER_HOSTNAMES = {
    CPU_QUEUE: "cpu-test@distillery",
    GPU_QUEUE: "gpu-test@distillery",
    OPS_QUEUE: "ops-test@distillery",
}
# The ops worker's pool, as the Procfile runs it: a slow webhook receiver must not hold up the heartbeat.
POOL_OPTIONS = {OPS_QUEUE: ["--pool", "threads", "--concurrency", "4"]}
WORKER_START_TIMEOUT_S = 60.0


def _start_worker(
    queue: str, log_dir: Path, extra_env: dict[str, str] | None = None, hostname: str | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DISTILLERY_PROCESS_ROLE": f"worker-{queue}",
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        **(extra_env or {}),
    }
    log = (log_dir / f"worker-{queue}.log").open("wb")
    command = [sys.executable, "-m", "celery", "-A", "webapp", "worker", "--queues", queue]
    command += ["--hostname", hostname or WORKER_HOSTNAMES[queue]]
    command += POOL_OPTIONS.get(queue, ["--concurrency", "1", "--pool", "solo"])
    command += ["--loglevel", "INFO"]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


@contextmanager
def worker_on_test_database(log_dir: Path, hostname: str, queue: str = CPU_QUEUE, **extra_env: str) -> Iterator[None]:
    """A worker process for `queue` on the test's own database (a `transaction=True` test commits there)."""
    from django.db import connection

    from webapp.core.health import workers_by_queue

    settings_dict = connection.settings_dict
    database_url = (
        f"postgres://{settings_dict['USER']}:{settings_dict['PASSWORD']}@{settings_dict['HOST']}:"
        f"{settings_dict['PORT']}/{settings_dict['NAME']}"
    )
    process = _start_worker(queue, log_dir, {"DATABASE_URL": database_url, **extra_env}, hostname=hostname)
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while hostname not in workers_by_queue(timeout=1.0).get(queue, []):
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"worker did not start: {(log_dir / f'worker-{queue}.log').read_text()[-3000:]}")
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def celery_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    from webapp.core.health import workers_by_queue

    celery_app.control.purge()  # leftovers of an aborted earlier run must not be consumed as ours
    log_dir = tmp_path_factory.mktemp("celery")
    processes = [_start_worker(queue, log_dir) for queue in WORKER_HOSTNAMES]
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while True:
            consumers = workers_by_queue(timeout=1.0)
            if all(WORKER_HOSTNAMES[queue] in consumers.get(queue, []) for queue in WORKER_HOSTNAMES):
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                logs = "\n".join(path.read_text() for path in sorted(log_dir.iterdir()))
                pytest.fail(f"Celery test workers did not come up:\n{logs[-4000:]}")
        yield WORKER_HOSTNAMES
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)  # warm shutdown, as an operator would stop them
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
