"""The one Celery app, configured from Django settings (CELERY_* names).

Queues: ``cpu`` (ingest, signatures), ``gpu`` (teacher passes, training; one task per GPU worker) and ``ops``
(beat's heartbeat, the sweeps, webhook deliveries: quick work that must never wait behind a long ingest or a
job; its worker runs a few threads and loads no model). Routing is by task name, here, in one table, so a caller
never has to remember which queue a task needs.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("distillery")
app.config_from_object("django.conf:settings", namespace="CELERY")

CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"
OPS_QUEUE = "ops"
QUEUES = (CPU_QUEUE, GPU_QUEUE, OPS_QUEUE)

app.conf.task_queues = tuple(Queue(name, routing_key=name) for name in QUEUES)
app.conf.task_default_queue = CPU_QUEUE
# Task name patterns → queue. Anything unlisted runs on the cpu queue.
app.conf.task_routes = {
    "distillery.system.ping_gpu": {"queue": GPU_QUEUE},
    "distillery.gpu.*": {"queue": GPU_QUEUE},
    # Seconds-long, I/O-bound tasks. Behind a 10-minute ingest on the cpu queue, the heartbeat expired (the
    # health page then said beat had stopped), sweeps came late and webhooks were delivered minutes after the
    # event.
    "distillery.system.ping_ops": {"queue": OPS_QUEUE},
    "distillery.system.beat_heartbeat": {"queue": OPS_QUEUE},
    "distillery.*.sweep": {"queue": OPS_QUEUE},
    "distillery.webhooks.*": {"queue": OPS_QUEUE},
}
app.conf.beat_schedule = {
    # Lets the health page tell whether beat (the periodic sweeps) is alive.
    "beat-heartbeat": {"task": "distillery.system.beat_heartbeat", "schedule": 30.0},
    # Stalled uploads become failed (to be sent again); ingests of dead workers or lost messages run again.
    "sweep-corpora": {"task": "distillery.ingest.sweep", "schedule": 60.0},
    # Jobs whose worker died (lease expired) or whose message was lost are sent again; they resume.
    "sweep-jobs": {"task": "distillery.jobs.sweep", "schedule": 60.0},
    # Webhook deliveries that are due: retries, and first attempts whose message was lost.
    "sweep-webhooks": {"task": "distillery.webhooks.sweep", "schedule": 30.0},
}

# Lazy: the task modules import Django models, so they load once Django is set up (worker start, first use).
TASK_MODULES = [
    "workers.tasks.system",
    "workers.tasks.ingest",
    "workers.tasks.jobs",
    "workers.tasks.experts",
    "workers.tasks.webhooks",
]
app.autodiscover_tasks(lambda: TASK_MODULES, related_name=None)


MODEL_WORKER_ROLES = ("worker-cpu", "worker-gpu")  # the workers that load torch (the ops worker never does)


@worker_init.connect  # solo pool: the main process runs the tasks
@worker_process_init.connect  # prefork pool: each child
def _set_torch_threads_in_worker(**_: Any) -> None:
    """Each worker process takes its share of the cores before any model loads."""
    from django.conf import settings

    if settings.PROCESS_ROLE not in MODEL_WORKER_ROLES:
        return  # an in-process test worker must not change the test runner's threads; the ops worker has no torch

    from workers.ml.device import configure_torch_threads

    configure_torch_threads(settings.TORCH_THREADS)
