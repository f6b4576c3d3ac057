"""The fault tier's stack: real processes the tests start, kill and start again.

- `gpu_worker_factory`: gpu-queue Celery workers (as the Procfile starts them) on the test database, with a 3 s
  lease, against whatever broker the test process's Celery app uses.
- `own_redis`: a redis-server of the test's own on a port of 6391-6399 (never the shared one other tests use),
  with `restart()`; `broker_at` points the test process's Celery app at it for the length of a test.
- `web_server_factory`: the web app under uvicorn in a subprocess (`python -m uvicorn webapp.asgi:application`).
- `engine_factory`: the inference engine (`python -m workers.moe`) with the tiny base in a subprocess.
- `browser_for`: an HTTP client holding a logged-in session and the CSRF token, as a browser would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from django.urls import reverse

from tests.conftest import REPO_ROOT, _start_worker
from tests.webapp.api.live_stack import web_url  # noqa: F401 - a fixture, shared by import
from tests.webapp.conftest import cast  # noqa: F401 - a fixture, shared by import
from webapp.celery import app as celery_app
from webapp.corpora.models import Corpus
from webapp.jobs.models import DistillationJob

TINY = "tiny:llama-2l"
OWN_REDIS_PORTS = range(6391, 6400)
START_TIMEOUT_S = 120.0


def database_url() -> str:
    """The pytest test database, for processes the test starts (they must see what the test committed)."""
    db = connection.settings_dict
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def free_port(candidates: range | None = None) -> int:
    """A port nothing listens on: the OS's pick, or the first free one of `candidates`."""
    for port in candidates or [0]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError(f"no free port in {candidates}")


def log_tail(path: Path, size: int = 4000) -> str:
    return path.read_text(errors="replace")[-size:] if path.exists() else "(no log)"


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Terminate a process the test started (warm shutdown), killing it if it does not go."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def sigkill(process: subprocess.Popen[bytes]) -> None:
    """No goodbye: what a crash, the OOM killer or a pulled plug does."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def wait_for(job: DistillationJob, condition: Callable[[DistillationJob], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition(job):
        assert time.monotonic() < deadline, f"{what}: job is {job.status} at step {job.step} ({job.error})"
        time.sleep(0.3)
        job.refresh_from_db()


def wait_until_http(
    url: str, process: subprocess.Popen[bytes], log: Path, ok: Callable[[httpx.Response], bool]
) -> None:
    """Poll `url` until `ok(response)`; fail with the process's log if it exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if ok(httpx.get(url, timeout=2)):
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{url} did not come up (exit {process.poll()}):\n{log_tail(log)}")
        time.sleep(0.2)


# ---------------------------------------------------------------- Celery workers


@pytest.fixture
def tiny_jobs(settings: Any) -> None:
    """Jobs of the tiny student and teacher (the row keeps both: the worker needs no such setting)."""
    settings.MOE_BASE_MODEL = TINY
    settings.GLOBAL_TEACHERS = [f"Tiny teacher={TINY}"]
    settings.ORG_MAX_ACTIVE_JOBS = 10


@pytest.fixture
def gpu_worker_factory(tmp_path: Path, transactional_db: None) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts gpu-queue worker processes on the test database with a 3 s lease; stops them at the end."""
    from webapp.core.health import workers_by_queue

    started: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> subprocess.Popen[bytes]:
        env = {
            "DATABASE_URL": database_url(),
            "DATA_DIR": str(tmp_path / "data"),
            "JOB_LEASE_SECONDS": "3",
            "JOB_HEARTBEAT_SECONDS": "0.5",
            "TORCH_THREADS_WORKER_GPU": "2",
            # The worker's broker is the one the test process publishes to now (the shared one, or the test's own).
            "REDIS_URL": celery_app.conf.broker_url,
        }
        logs = tmp_path / name
        logs.mkdir()
        hostname = f"{name}@distillery"
        process = _start_worker("gpu", logs, env, hostname=hostname)
        started.append(process)
        deadline = time.monotonic() + 60
        while hostname not in workers_by_queue(timeout=1.0).get("gpu", []):
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"worker did not start: {log_tail(logs / 'worker-gpu.log')}")
        return process

    yield start
    for process in started:
        stop(process)


# ---------------------------------------------------------------- Redis of the test's own


@dataclass
class RedisServer:
    """A redis-server on its own port and folder; `restart` stops it (SIGTERM, as `docker restart` does: Redis
    shuts down cleanly, flushing its append-only file when it has one) and starts it again on the same port."""

    port: int
    directory: Path
    appendonly: bool
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        command += ["--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.directory)]
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start: {log_tail(self.directory / 'redis.log')}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, timeout=20)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def client(self) -> Any:
        import redis

        return redis.Redis(port=self.port, socket_timeout=5)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Starts redis-servers of the test's own (`appendonly` as asked); stops them at the end."""
    if shutil.which("redis-server") is None:
        pytest.fail("The fault tier starts Redis servers of its own: apt-get install redis-server")
    started: list[RedisServer] = []

    def start(appendonly: bool = False) -> RedisServer:
        directory = tmp_path / f"redis-{len(started)}"
        directory.mkdir()
        server = RedisServer(port=free_port(OWN_REDIS_PORTS), directory=directory, appendonly=appendonly)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _drop_broker_connections() -> None:
    # The app keeps a connection pool and a producer pool bound to the old URL: drop them, so the next publish
    # (and the next control broadcast) connects to the new one.
    celery_app._pool = None
    amqp = celery_app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


