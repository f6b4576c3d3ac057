"""Distillation jobs: the gpu-queue task that runs one `DistillationJob`, and beat's sweep of dead ones.

1. Claim the row with one conditional UPDATE (queued, or a running state whose lease expired), bumping
   `attempt`. A job past `max_attempts` fails with the likely reason instead of running again.
2. A heartbeat thread renews the lease every JOB_HEARTBEAT_SECONDS while the worker lives — model loads and
   long steps included — through a fenced UPDATE (attempt must still match). When that UPDATE hits 0 rows
   another worker has the job: `should_stop` turns true, the run stops at the next step, and nothing more is
   written (fencing).
3. The pure engine runs (`workers.ml.distill.distill`) on the pinned corpus version, with output, work files
   and checkpoints under DATA_DIR (a volume every worker host mounts), so a retry or another host resumes from
   the latest checkpoint.
4. Progress goes to the row about once a second (stage, step, loss, tokens/s, ETA, loss curve, last lines);
   the outcome — succeeded with metrics and artifact, cancelled, or failed with the message — is written
   fenced as well. Teacher token usage and compute seconds are accounted on the row.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from dataclasses import asdict
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from webapp.corpora.models import Chunk
from webapp.jobs.models import FINAL_STATUSES, RUNNING_STATUSES, DistillationJob, JobStatus
from workers.ml.distill.corpus import Chunk as SnapshotChunk
from workers.ml.distill.corpus import CorpusSnapshot
from workers.ml.distill.progress import Progress
from workers.tasks.checkpoint_sync import CheckpointSync

logger = logging.getLogger(__name__)
PROGRESS_EVERY_S = 1.0
CANCEL_CHECK_EVERY_S = 1.0  # the cancel flag costs a query; steps can be much shorter than a second
LOG_TAIL_LINES = 20
# Which job status each engine stage belongs to.
STAGE_STATUS = {
    "loading": JobStatus.PREPARING,
    "teacher": JobStatus.TEACHER,
    "generating": JobStatus.TEACHER,
    "training": JobStatus.TRAINING,
    "evaluating": JobStatus.EVALUATING,
    "exporting": JobStatus.REGISTERING,
    "done": JobStatus.REGISTERING,
}


def job_dirs(job: DistillationJob) -> dict[str, Path]:
    root = Path(settings.CHECKPOINTS_DIR) / f"job-{job.pk}"
    return {
        "output": Path(settings.ARTIFACTS_DIR) / f"job-{job.pk}",
        "checkpoints": root / "checkpoints",
        "work": root / "work",
    }


def corpus_snapshot(job: DistillationJob) -> CorpusSnapshot:
    """The pinned corpus version as the engine's immutable snapshot (its split is the ingest's)."""
    rows = (
        Chunk.objects.filter(version_id=job.corpus_version_id)
        .order_by("document_id", "position")
        .values_list("document_id", "document__name", "position", "text", "split")
        .iterator(chunk_size=2000)
    )
    train, heldout = [], []
    for document_id, name, position, text, split in rows:
        chunk = SnapshotChunk(doc_id=f"{document_id}:{name}", position=position, text=text)
        (heldout if split == "heldout" else train).append(chunk)
    return CorpusSnapshot(train=tuple(train), heldout=tuple(heldout), name=f"corpus-version-{job.corpus_version_id}")


class LeaseLost(Exception):
    """Another attempt holds the job now; this worker must stop without writing."""


class JobRunner:
    """The callbacks of one attempt: fenced progress writes, cooperative cancel, and the heartbeat thread."""

    def __init__(self, job: DistillationJob, attempt: int) -> None:
        self.job = job
        self.attempt = attempt
        self.lost = threading.Event()
        self._stop_heartbeat = threading.Event()
        self._last_write = 0.0
        self._cancel_checked_at = float("-inf")
        self.checkpoint_sync: CheckpointSync | None = None
        self._cancel_requested = False
        self._loss_history: list[list[float]] = list(job.loss_history or [])
        self._log_tail: list[str] = list(job.log_tail or [])
        self._heldout_history: list[list[float]] = list(job.heldout_history or [])
        self._status = JobStatus.PREPARING
        self._started = time.monotonic()
        self._heartbeat = threading.Thread(target=self._beat, name=f"job-{job.pk}-heartbeat", daemon=True)

    # ---------------------------------------------------------------- lease
    def start(self) -> None:
        self._heartbeat.start()

    def stop(self) -> None:
        self._stop_heartbeat.set()
        self._heartbeat.join(timeout=5)

    def _beat(self) -> None:
        from django.db import connection

        try:
            while not self._stop_heartbeat.wait(settings.JOB_HEARTBEAT_SECONDS):
                now = timezone.now()
                renewed = self.job.fenced(self.attempt).update(
                    heartbeat_at=now, lease_expires_at=now + timedelta(seconds=settings.JOB_LEASE_SECONDS)
                )
                if not renewed:
                    self.lost.set()
                    return
        finally:
            connection.close()  # the thread's own connection

    # ---------------------------------------------------------------- callbacks for the engine
    def should_stop(self) -> bool:
        """Called between steps: a lost lease stops at once; the cancel flag is read at most once a second."""
        if self.lost.is_set():
            return True
        now = time.monotonic()
        if now - self._cancel_checked_at >= CANCEL_CHECK_EVERY_S:
            self._cancel_checked_at = now
            self._cancel_requested = bool(
                DistillationJob.objects.filter(pk=self.job.pk).values_list("cancel_requested", flat=True).first()
            )
        return self._cancel_requested

    def on_progress(self, progress: Progress) -> None:
        if progress.stage == "training" and self.checkpoint_sync is not None:
            self.checkpoint_sync.push()  # a checkpoint the engine saved after the previous step goes to storage
        if progress.stage == "training" and progress.loss is not None:
            # [step, objective, cross-entropy]: the job page plots cross-entropy against the held-out one.
            point = [progress.step, round(progress.loss, 5)]
            self._loss_history.append(point if progress.ce is None else [*point, round(progress.ce, 5)])
        heldout_point = progress.heldout_loss is not None
        if heldout_point:
            self._heldout_history.append([progress.step, round(float(progress.heldout_loss or 0.0), 5)])
        if progress.message:
            line = f"{timezone.now():%H:%M:%S} {progress.stage}: {progress.message}"
            if not self._log_tail or self._log_tail[-1][9:] != line[9:]:
                self._log_tail = [*self._log_tail, line][-LOG_TAIL_LINES:]
        status = STAGE_STATUS.get(progress.stage, self._status)
        now = time.monotonic()
        finished_stage = progress.step >= progress.total_steps
        if (
            status == self._status
            and now - self._last_write < PROGRESS_EVERY_S
            and not (finished_stage or heldout_point)
        ):
            return
        self._status, self._last_write = status, now
        self.write(
            status=status,
            step=progress.step,
            total_steps=progress.total_steps,
            loss=progress.loss,
            tokens_per_s=progress.tokens_per_s,
            eta_s=progress.eta_s,
            stage_message=progress.message[:300],
            loss_history=self._loss_history,
            heldout_history=self._heldout_history,
            log_tail=self._log_tail,
        )

    def write(self, **fields: Any) -> None:
        """A fenced write: refused (and the run told to stop) once another attempt holds the job."""
        if self.lost.is_set():
            raise LeaseLost
        if not self.job.fenced(self.attempt).update(**fields):
            self.lost.set()
            raise LeaseLost

    def elapsed(self) -> float:
        return time.monotonic() - self._started


def build_config(job: DistillationJob, dirs: dict[str, Path]) -> Any:
    """The engine's DistillConfig from the job's validated settings."""
    import torch

    from webapp.jobs.services import JobError, check_endpoint_url
    from workers.ml.distill.config import (
        DistillConfig,
        EndpointTeacherConfig,
        EvalSettings,
        KDSettings,
        LocalTeacherConfig,
        LoraSettings,
        QASettings,
    )
    from workers.ml.distill.errors import TeacherError

    options = job.options
    on_gpu = torch.cuda.is_available()
    base = DistillConfig.for_gpu if on_gpu else DistillConfig.for_cpu
    defaults = base(output_dir=dirs["output"], model_cache_dir=settings.MODEL_CACHE_DIR)
    snapshot = job.teacher_snapshot
    teacher: Any
    if snapshot.get("kind") == "endpoint":
        cap = None
        price = max(snapshot.get("price_input_per_million") or 0, snapshot.get("price_output_per_million") or 0)
        if job.spend_cap_usd is not None and price:
            # The money cap as a token cap at the dearer of the two prices, so the cap is never overspent.
            cap = int(Decimal(job.spend_cap_usd) * 1_000_000 / Decimal(str(price)))
        try:  # checked again at each start: the name may resolve elsewhere since the teacher was saved
            address = check_endpoint_url(snapshot["base_url"])
        except JobError as error:
            raise TeacherError(f"The teacher's endpoint is refused: {error}") from error
        teacher = EndpointTeacherConfig(
            base_url=snapshot["base_url"],
            model=snapshot["model_name"],
            api_key=job.teacher.api_key() if job.teacher else "",
            max_tokens_budget=cap,
            connect_address=address,  # the checked address: a changed DNS answer cannot move the job's requests
        )
    else:
        teacher = LocalTeacherConfig(spec=snapshot["spec"])
    training = defaults.training
    training = type(training)(
        **{
            **asdict(training),
            "epochs": float(options.get("epochs") or training.epochs),
            "token_budget": options.get("token_budget") or None,
            "learning_rate": float(options.get("learning_rate") or training.learning_rate),
            "checkpoint_every": int(options.get("checkpoint_every") or settings.JOB_CHECKPOINT_EVERY),
            # Held-out points of the job page's loss curve, at every checkpoint.
            "eval_every": int(options.get("checkpoint_every") or settings.JOB_CHECKPOINT_EVERY),
            "num_threads": settings.TORCH_THREADS if not on_gpu else training.num_threads,
            "seq_len": int(options.get("seq_len") or training.seq_len),
        }
    )
    rank = int(options.get("lora_rank") or defaults.lora.rank)
    eval_set = None
    if job.eval_set_name:
        eval_set = _local_eval_set(job, dirs["work"])
    return DistillConfig(
        output_dir=dirs["output"],
        model_cache_dir=Path(settings.MODEL_CACHE_DIR),
        recipe=job.recipe,
        teacher=teacher,
        student=job.student,
        model_roots=tuple(settings.MODEL_ROOTS),
        checkpoint_dir=dirs["checkpoints"],
        work_dir=dirs["work"],
        embedder=settings.MOE_EMBEDDER,
        lora=LoraSettings(rank=rank, alpha=2 * rank),
        training=training,
        kd=KDSettings(
            alpha=float(options.get("alpha", 0.5)),
            divergence=options.get("divergence", "forward_kl"),
            context_chunks=1 if options.get("context", True) else 0,
        ),
        qa=QASettings(
            pairs_per_chunk=int(options.get("pairs_per_chunk", 2)),
            self_reward=job.self_reward,  # auto, on or off (older jobs stored a box, or nothing: they graded)
            reward_threshold=int(options.get("reward_threshold", 3)),
            reasoning=bool(options.get("reasoning", False)),
        ),
        evaluation=EvalSettings(eval_set=eval_set),
    )


def _local_eval_set(job: DistillationJob, work: Path) -> Path:
    from django.core.files.storage import default_storage

    work.mkdir(parents=True, exist_ok=True)
    target = work / "eval_set.jsonl"
    with default_storage.open(job.eval_set_name, "rb") as source:
        target.write_bytes(source.read())
    return target


@shared_task(
    name="distillery.gpu.run_job",
    acks_late=True,
    reject_on_worker_lost=True,
    time_limit=72 * 3600,
    soft_time_limit=72 * 3600 - 120,
)
def run_job(job_id: int) -> None:
    worker = f"{socket.gethostname()}:{os.getpid()}"
    attempt = DistillationJob.claim(job_id, worker, settings.JOB_LEASE_SECONDS)
    if attempt is None:
        logger.info("job %s: nothing to claim", job_id)
        return
    job = DistillationJob.objects.select_related("teacher").get(pk=job_id)
    runner = JobRunner(job, attempt)
    if attempt > job.max_attempts:
        _finish(
            runner,
            JobStatus.FAILED,
            error=(
                f"The job was started {job.max_attempts} times and its worker stopped each time without a word: "
                "likely killed for memory. Lower the sequence length or the micro-batch (training settings), "
                "or use a smaller teacher, and retry."
            ),
        )
        return
    runner.start()
    try:
        _run(job, runner)
    except LeaseLost:
        logger.warning("job %s: attempt %s lost its lease; another worker has it", job_id, attempt)
    finally:
        runner.stop()


def _run(job: DistillationJob, runner: JobRunner) -> None:
    from workers.ml.distill.errors import DistillError
    from workers.ml.distill.run import distill

    dirs = job_dirs(job)
    try:
        config = build_config(job, dirs)
        snapshot = corpus_snapshot(job)
        runner.checkpoint_sync = CheckpointSync(job.organization_id, job.pk, dirs["checkpoints"])
        fetched = runner.checkpoint_sync.pull()
        message = f"Resuming from {fetched} (copied from storage)" if fetched else "Loading the student and the teacher"
        runner.write(status=JobStatus.PREPARING, stage_message=message)
        result = distill(config, snapshot, on_progress=runner.on_progress, should_stop=runner.should_stop)
        runner.checkpoint_sync.push()  # the checkpoint a cancel or the end of training saved
    except LeaseLost:
        raise
    except DistillError as error:
        _finish(runner, JobStatus.FAILED, error=str(error), usage=getattr(error, "teacher_usage", None))
        return
    except Exception as error:
        logger.exception("job %s failed", job.pk)
        _finish(runner, JobStatus.FAILED, error=f"The job stopped with an error: {error}", trace=traceback.format_exc())
        return
    if runner.lost.is_set():
        raise LeaseLost
    usage = result.teacher_usage or {}
    if result.status == "cancelled":
        _finish(runner, JobStatus.CANCELLED, usage=usage, step=result.steps, total_steps=result.total_steps)
        return
    runner.write(status=JobStatus.REGISTERING, stage_message="Registering the expert in the mixture")
    try:
        version = _register_expert(job, runner, result)
    except LeaseLost:
        raise
    except Exception as error:
        logger.exception("job %s: the expert could not be registered", job.pk)
        _finish(runner, JobStatus.FAILED, usage=usage, error=f"The expert could not be registered: {error}")
        return
    _finish(
        runner,
        JobStatus.SUCCEEDED,
        usage=usage,
        metrics=result.metrics,
        artifact_dir=str(result.output_dir),
        step=result.steps,
        total_steps=result.total_steps,
        expert_id=version.expert_id,
    )


def _register_expert(job: DistillationJob, runner: JobRunner, result: Any) -> Any:
    """The expert version of the finished job, registered while this attempt still holds the job (fenced)."""
    from django.db import transaction

    from webapp.experts.services import register_from_job

    with transaction.atomic():
        if not list(job.fenced(runner.attempt).select_for_update().values_list("pk", flat=True)):
            raise LeaseLost
        job.artifact_dir = str(result.output_dir)
        job.metrics = result.metrics
        return register_from_job(job)


def _finish(
    runner: JobRunner,
    status: str,
    *,
    error: str = "",
    trace: str = "",
    usage: dict[str, int] | None = None,
    **fields: Any,
) -> None:
    job = runner.job
    usage = usage or {}
    tokens_in = int(usage.get("prompt_tokens", 0))
    tokens_out = int(usage.get("completion_tokens", 0))
    snapshot = job.teacher_snapshot
    cost = (
        Decimal(tokens_in) * Decimal(str(snapshot.get("price_input_per_million") or 0)) / 1_000_000
        + Decimal(tokens_out) * Decimal(str(snapshot.get("price_output_per_million") or 0)) / 1_000_000
    )
    updated = (
        DistillationJob.objects.filter(pk=job.pk, attempt=runner.attempt)
        .exclude(status__in=FINAL_STATUSES)
        .update(
            status=status,
            error=error[:4000],
            traceback=trace[-20000:],
            finished_at=timezone.now(),
            lease_expires_at=None,
            eta_s=None,
            compute_seconds=job.compute_seconds + runner.elapsed(),
            teacher_tokens_in=job.teacher_tokens_in + tokens_in,
            teacher_tokens_out=job.teacher_tokens_out + tokens_out,
            teacher_cost_usd=job.teacher_cost_usd + cost,
            loss_history=runner._loss_history,
            log_tail=runner._log_tail,
            **fields,
        )
    )
    if not updated:
        logger.warning("job %s: attempt %s could not record %s (lease lost)", job.pk, runner.attempt, status)
        return
    from webapp.jobs.services import notify_job_ended

    notify_job_ended(job.pk)


@shared_task(name="distillery.jobs.sweep", time_limit=120, expires=60)
def sweep_jobs() -> dict[str, int]:
    """Beat, every minute: send again the jobs whose lease expired (their worker died) or whose message was lost.

    This is the path that works even when the broker lost the message: the row alone is enough.
    """
    now = timezone.now()
    expired = list(
        DistillationJob.objects.filter(status__in=RUNNING_STATUSES, lease_expires_at__lt=now).values_list(
            "pk", flat=True
        )
    )
    # A queued job may wait for hours behind others; its message is re-sent only when the last one is old
    # (Redis restarted empty, a message dropped), and a duplicate is harmless: the claim takes the job once.
    # A job whose message could not be sent at all (the broker was down) has no `enqueued_at`: sent now.
    stale = DistillationJob.objects.filter(
        Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=now - timedelta(seconds=settings.JOB_QUEUED_RESEND_SECONDS)),
        status=JobStatus.QUEUED,
    )
    lost = list(stale.values_list("pk", flat=True))
    stale.update(enqueued_at=now)
    for job_id in expired + lost:
        run_job.delay(job_id)
    return {"expired": len(expired), "requeued": len(lost)}
