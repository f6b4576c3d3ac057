"""The job task on the real PostgreSQL with tiny models: outcome, cancel and resume, fencing, attempts, sweep.

A real worker killed with SIGKILL mid-training, whose job the sweep hands to a new worker that resumes it, is in
the fault tier (tests/faults/test_worker_killed.py)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from tests.webapp.conftest import Cast
from tests.webapp.jobs.conftest import SECRET_KEY, make_endpoint_teacher
from tests.workers.ml.distill.conftest import toy_documents
from webapp.corpora.models import Chunk, Corpus, CorpusVersion, Document
from webapp.jobs import services
from webapp.jobs.models import DistillationJob, JobStatus, Notification
from workers.ml.distill.errors import TeacherError
from workers.tasks import jobs as job_tasks
from workers.tasks.jobs import JobRunner, LeaseLost, run_job, sweep_jobs

TINY_OPTIONS = {"epochs": 2, "lora_rank": 4, "seq_len": 64, "alpha": 0.5, "checkpoint_every": 2}


@pytest.fixture(autouse=True)
def tiny_world(settings: Any, tmp_path: Path) -> None:
    """Tiny student and teacher, files under the test's folder, a fast lease."""
    settings.MOE_BASE_MODEL = "tiny:llama-2l"
    settings.GLOBAL_TEACHERS = ["Tiny teacher=tiny:llama-2l"]
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.CHECKPOINTS_DIR = tmp_path / "checkpoints"
    settings.ORG_MAX_ACTIVE_JOBS = 10
    # In-process runs live inside the test's transaction, which the heartbeat thread's own connection cannot
    # see: its renewal would find no row and stop the run. The real-worker tests of the fault tier exercise it.
    settings.JOB_HEARTBEAT_SECONDS = 3600


def ready_corpus(cast: Cast, documents: int = 12) -> Corpus:
    """A corpus with a ready version made of the toy language the distillation tests use."""
    corpus = Corpus.objects.create(organization=cast.org, name="Toy")
    version = CorpusVersion.objects.create(
        organization=cast.org, corpus=corpus, number=1, status=CorpusVersion.Status.READY, stats={"tokens": 4000}
    )
    for number, (name, chunks) in enumerate(toy_documents(documents)):
        split = "heldout" if number % 4 == 0 else "train"
        document = Document.objects.create(version=version, name=name, kind="text", split=split)
        Chunk.objects.bulk_create(
            Chunk(version=version, document=document, position=i, text=text, tokens=40, split=split)
            for i, text in enumerate(chunks)
        )
    corpus.current_version = version
    corpus.status = Corpus.Status.READY
    corpus.save()
    return corpus


def new_job(cast: Cast, capture: Any, **options: Any) -> DistillationJob:
    corpus = ready_corpus(cast)
    with capture(execute=False):
        return services.create_job(
            cast.org,
            cast.member,
            name="toy expert",
            corpus=corpus,
            teacher_value="global:0",
            recipe="kd",
            options={**TINY_OPTIONS, **options},
        )


def test_it_hands_the_jobs_qa_options_to_the_engine(cast: Cast, django_capture_on_commit_callbacks: Any) -> None:
    qa_options = {"pairs_per_chunk": 4, "reward_threshold": 2, "reasoning": True, "self_reward": "off"}
    job = new_job(cast, django_capture_on_commit_callbacks, **qa_options)
    config = job_tasks.build_config(job, job_tasks.job_dirs(job))
    assert (config.qa.pairs_per_chunk, config.qa.reward_threshold, config.qa.reasoning) == (4, 2, True)
    assert config.qa.self_reward == "off"
    auto = new_job(cast, django_capture_on_commit_callbacks, self_reward="auto")
    assert job_tasks.build_config(auto, job_tasks.job_dirs(auto)).qa.self_reward == "auto"
    # Jobs from before the option graded their pairs; from before auto they stored a tick box.
    plain = new_job(cast, django_capture_on_commit_callbacks)
    assert job_tasks.build_config(plain, job_tasks.job_dirs(plain)).qa.reasoning is False
    assert job_tasks.build_config(plain, job_tasks.job_dirs(plain)).qa.self_reward == "on"
    boxed = new_job(cast, django_capture_on_commit_callbacks, self_reward=False)
    assert job_tasks.build_config(boxed, job_tasks.job_dirs(boxed)).qa.self_reward == "off"


def test_it_checks_an_endpoint_teachers_url_again_and_pins_the_jobs_requests_to_its_address(
    cast: Cast, settings: Any, public_dns: None, django_capture_on_commit_callbacks: Any
) -> None:
    settings.TEACHER_ENDPOINT_ALLOW_PRIVATE = False
    teacher = make_endpoint_teacher(cast.org, base_url="https://api.example.com/v1")
    job = new_job(cast, django_capture_on_commit_callbacks)
    job.recipe = DistillationJob.Recipe.QA
    job.teacher = teacher
    job.teacher_snapshot = {"kind": "endpoint", "base_url": teacher.base_url, "model_name": "big-model"}

    config = job_tasks.build_config(job, job_tasks.job_dirs(job))

    assert config.teacher.connect_address == "93.184.216.34"  # what *.example.com resolves to in tests
    assert config.teacher.api_key == SECRET_KEY
    # Since the teacher was saved, its name has come to point into the server's own network: the job fails.
    job.teacher_snapshot = {**job.teacher_snapshot, "base_url": "http://10.0.0.7/v1"}
    with pytest.raises(
        TeacherError, match=re.escape("The teacher's endpoint is refused: 10.0.0.7 resolves to the private")
    ):
        job_tasks.build_config(job, job_tasks.job_dirs(job))


