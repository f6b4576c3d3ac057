"""SIGKILL the GPU worker mid-training: the sweep hands the job to a new worker, which resumes it from its latest
checkpoint and finishes it."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import pytest

from tests.faults.conftest import sigkill, wait_for
from tests.webapp.conftest import Cast
from tests.workers.tasks.test_jobs import new_job
from webapp.jobs.models import JobStatus
from workers.tasks.jobs import sweep_jobs

pytestmark = [pytest.mark.faults, pytest.mark.celery_worker, pytest.mark.django_db(transaction=True)]


def test_a_job_whose_worker_is_killed_resumes_on_a_new_worker_through_the_sweep(
    cast: Cast, tiny_jobs: None, gpu_worker_factory: Any, settings: Any
) -> None:
    settings.JOB_LEASE_SECONDS = 3
    first = gpu_worker_factory("gpu-first")
    # 24 steps, a checkpoint every 3, sent on commit. Killed once past the first checkpoint: the row's step lags
    # the worker's by up to a second, and the run must still be training when the kill comes on a fast machine.
    job = new_job(cast, lambda execute: nullcontext(), epochs=6, checkpoint_every=3)
    wait_for(job, lambda j: j.status == JobStatus.TRAINING and j.step >= 4, 120, "training did not get going")

    sigkill(first)  # the message stays unacknowledged, the lease stops renewing
    killed_at = job.step
    time.sleep(3.5)  # the lease (3 s) runs out
    gpu_worker_factory("gpu-second")
    # The broker would re-deliver the unacknowledged message only after its visibility timeout (hours):
    # the sweep is the path that brings the job back.
    assert sweep_jobs()["expired"] == 1
    wait_for(job, lambda j: j.status == JobStatus.SUCCEEDED, 180, "the job did not finish on the second worker")

    assert job.attempt == 2
    resumed = job.metrics["training"]["resumed_from_step"]
    assert resumed is not None
    # Only the steps since the last checkpoint are lost (the row's step lags the worker's by up to a second).
    assert resumed % 3 == 0
    assert resumed >= killed_at - 3
    assert job.step == job.total_steps
