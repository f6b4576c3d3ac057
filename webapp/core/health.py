"""Health checks: database, Redis, workers per queue (via `celery inspect active_queues`), beat."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import redis
from django.conf import settings
from django.core.cache import cache
from django.db import connection

from webapp.celery import QUEUES
from webapp.celery import app as celery_app
from workers.tasks.system import BEAT_HEARTBEAT_CACHE_KEY

Status = Literal["ok", "warn", "fail"]
# Beat ticks every 30 s; three missed ticks means it is gone.
BEAT_STALE_AFTER_S = 90.0
WORKER_COMMANDS = {
    "cpu": "celery -A webapp worker -Q cpu --hostname cpu@%h",
    "gpu": "celery -A webapp worker -Q gpu --hostname gpu@%h --concurrency 1 --prefetch-multiplier 1",
    "ops": "celery -A webapp worker -Q ops --hostname ops@%h --pool threads --concurrency 4",
}
# What stops while no worker consumes a queue, for the health page's message.
QUEUE_WORK = {
    "cpu": "uploads are not ingested",
    "gpu": "distillation jobs do not start",
    "ops": "webhooks are not delivered and the sweeps (and beat's heartbeat) do not run",
}


@dataclass
class Check:
    name: str
    status: Status
    message: str
    workers: list[str] = field(default_factory=list)


@dataclass
class HealthReport:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.status != "fail" for check in self.checks)

    def as_dict(self) -> dict[str, object]:
        return {"status": "ok" if self.ok else "fail", "checks": [asdict(check) for check in self.checks]}


def check_database() -> Check:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as error:
        return Check("database", "fail", f"Database unreachable: {error}")
    return Check("database", "ok", f"{connection.vendor} answers")


def check_redis() -> Check:
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        return Check("redis", "fail", f"Redis unreachable at {settings.REDIS_URL}: {error}")
    return Check("redis", "ok", "Redis answers")


def workers_by_queue(timeout: float = 1.0) -> dict[str, list[str]]:
    """Queue name → the live workers consuming it, from a broadcast `active_queues` inspect."""
    replies = celery_app.control.inspect(timeout=timeout).active_queues() or {}
    consumers: dict[str, list[str]] = {queue: [] for queue in QUEUES}
    for worker, queues in replies.items():
        for queue in queues:
            consumers.setdefault(queue["name"], []).append(worker)
    return {queue: sorted(names) for queue, names in consumers.items()}


def check_queues(timeout: float = 1.0) -> list[Check]:
    try:
        consumers = workers_by_queue(timeout)
    except Exception as error:
        return [Check(f"queue:{queue}", "fail", f"Could not ask the workers: {error}") for queue in QUEUES]
    checks = []
    for queue in QUEUES:
        names = consumers.get(queue, [])
        if names:
            checks.append(Check(f"queue:{queue}", "ok", f"{len(names)} worker(s) consume '{queue}'", names))
        else:
            checks.append(
                Check(
                    f"queue:{queue}",
                    "fail",
                    f"No worker consumes the '{queue}' queue: {QUEUE_WORK[queue]} until one starts "
                    f"(`{WORKER_COMMANDS[queue]}`).",
                )
            )
    return checks


def check_beat() -> Check:
    try:
        last_seen = cache.get(BEAT_HEARTBEAT_CACHE_KEY)
    except Exception as error:
        return Check("beat", "warn", f"Could not read beat's heartbeat: {error}")
    if last_seen is None:
        return Check(
            "beat", "warn", "Beat has not ticked yet (or no ops worker ran its tick): periodic sweeps do not run."
        )
    age = time.time() - float(last_seen)
    if age > BEAT_STALE_AFTER_S:
        return Check(
            "beat",
            "warn",
            f"Beat last ticked {age:.0f} s ago: beat or the ops worker that records its ticks may have stopped, "
            "and the periodic sweeps with it.",
        )
    return Check("beat", "ok", f"Beat ticked {age:.0f} s ago")


def check_engine() -> Check:
    """The inference engine: a warning, not a failure, when it is away — only queries wait for it."""
    from webapp.experts import engine

    try:
        report = engine.health()
    except engine.EngineUnavailable as error:
        return Check("engine", "warn", f"{error} Start it with `python -m workers.moe` (INFERENCE_URL).")
    except engine.EngineRejected as error:
        return Check("engine", "warn", f"The inference engine answered: {error}")
    base = (report.get("base") or {}).get("spec", "")
    loaded = len(report.get("experts_loaded") or [])
    return Check(
        "engine",
        "ok",
        f"Inference engine ({report.get('backend')}) serves {base or 'its base'}; {loaded} expert(s) loaded",
    )


def run_checks(inspect_timeout: float = 1.0) -> HealthReport:
    return HealthReport([check_database(), check_redis(), *check_queues(inspect_timeout), check_beat(), check_engine()])
