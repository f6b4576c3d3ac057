"""Restart Redis (the broker) around jobs: nothing is lost.

Each test starts a redis-server of its own (tests/faults/conftest.py `own_redis`) and points the test process's
Celery app and the gpu worker at it; the shared Redis of the other tests is never touched.

Does Redis's append-only file matter? Evidence, from the tests below:
- a job *waiting in the queue*: without appendonly a restart empties the broker and its message is lost; only
  the sweep brings it back, once JOB_QUEUED_RESEND_SECONDS (30 min by default) have passed. With appendonly
  the message survives and the job starts as soon as a worker is free (`..._survives_a_restart_only_with_
  appendonly`).
- a *running* job does not depend on it: its message was delivered and its state is the database row, so it
  trains through a restart of a Redis without persistence (`..._trains_through_a_restart`).
So appendonly is not needed for correctness, it spares queued jobs a wait: docker-compose runs Redis with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import pytest
from django.urls import reverse

from tests.faults.conftest import RedisServer, broker_at, wait_for
from tests.webapp.conftest import Cast
from tests.workers.tasks.test_jobs import new_job, ready_corpus
from webapp.corpora.models import Corpus, CorpusFile, CorpusVersion
from webapp.experts.models import Expert
from webapp.jobs.models import DistillationJob, JobStatus
from workers.tasks.jobs import sweep_jobs

pytestmark = [pytest.mark.faults, pytest.mark.celery_worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def broker(own_redis: Callable[..., RedisServer], settings: Any) -> Iterator[RedisServer]:
    """A Redis of the test's own without persistence (as scripts/lib.sh runs Redis): broker and cache of the test
    process, which plays the web process here, and of the worker started after it."""
    server = own_redis(appendonly=False)
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": server.url}}
    with broker_at(server.url):
        yield server


def queued_messages(server: RedisServer) -> int:
    return int(server.client().llen("gpu"))


def test_a_job_created_while_redis_is_down_is_sent_when_it_is_back_and_trains_through_a_restart(
    cast: Cast, tiny_jobs: None, broker: RedisServer, gpu_worker_factory: Any
) -> None:
    corpus = ready_corpus(cast)
    broker.stop()
    form = {"name": "While down", "corpus": corpus.pk, "teacher": "global:0", "recipe": "kd", "epochs": "2"}
    form |= {"lora_rank": "4", "divergence": "forward_kl", "alpha": "0.5", "pairs_per_chunk": "2"}
    form |= {"reward_threshold": "3"}
    browser = cast.client_for("member")

    # Redis down: the pages that read the cache and the submit that sends the job's message answer as usual.
    assert browser.get(reverse("jobs:create")).status_code == 200
    # The estimate panel the form fetches as the user types (it reads the measured speed from the cache).
    assert browser.get(reverse("jobs:estimate"), form, headers={"HX-Request": "true"}).status_code == 200
    response = browser.post(reverse("jobs:create"), form)
    job = DistillationJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("jobs:detail", args=[job.pk])
    assert browser.get(reverse("jobs:detail", args=[job.pk])).status_code == 200
    assert browser.get(reverse("jobs:list")).status_code == 200
    assert job.status == JobStatus.QUEUED
    assert job.enqueued_at is None  # its message was never sent: the sweep knows it must send it
    # An ingest asked for meanwhile is queued too (beat's corpus sweep sends a queued version whose message was
    # lost), without an error page.
    handbook = Corpus.objects.create(organization=cast.org, name="Handbook", created_by=cast.member)
    CorpusFile.objects.create(
        organization=cast.org, corpus=handbook, name="a.txt", declared_size=5, size=5, status=CorpusFile.Status.STORED
    )
    assert browser.post(reverse("corpora:ingest", args=[handbook.pk])).status_code == 302
    assert handbook.versions.get().status == CorpusVersion.Status.QUEUED
    # The tiny run of the other job tests (the form has no sequence length): 8 steps, a checkpoint every 3.
    DistillationJob.objects.filter(pk=job.pk).update(options={**job.options, "seq_len": 64, "checkpoint_every": 3})

    broker.start()  # empty: no persistence
    gpu_worker_factory("gpu-redis")
    assert sweep_jobs() == {"expired": 0, "requeued": 1}
    wait_for(job, lambda j: j.status == JobStatus.TRAINING and j.step >= 1, 120, "training did not get going")

    broker.restart()  # mid-training; comes back empty again
    restarted_at = job.step
    assert queued_messages(broker) == 0

    wait_for(job, lambda j: j.status in (JobStatus.SUCCEEDED, JobStatus.FAILED), 180, "the job did not end")
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempt == 1  # one run throughout: the running job needed nothing from Redis
    assert job.step == job.total_steps > restarted_at
    # The whole loss curve is on the row, before and after the restart.
    assert [step for step, *_ in job.loss_history] == list(range(1, job.total_steps + 1))
    assert job.metrics["heldout"]["expert"]["perplexity"] > 0
    expert = Expert.objects.get(organization=cast.org)
    assert job.expert_id == expert.pk
    assert expert.active_version is not None
    assert job.enqueued_at is not None
    assert sweep_jobs() == {"expired": 0, "requeued": 0}  # nothing left to bring back


@pytest.mark.parametrize("appendonly", [True, False], ids=["appendonly", "no-persistence"])
def test_a_queued_message_survives_a_restart_only_with_appendonly(
    cast: Cast, tiny_jobs: None, own_redis: Callable[..., RedisServer], settings: Any, appendonly: bool
) -> None:
    server = own_redis(appendonly=appendonly)
    with broker_at(server.url):
        job = new_job(cast, lambda execute: nullcontext())  # no worker: the message waits in the queue
        assert queued_messages(server) == 1

        server.restart()

        assert queued_messages(server) == (1 if appendonly else 0)
        # Without persistence the row is what brings the job back: the sweep sends a queued job again once its
        # last message is older than JOB_QUEUED_RESEND_SECONDS (a duplicate is harmless: the claim is fenced).
        settings.JOB_QUEUED_RESEND_SECONDS = 0
        assert sweep_jobs() == {"expired": 0, "requeued": 1}
        assert queued_messages(server) == (2 if appendonly else 1)
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
