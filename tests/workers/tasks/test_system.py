from __future__ import annotations

import time

import pytest
from django.core.cache import cache

from webapp.celery import app as celery_app
from webapp.core.health import workers_by_queue
from workers.tasks.system import BEAT_HEARTBEAT_CACHE_KEY, beat_heartbeat, ping_cpu, ping_gpu


def test_it_routes_each_ping_to_its_queue() -> None:
    assert celery_app.amqp.router.route({}, ping_cpu.name)["queue"].name == "cpu"
    assert celery_app.amqp.router.route({}, ping_gpu.name)["queue"].name == "gpu"
    assert celery_app.amqp.router.route({}, "distillery.gpu.distill")["queue"].name == "gpu"


def test_it_records_beats_heartbeat() -> None:
    cache.delete(BEAT_HEARTBEAT_CACHE_KEY)
    beat_heartbeat()
    assert time.time() - cache.get(BEAT_HEARTBEAT_CACHE_KEY) < 5


@pytest.mark.celery_worker
def test_it_runs_a_round_trip_on_each_queue_through_redis(celery_workers: dict[str, str]) -> None:
    cpu = ping_cpu.delay().get(timeout=30)
    gpu = ping_gpu.delay().get(timeout=30)
    assert cpu["queue"] == "cpu"
    assert gpu["queue"] == "gpu"


@pytest.mark.celery_worker
def test_it_sees_which_worker_consumes_which_queue(celery_workers: dict[str, str]) -> None:
    consumers = workers_by_queue(timeout=2.0)
    assert celery_workers["cpu"] in consumers["cpu"]
    assert celery_workers["gpu"] in consumers["gpu"]
    assert celery_workers["cpu"] not in consumers["gpu"]