@contextmanager
def broker_at(url: str) -> Iterator[None]:
    """The test process's Celery app (its `.delay`, its control broadcasts) uses the broker at `url` meanwhile."""
    previous = celery_app.conf.broker_url
    celery_app.conf.broker_url = url
    _drop_broker_connections()
    try:
        yield
    finally:
        celery_app.conf.broker_url = previous
        _drop_broker_connections()


# ---------------------------------------------------------------- the web app in a process of its own


@dataclass
class ServedProcess:
    """A server process as the Procfile runs it, on a port of its own: started, killed, started again."""

    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready_path(self) -> str:
        """A path that answers 200 once the server can serve."""
        raise NotImplementedError

    def start(self, wait: bool = True) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        if wait:
            wait_until_http(f"{self.url}{self.ready_path()}", self.process, self.log, lambda r: r.status_code == 200)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        sigkill(self.process)
        self.process = None


Served = TypeVar("Served", bound=ServedProcess)


def launch(kind: type[Served], env: dict[str, str], log_dir: Path, started: list[Served]) -> Served:
    """Start one more `kind` server on a free port, logging to log_dir; `started` keeps it for stop_all."""
    served = kind(port=free_port(), env=env, log=log_dir / f"{kind.__name__.lower()}-{len(started)}.log")
    served.start()
    started.append(served)
    return served


def stop_all(started: list[Served]) -> None:
    for served in started:
        if served.process is not None:
            stop(served.process)


class WebServer(ServedProcess):
    """`python -m uvicorn webapp.asgi:application`, on the test database."""

    def command(self) -> list[str]:
        server = ["webapp.asgi:application", "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log"]
        return [sys.executable, "-m", "uvicorn", *server]

    def ready_path(self) -> str:
        return "/accounts/login/"


@pytest.fixture
def web_server_factory(tmp_path: Path, transactional_db: None, settings: Any) -> Iterator[Callable[..., WebServer]]:
    """Web servers whose storage (DATA_DIR/media) is the test process's MEDIA_ROOT; a 2 s upload stall."""
    data_dir = tmp_path / "data"
    settings.MEDIA_ROOT = data_dir / "media"
    settings.UPLOAD_STALL_SECONDS = 2
    started: list[WebServer] = []

    def start(settings_module: str = "tests.settings") -> WebServer:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": settings_module,
            "DISTILLERY_PROCESS_ROLE": "web",
            "DATABASE_URL": database_url(),
            "CONN_MAX_AGE": "0",
            "DATA_DIR": str(data_dir),
            # The session the test makes is signed with the test process's keys: the server must share them.
            "SECRET_KEY": django_settings.SECRET_KEY,
            "FIELD_ENCRYPTION_KEYS": ",".join(django_settings.FIELD_ENCRYPTION_KEYS),
            "UPLOAD_STALL_SECONDS": "2",
        }
        return launch(WebServer, env, tmp_path, started)

    yield start
    stop_all(started)


def browser_for(base_url: str, user: Any) -> httpx.Client:
    """An HTTP client logged in as `user` (a session made in the database) with the CSRF cookie and header."""
    session = Client()
    session.force_login(user)
    http = httpx.Client(base_url=base_url, timeout=60, cookies={"sessionid": session.cookies["sessionid"].value})
    response = http.get("/corpora/")
    assert response.status_code == 200, response.text[:500]
    http.headers["X-CSRFToken"] = http.cookies["csrftoken"]
    return http


def start_upload(http: httpx.Client, corpus: Corpus, name: str, size: int) -> dict[str, Any]:
    response = http.post(reverse("corpora:file-start", args=[corpus.pk]), data={"name": name, "size": str(size)})
    assert response.status_code == 201, response.text
    return dict(response.json())


def put(http: httpx.Client, url: str, body: bytes | Iterator[bytes], size: int) -> httpx.Response:
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    return http.put(url, content=body, headers=headers)


def upload(http: httpx.Client, corpus: Corpus, name: str, data: bytes) -> dict[str, Any]:
    started = start_upload(http, corpus, name, len(data))
    response = put(http, started["upload_url"], data, len(data))
    assert response.status_code == 200, response.text
    return dict(response.json())


# ---------------------------------------------------------------- the inference engine in a process of its own


class EngineProcess(ServedProcess):
    """`python -m workers.moe` with the tiny base on the CPU."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "workers.moe", "--port", str(self.port), "--base", TINY, "--device", "cpu"]

    def ready_path(self) -> str:
        return "/health"  # 503 while the base loads, 200 once it can generate


@pytest.fixture
def engine_factory(tmp_path: Path) -> Iterator[Callable[[], EngineProcess]]:
    """Inference engines on the tiny base and the converted-model cache the other tiers use."""
    configured = os.environ.get("DISTILLERY_TEST_MODEL_CACHE")
    cache = Path(configured) if configured else REPO_ROOT / "var" / "test-model-cache"
    started: list[EngineProcess] = []

    def start() -> EngineProcess:
        env = {
            **os.environ,
            "DISTILLERY_PROCESS_ROLE": "engine",
            "MODEL_CACHE_DIR": str(cache),
            "HF_HUB_OFFLINE": "1",
            "TORCH_THREADS_ENGINE": "1",
        }
        return launch(EngineProcess, env, tmp_path, started)

    yield start
    stop_all(started)
