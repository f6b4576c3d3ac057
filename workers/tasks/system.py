"""Operational tasks: round trips that prove a queue is consumed, and beat's heartbeat."""

from __future__ import annotations

import socket
import time

from celery import shared_task
from django.core.cache import cache

BEAT_HEARTBEAT_CACHE_KEY = "health:beat:last-seen"


def _pong(queue: str) -> dict[str, object]:
    return {"queue": queue, "host": socket.gethostname(), "at": time.time()}


@shared_task(name="distillery.system.ping_cpu", ignore_result=False, time_limit=30, soft_time_limit=20)
def ping_cpu() -> dict[str, object]:
    """Answer from a worker of the cpu queue."""
    return _pong("cpu")


@shared_task(name="distillery.system.ping_gpu", ignore_result=False, time_limit=30, soft_time_limit=20)
def ping_gpu() -> dict[str, object]:
    """Answer from a worker of the gpu queue."""
    return _pong("gpu")


@shared_task(name="distillery.system.ping_ops", ignore_result=False, time_limit=30, soft_time_limit=20)
def ping_ops() -> dict[str, object]:
    """Answer from a worker of the ops queue."""
    return _pong("ops")


@shared_task(name="distillery.system.beat_heartbeat", time_limit=30, expires=60)
def beat_heartbeat() -> None:
    """Record when beat last scheduled work, so the health page can tell a dead scheduler."""
    cache.set(BEAT_HEARTBEAT_CACHE_KEY, time.time(), timeout=None)