def cancel_after_step(monkeypatch: pytest.MonkeyPatch, step: int) -> Any:
    """Make the runner request a cancel once training reports `step`; returns the original `on_progress`."""
    original = JobRunner.on_progress

    def cancel_after(self: JobRunner, progress: Any) -> None:
        original(self, progress)
        if progress.stage == "training" and progress.step >= step:
            DistillationJob.objects.filter(pk=self.job.pk).update(cancel_requested=True)

    monkeypatch.setattr(JobRunner, "on_progress", cancel_after)
    return original


def test_it_runs_a_job_to_an_expert_with_metrics(cast: Cast, django_capture_on_commit_callbacks: Any) -> None:
    job = new_job(cast, django_capture_on_commit_callbacks)

    run_job(job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempt == 1
    assert job.step == job.total_steps > 0
    assert (Path(job.artifact_dir) / "adapter_model.safetensors").exists()
    assert job.metrics["heldout"]["expert"]["perplexity"] > 0
    assert [step for step, *_ in job.loss_history] == sorted(step for step, *_ in job.loss_history)
    # Each point holds the objective and, apart, the cross-entropy the page plots against the held-out one.
    assert all(len(point) == 3 and point[2] > 0 and point[1] != point[2] for point in job.loss_history)
    # Held-out points at every checkpoint (2 steps) and at the end, for the job page's curve.
    assert [step for step, _ in job.heldout_history] == [
        s for s in range(1, job.total_steps + 1) if s % 2 == 0 or s == job.total_steps
    ]
    assert job.compute_seconds > 0
    assert job.finished_at is not None
    assert Notification.objects.get(recipient=cast.member).message == "Job “toy expert” succeeded."


def test_it_cancels_with_a_checkpoint_and_a_retry_resumes_from_it(
    cast: Cast, django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = new_job(cast, django_capture_on_commit_callbacks, epochs=4)
    original = cancel_after_step(monkeypatch, 4)
    run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    stopped_at = job.step
    assert stopped_at >= 4
    assert list((Path(job_tasks.job_dirs(job)["checkpoints"])).glob("step-*"))

    monkeypatch.setattr(JobRunner, "on_progress", original)
    with django_capture_on_commit_callbacks(execute=False):
        services.retry_job(job)
    run_job(job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempt == 2
    assert job.metrics["training"]["resumed_from_step"] == stopped_at
    steps = [step for step, *_ in job.loss_history]
    assert steps == sorted(steps)
    assert steps[-1] == job.total_steps


def test_two_workers_never_hold_the_same_job(cast: Cast, django_capture_on_commit_callbacks: Any) -> None:
    job = new_job(cast, django_capture_on_commit_callbacks)

    first = DistillationJob.claim(job.pk, "worker-a", lease_seconds=60)
    second = DistillationJob.claim(job.pk, "worker-b", lease_seconds=60)

    assert (first, second) == (1, None)
    # Once the first worker's lease has expired, another may take over, with the next attempt number.
    DistillationJob.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert DistillationJob.claim(job.pk, "worker-b", lease_seconds=60) == 2


def test_a_worker_that_lost_its_lease_cannot_write_progress_or_outcome(
    cast: Cast, django_capture_on_commit_callbacks: Any
) -> None:
    job = new_job(cast, django_capture_on_commit_callbacks)
    attempt = DistillationJob.claim(job.pk, "worker-a", lease_seconds=60)
    assert attempt == 1
    slow = JobRunner(DistillationJob.objects.get(pk=job.pk), attempt)
    DistillationJob.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert DistillationJob.claim(job.pk, "worker-b", lease_seconds=60) == 2

    with pytest.raises(LeaseLost):
        slow.write(step=99, loss=1.0)
    assert slow.should_stop()
    job_tasks._finish(slow, JobStatus.SUCCEEDED, metrics={"forged": True})

    job.refresh_from_db()
    assert (job.step, job.status, job.metrics) == (0, JobStatus.PREPARING, {})


def test_it_fails_a_job_that_keeps_dying_after_the_attempt_limit(
    cast: Cast, django_capture_on_commit_callbacks: Any
) -> None:
    job = new_job(cast, django_capture_on_commit_callbacks)
    DistillationJob.objects.filter(pk=job.pk).update(
        status=JobStatus.TRAINING, attempt=3, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )

    run_job(job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error.startswith("The job was started 3 times and its worker stopped each time without a word")
    assert "Lower the sequence length or the micro-batch" in job.error


def test_the_sweep_sends_again_expired_and_long_queued_jobs(
    cast: Cast, django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = new_job(cast, django_capture_on_commit_callbacks)
    waiting = new_job(cast, django_capture_on_commit_callbacks)
    alive = new_job(cast, django_capture_on_commit_callbacks)
    now = timezone.now()
    DistillationJob.objects.filter(pk=dead.pk).update(status=JobStatus.TRAINING, lease_expires_at=now - timedelta(1))
    DistillationJob.objects.filter(pk=waiting.pk).update(enqueued_at=now - timedelta(hours=2))
    DistillationJob.objects.filter(pk=alive.pk).update(status=JobStatus.TRAINING, lease_expires_at=now + timedelta(1))
    sent: list[int] = []
    monkeypatch.setattr(run_job, "delay", sent.append)

    counts = sweep_jobs()

    assert sorted(sent) == sorted([dead.pk, waiting.pk])
    assert counts == {"expired": 1, "requeued": 1}
    assert sweep_jobs() == {"expired": 1, "requeued": 0}  # a queued job's message is not re-sent every minute
