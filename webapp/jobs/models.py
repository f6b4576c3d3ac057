"""Teachers and distillation jobs.

- `Teacher`: an org's teacher — a model-catalog spec, or an OpenAI-compatible endpoint whose API key is stored
  encrypted (FIELD_ENCRYPTION_KEYS, MultiFernet) and never rendered back (only its last 4 characters).
  Global teachers (every org may use them) come from settings.GLOBAL_TEACHERS and are not rows.
- `DistillationJob`: the record of one distillation, and the truth about it. A worker claims it with one
  conditional UPDATE that bumps `attempt`; every later write is conditioned on that attempt (fencing), and a
  lease renewed by a heartbeat thread tells the sweep whether the worker is alive.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from webapp.core.encryption import decrypt, encrypt
from webapp.tenants.models import TenantOwnedModel


class Teacher(TenantOwnedModel):
    class Kind(models.TextChoices):
        CATALOG = "catalog", "Model from the catalog"
        ENDPOINT = "endpoint", "OpenAI-compatible endpoint"

    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CATALOG)
    spec = models.CharField(max_length=500, blank=True, help_text="packaged:… or hf:… (within MODEL_ROOTS).")
    base_url = models.URLField(max_length=500, blank=True, help_text="e.g. https://api.openai.com/v1")
    model_name = models.CharField(max_length=200, blank=True, help_text="The model name the endpoint serves.")
    api_key_encrypted = models.TextField(blank=True)
    api_key_last4 = models.CharField(max_length=4, blank=True)
    price_input_per_million = models.DecimalField(
        max_digits=12, decimal_places=4, null=True, blank=True, help_text="USD per million input tokens."
    )
    price_output_per_million = models.DecimalField(
        max_digits=12, decimal_places=4, null=True, blank=True, help_text="USD per million output tokens."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def set_api_key(self, plaintext: str) -> None:
        self.api_key_encrypted = encrypt(plaintext) if plaintext else ""
        self.api_key_last4 = plaintext[-4:] if plaintext else ""

    def api_key(self) -> str:
        return decrypt(self.api_key_encrypted) if self.api_key_encrypted else ""

    @property
    def label(self) -> str:
        if self.kind == self.Kind.CATALOG:
            return f"{self.name} ({self.spec})"
        return f"{self.name} ({self.model_name} @ {self.base_url})"

    def snapshot(self) -> dict[str, Any]:
        """What a job records about its teacher (no secret): the teacher may change after the job starts."""
        return {
            "source": "org",
            "id": self.pk,
            "name": self.name,
            "kind": self.kind,
            "spec": self.spec,
            "base_url": self.base_url,
            "model_name": self.model_name,
            "price_input_per_million": float(self.price_input_per_million or 0) or None,
            "price_output_per_million": float(self.price_output_per_million or 0) or None,
        }


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    PREPARING = "preparing", "Preparing"
    TEACHER = "teacher", "Teacher pass"
    TRAINING = "training", "Training"
    EVALUATING = "evaluating", "Evaluating"
    REGISTERING = "registering", "Registering"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


RUNNING_STATUSES = (
    JobStatus.PREPARING,
    JobStatus.TEACHER,
    JobStatus.TRAINING,
    JobStatus.EVALUATING,
    JobStatus.REGISTERING,
)
ACTIVE_STATUSES = (JobStatus.QUEUED, *RUNNING_STATUSES)
FINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
# The stage list of the job page, in order.
STAGES = (JobStatus.QUEUED, *RUNNING_STATUSES, JobStatus.SUCCEEDED)


SELF_REWARD_CHOICES = ("auto", "on", "off")


def self_reward_setting(value: Any) -> str:
    """qa's self-reward setting (auto, on, off) from a job's stored option: jobs from before the option graded
    their pairs; jobs from before `auto` stored a tick box (true, false)."""
    if value is None or value is True:
        return "on"
    if value is False:
        return "off"
    return value if value in SELF_REWARD_CHOICES else "on"


class DistillationJob(TenantOwnedModel):
    class Recipe(models.TextChoices):
        KD = "kd", "kd: token-level logit distillation"
        QA = "qa", "qa: teacher-written questions and answers"

    name = models.CharField(max_length=120)
    corpus = models.ForeignKey("corpora.Corpus", on_delete=models.SET_NULL, null=True, related_name="jobs")
    corpus_version = models.ForeignKey(
        "corpora.CorpusVersion", on_delete=models.SET_NULL, null=True, related_name="jobs"
    )
    teacher = models.ForeignKey(Teacher, on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs")
    teacher_snapshot = models.JSONField(default=dict)
    student = models.CharField(max_length=500)
    recipe = models.CharField(max_length=8, choices=Recipe.choices, default=Recipe.KD)
    # The recipe's settings as the form validated them (epochs/token budget, LoRA rank, divergence, α, ...).
    options = models.JSONField(default=dict)
    eval_set_name = models.CharField(max_length=700, blank=True, help_text="Storage name of the evaluation JSONL.")
    spend_cap_usd = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)

    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    claimed_by = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    # When the task message was last sent: beat re-sends a queued job's message only this rarely.
    enqueued_at = models.DateTimeField(null=True, blank=True)

    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    loss = models.FloatField(null=True, blank=True)
    tokens_per_s = models.FloatField(null=True, blank=True)
    eta_s = models.FloatField(null=True, blank=True)
    stage_message = models.CharField(max_length=300, blank=True)
    # [[step, loss], ...] for the loss curve (throttled copy of the training log) and the held-out points.
    loss_history = models.JSONField(default=list, blank=True)
    # [[step, held-out loss], ...]: the student's mean NLL on held-out chunks at evaluation points.
    heldout_history = models.JSONField(default=list, blank=True)
    log_tail = models.JSONField(default=list, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    artifact_dir = models.CharField(max_length=700, blank=True)

    compute_seconds = models.FloatField(default=0.0)
    teacher_tokens_in = models.BigIntegerField(default=0)
    teacher_tokens_out = models.BigIntegerField(default=0)
    teacher_cost_usd = models.DecimalField(max_digits=12, decimal_places=4, default=0)

    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True, help_text="Shown to staff only.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    retry_of = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # The expert this job re-distils (a new version of it), or the one its success registered.
    expert = models.ForeignKey("experts.Expert", on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "lease_expires_at"])]

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def self_reward(self) -> str:
        """The qa self-reward setting this job runs with: auto, on or off."""
        return self_reward_setting(self.options.get("self_reward"))

    @property
    def progress_fraction(self) -> float:
        return 0.0 if not self.total_steps else min(1.0, self.step / self.total_steps)

    def queue_position(self) -> int | None:
        """1-based place among queued jobs of every org (what runs first), or None when not queued."""
        if self.status != JobStatus.QUEUED:
            return None
        ahead = DistillationJob.objects.filter(status=JobStatus.QUEUED, created_at__lt=self.created_at).count()
        return ahead + 1

    @classmethod
    def claim(cls, job_id: int, worker: str, lease_seconds: int) -> int | None:
        """Take the job for one attempt: from queued, or from a running state whose lease expired.

        One conditional UPDATE, so two workers never both win; returns the new attempt number, or None.
        """
        now = timezone.now()
        claimable = Q(status=JobStatus.QUEUED) | Q(status__in=RUNNING_STATUSES, lease_expires_at__lt=now)
        updated = cls.objects.filter(claimable, pk=job_id, cancel_requested=False).update(
            status=JobStatus.PREPARING,
            attempt=F("attempt") + 1,
            claimed_by=worker,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            started_at=now,
            error="",
        )
        if updated == 0:
            return None
        return int(cls.objects.values_list("attempt", flat=True).get(pk=job_id))

    def fenced(self, attempt: int) -> models.QuerySet[DistillationJob]:
        """This job's row only while `attempt` still holds it and it is running (for conditional writes)."""
        return DistillationJob.objects.filter(pk=self.pk, attempt=attempt, status__in=RUNNING_STATUSES)


def active_jobs_of_corpus(corpus: Any) -> list[str]:
    """Queued or running jobs that read `corpus` (registered with corpora: deleting it is refused meanwhile)."""
    jobs = DistillationJob.objects.filter(corpus=corpus, status__in=ACTIVE_STATUSES).values_list("name", flat=True)
    return [f"job “{name}”" for name in jobs]


class Notification(TenantOwnedModel):
    """An in-app note for one user (a job ended); shown in the top bar until read."""

    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    message = models.CharField(max_length=300)
    url = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.message
