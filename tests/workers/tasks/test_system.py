from __future__ import annotations

import time

import pytest
from django.core.cache import cache

from webapp.celery import app as celery_app
from webapp.core.health import workers_by_queue
from workers.tasks.system import BEAT_HEARTBEAT_CACHE_KEY, beat_heartbeat, ping_cpu, ping_gpu, ping_ops


def queue_of(task_name: str) -> str:
    return celery_app.amqp.router.route({}, task_name)["queue"].name


def test_it_routes_each_ping_to_its_queue() -> None:
    assert queue_of(ping_cpu.name) == "cpu"
    assert queue_of(ping_gpu.name) == "gpu"
    assert queue_of(ping_ops.name) == "ops"
    assert queue_of("distillery.gpu.distill") == "gpu"


def test_it_keeps_quick_bookkeeping_off_the_queues_of_long_work() -> None:
    celery_app.loader.import_default_modules()  # every task registered, as in a worker
    quick = {
        "distillery.system.beat_heartbeat",
        "distillery.ingest.sweep",
        "distillery.jobs.sweep",
        "distillery.webhooks.sweep",
        "distillery.webhooks.deliver",
    }
    assert quick <= set(celery_app.tasks)
    assert {name: queue_of(name) for name in quick} == dict.fromkeys(quick, "ops")
    # Every periodic task beat sends is quick bookkeeping.
    assert {entry["task"] for entry in celery_app.conf.beat_schedule.values()} <= quick
    assert queue_of("distillery.ingest.corpus_version") == "cpu"
    assert queue_of("distillery.experts.recompute_signature") == "cpu"
    assert queue_of("distillery.gpu.run_job") == "gpu"


def test_it_records_beats_heartbeat() -> None:
    cache.delete(BEAT_HEARTBEAT_CACHE_KEY)
    beat_heartbeat()
    assert time.time() - cache.get(BEAT_HEARTBEAT_CACHE_KEY) < 5


@pytest.mark.celery_worker
def test_it_runs_a_round_trip_on_each_queue_through_redis(celery_workers: dict[str, str]) -> None:
    cpu = ping_cpu.delay().get(timeout=30)
    gpu = ping_gpu.delay().get(timeout=30)
    ops = ping_ops.delay().get(timeout=30)
    assert (cpu["queue"], gpu["queue"], ops["queue"]) == ("cpu", "gpu", "ops")


@pytest.mark.celery_worker
def test_it_sees_which_worker_consumes_which_queue(celery_workers: dict[str, str]) -> None:
    consumers = workers_by_queue(timeout=2.0)
    assert celery_workers["cpu"] in consumers["cpu"]
    assert celery_workers["gpu"] in consumers["gpu"]
    assert celery_workers["ops"] in consumers["ops"]
    assert celery_workers["cpu"] not in consumers["gpu"]
    assert celery_workers["cpu"] not in consumers["ops"]
