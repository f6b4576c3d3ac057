"""The job rules: which teachers an org may use, endpoint safety, estimates, limits, and the job lifecycle
(create → enqueue on commit, cancel, retry from the last checkpoint, clone, notify at the end)."""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone

from webapp.core.outbound import OutboundPolicy, Refusal, allowed_address
from webapp.corpora.models import Corpus
from webapp.jobs.models import (
    ACTIVE_STATUSES,
    DistillationJob,
    JobStatus,
    Notification,
    Teacher,
    self_reward_setting,
)
from webapp.tenants.models import Organization
from webapp.webhooks import services as webhooks

logger = logging.getLogger(__name__)
# Tokenizer families of the catalog specs the web process knows without loading anything (kd needs the same).
TOKENIZER_FAMILIES = {
    "packaged:smollm2-135m-instruct": "smollm2",
    "packaged:gemma3-270m": "gemma3",
}
# Sizes of the packaged models. Below QA_TEACHER_MIN_PARAMETERS a teacher writes poor question–answer pairs and
# does not judge the answers (workers/ml/distill/qa_prompts.py's SMALL_TEACHER_PARAMETERS is the same line).
PACKAGED_PARAMETERS = {"packaged:smollm2-135m-instruct": 134_515_008, "packaged:gemma3-270m": 268_098_176}
QA_TEACHER_MIN_PARAMETERS = 1_000_000_000
# Packaged base models without a chat template: they continue text (recipe kd) but cannot answer prompts (qa).
PACKAGED_WITHOUT_CHAT = {"packaged:gemma3-270m"}
# Tokens/s of training per worker class before any job has measured it (2-core CPU, one mid-range GPU).
DEFAULT_TOKENS_PER_S = {"cpu": 250.0, "gpu": 20_000.0}
# How much slower kd trains across tokenizers (the teacher at every step, TRL's ULD loss) than with a teacher of
# the student's tokenizer and its cache, until such a job has run here. Two runs on a 2-core CPU, SmolLM2 student,
# bf16, the packaged Gemma-3-270M against SmolLM2 teaching itself: 95 against 340 tokens/s (bench/quality.py,
# 128-token chunks) and 67 against 337 (the CLI's defaults on this repository's docs).
CROSS_TOKENIZER_SLOWDOWN = 4.0
# Seconds before any job has measured them, per "worker class:what:teacher kind" (local or endpoint): what qa's
# teacher takes per chunk it is asked about (writing and grading its pairs), and a job's evaluation (kd: held-out
# perplexities; qa: the teacher writes held-out questions and references, three models answer them blind).
# Measured on 2 CPU cores with the packaged SmolLM2-135M as teacher (2026-11-30, whole CLI runs with the default
# settings on two of our docs, 27 training and 17 held-out chunks, on a quiet machine; docs/benchmarks.md): 5.0 s
# a chunk (self-reward auto: off for this teacher) and a 5-minute qa evaluation (12 held-out questions). The rest
# are guesses that the first finished job replaces.
DEFAULT_STAGE_SECONDS = {
    "cpu:qa_chunk:local": 5.0,
    "cpu:qa_chunk:endpoint": 3.0,
    "gpu:qa_chunk:local": 1.0,
    "gpu:qa_chunk:endpoint": 3.0,
    "cpu:eval_kd:local": 30.0,
    "cpu:eval_kd:endpoint": 60.0,
    "gpu:eval_kd:local": 10.0,
    "gpu:eval_kd:endpoint": 60.0,
    "cpu:eval_qa:local": 300.0,
    "cpu:eval_qa:endpoint": 180.0,
    "gpu:eval_qa:local": 60.0,
    "gpu:eval_qa:endpoint": 180.0,
}
# Teacher tokens of a qa job through an endpoint, beyond the chunks themselves (workers/ml/distill/qa_prompts.py,
# qa_eval.py, qa_judge.py): the instructions around a chunk, one written question–answer pair, and per evaluation
# question what it costs to write it, its reference answer, the teacher's blind answer and the judge's grades of
# three models' answers (~2,000 tokens with answers of a few sentences).
QA_PROMPT_TOKENS = 150
QA_PAIR_TOKENS = 100
QA_REASONING_TOKENS = 150  # the reasoning a pair carries before its answer, when the job asks for it
QA_EVAL_QUESTIONS = 50  # EvalSettings.max_eval_questions
QA_EVAL_TOKENS_PER_QUESTION = 2_000


class JobError(Exception):
    """A request the rules refuse; the message is shown to the user as is."""


# ---------------------------------------------------------------- teachers


@dataclass(frozen=True)
class TeacherChoice:
    value: str  # "global:<n>" or "org:<pk>"
    label: str
    snapshot: dict[str, Any]
    teacher: Teacher | None


def global_teachers() -> list[TeacherChoice]:
    choices = []
    for index, entry in enumerate(settings.GLOBAL_TEACHERS):
        name, _, spec = entry.partition("=")
        spec = spec or name
        snapshot = {"source": "global", "name": name, "kind": "catalog", "spec": spec}
        choices.append(TeacherChoice(f"global:{index}", f"{name} (shared)", snapshot, None))
    return choices


def teacher_choices(organization: Organization) -> list[TeacherChoice]:
    own = [
        TeacherChoice(f"org:{teacher.pk}", teacher.label, teacher.snapshot(), teacher)
        for teacher in Teacher.objects.for_org(organization)
    ]
    return global_teachers() + own


def resolve_teacher(organization: Organization, value: str) -> TeacherChoice:
    for choice in teacher_choices(organization):
        if choice.value == value:
            return choice
    raise JobError("Choose one of the listed teachers.")


def tokenizer_family(spec: str) -> str | None:
    if spec.startswith("tiny:"):
        return "smollm2"  # the tiny test models use SmolLM2's tokenizer
    return TOKENIZER_FAMILIES.get(spec)


def cross_tokenizer_kd_available() -> bool:
    """Whether recipe kd can distil across tokenizers here (TRL's ULD loss, the `gold` extra)."""
    return importlib.util.find_spec("trl") is not None


def crosses_tokenizers(teacher: dict[str, Any], student: str) -> bool:
    """A catalog teacher known to use another tokenizer than the student: recipe kd then runs the engine's
    cross-tokenizer loss (an endpoint is checked when the run starts; unknown families too)."""
    if teacher.get("kind") == "endpoint":
        return False
    teacher_family, student_family = tokenizer_family(teacher.get("spec", "")), tokenizer_family(student)
    return bool(teacher_family and student_family and teacher_family != student_family)


def kd_refusal(teacher: dict[str, Any], student: str) -> str | None:
    """Why recipe kd cannot use this teacher with this student, or None (unknown families are checked at run)."""
    if crosses_tokenizers(teacher, student):
        teacher_family, student_family = tokenizer_family(teacher.get("spec", "")), tokenizer_family(student)
        if cross_tokenizer_kd_available():
            return None
        advice = (
            "It is a base model without a chat template, so recipe qa cannot use it either: choose another "
            "teacher, or ask the operator to install the gold extra (cross-tokenizer kd)."
            if teacher.get("spec") in PACKAGED_WITHOUT_CHAT
            else "Choose recipe qa for this teacher."
        )
        return (
            f"Recipe kd needs a teacher with the student's tokenizer: {teacher.get('name')} uses {teacher_family}, "
            f"the student {student_family}. {advice}"
        )
    return None


def qa_refusal(teacher: dict[str, Any]) -> str | None:
    """Why recipe qa cannot use this teacher at all, or None (other catalog models are checked when the run starts)."""
    if teacher.get("kind") != "endpoint" and teacher.get("spec") in PACKAGED_WITHOUT_CHAT:
        return (
            f"Recipe qa needs a teacher that answers prompts: {teacher.get('name') or teacher.get('spec')} is a base "
            "model without a chat template. Choose recipe kd for this teacher, or an instruct model for qa."
        )
    return None


def qa_teacher_advice(teacher: dict[str, Any]) -> str | None:
    """For recipe qa: why this teacher is too small to write the pairs well, or None (an endpoint, a model of
    unknown size or one large enough: the run itself reports what it dropped)."""
    spec = str(teacher.get("spec", ""))
    if teacher.get("kind") == "endpoint":
        return None
    size = PACKAGED_PARAMETERS.get(spec)
    if spec.startswith("tiny:"):
        size = 0
    if size is None or size >= QA_TEACHER_MIN_PARAMETERS:
        return None
    described = "a tiny test model" if size == 0 else f"about {size / 1e6:.0f}M parameters"
    return (
        f"{teacher.get('name') or spec} has {described}: small teachers write poor question–answer pairs and "
        "do not judge the answers. Recipe qa pays off with a teacher of about 1–3B parameters or more, or an "
        "endpoint model; this teacher suits recipe kd."
    )


def kd_teacher_advice(teacher: dict[str, Any], student: str) -> str | None:
    """For recipe kd: what a teacher of another tokenizer costs (and what it gave on bench/quality.py), or None."""
    if not crosses_tokenizers(teacher, student) or not cross_tokenizer_kd_available():
        return None
    return (
        f"{teacher.get('name') or teacher.get('spec')} uses another tokenizer than the student: kd then compares "
        "whole distributions (ULD) with the teacher running at every step, and trains about 3–5× slower than "
        "with a teacher of the student's tokenizer (no teacher pass, though). On the Python manual the packaged "
        "Gemma-3-270M's expert was no better than SmolLM2 teaching itself through the same loss and batch "
        "(perplexity 11.76 against 11.69), in 2.4× the time."
    )


def check_endpoint_url(url: str) -> str:
    """Refuse endpoints that would make the server probe its own network (SSRF); see the settings. Returns the
    checked address, for a client to connect to instead of resolving the name again (workers/ml/pinned_http.py)."""
    address = allowed_address(
        url,
        OutboundPolicy(
            allow_private=settings.TEACHER_ENDPOINT_ALLOW_PRIVATE,
            allowed_hosts=settings.TEACHER_ENDPOINT_ALLOWED_HOSTS,
            noun="teacher",
            private_setting="TEACHER_ENDPOINT_ALLOW_PRIVATE",
            hosts_setting="TEACHER_ENDPOINT_ALLOWED_HOSTS",
        ),
    )
    if isinstance(address, Refusal):
        raise JobError(address.refusal)
    return address


# ---------------------------------------------------------------- estimates and limits


def worker_class() -> str:
    return "gpu" if settings.JOB_WORKER_CLASS == "gpu" else "cpu"


def _measured(key: str) -> float | None:
    """A speed the finished jobs measured (a moving average in the cache), or None."""
    try:
        value = cache.get(key)
    except Exception:  # Redis is down or restarting: an estimate from the default speed, not an error page
        logger.warning("the measured speed %s could not be read from the cache", key, exc_info=True)
        return None
    return float(value) if value else None


def _record(key: str, value: float) -> None:
    """Average `value` into the measured speed `key` (moving average, new values weigh 0.3)."""
    try:
        previous = cache.get(key)
        cache.set(key, value if previous is None else 0.7 * float(previous) + 0.3 * value, timeout=None)
    except Exception:  # Redis is down: this job's speed is not averaged in; the job's outcome stands
        logger.warning("the measured speed %s could not be written to the cache", key, exc_info=True)


def measured_tokens_per_s(*, cross_tokenizer: bool = False) -> float:
    """Training tokens per second on this worker class; `cross_tokenizer`: of recipe kd with a teacher of another
    tokenizer (cross_tokenizer_tokens_per_s)."""
    rate = _measured(f"jobs:tokens-per-s:{worker_class()}") or DEFAULT_TOKENS_PER_S[worker_class()]
    return cross_tokenizer_tokens_per_s(rate) if cross_tokenizer else rate


def cross_tokenizer_tokens_per_s(training_rate: float) -> float:
    """Training tokens per second of kd across tokenizers, whose teacher runs at every step under a costlier loss:
    measured apart (one such job must not slow the others' estimates); until one has run, `training_rate` (the
    same-tokenizer one) over CROSS_TOKENIZER_SLOWDOWN."""
    return _measured(f"jobs:tokens-per-s:{worker_class()}:cross-tokenizer") or training_rate / CROSS_TOKENIZER_SLOWDOWN


def measured_teacher_tokens_per_s(teacher_kind: str) -> float:
    """Corpus tokens per second a kd teacher pass reads, with a local or an endpoint teacher on this worker class.

    Until a job has measured it: the training rate. A local teacher has the student's size and reads each chunk
    after the preceding one (context distillation): twice the tokens, a forward only, so about training's rate
    per corpus token (bench/quality.py: 25,249 chunk tokens in 81 s against training's 326 tokens/s).
    """
    measured = _measured(f"jobs:teacher-tokens-per-s:{worker_class()}:{teacher_kind}")
    return measured or measured_tokens_per_s()


def measured_seconds(what: str, teacher_kind: str) -> float:
    """Seconds of `what` (qa_chunk, eval_kd, eval_qa) with a local or an endpoint teacher on this worker class."""
    key = f"{worker_class()}:{what}:{teacher_kind}"
    return _measured(f"jobs:seconds:{key}") or DEFAULT_STAGE_SECONDS[key]


def teacher_kind(snapshot: dict[str, Any]) -> str:
    return "endpoint" if snapshot.get("kind") == "endpoint" else "local"


def record_job_speeds(job: DistillationJob) -> None:
    """Refine the estimates with a succeeded job's stage times (metrics' stage_seconds): training tokens/s, kd's
    teacher tokens/s, qa's teacher seconds per chunk, evaluation seconds. A resumed job's times are its last
    attempt's: left out."""
    metrics = job.metrics or {}
    stages, training = metrics.get("stage_seconds") or {}, metrics.get("training") or {}
    if not stages or training.get("resumed_from_step") is not None:
        return
    kind, cls = teacher_kind(job.teacher_snapshot or {}), worker_class()
    try:
        if training.get("train_tokens") and stages.get("training"):
            key = f"jobs:tokens-per-s:{cls}" + (":cross-tokenizer" if training.get("cross_tokenizer") else "")
            _record(key, float(training["train_tokens"]) / max(1.0, float(stages["training"])))
        read = (metrics.get("teacher_pass") or {}).get("target_tokens")
        if job.recipe == DistillationJob.Recipe.KD and read and stages.get("teacher"):
            _record(f"jobs:teacher-tokens-per-s:{cls}:{kind}", float(read) / max(1.0, float(stages["teacher"])))
        asked = (metrics.get("qa_data") or {}).get("chunks_done")
        if job.recipe == DistillationJob.Recipe.QA and asked and stages.get("generating"):
            _record(f"jobs:seconds:{cls}:qa_chunk:{kind}", float(stages["generating"]) / float(asked))
        if stages.get("evaluating"):
            what = "eval_qa" if job.recipe == DistillationJob.Recipe.QA else "eval_kd"
            _record(f"jobs:seconds:{cls}:{what}:{kind}", float(stages["evaluating"]))
    except (TypeError, ValueError):  # metrics not as the engine writes them: the estimates keep what they had
        logger.warning("job %s: its stage times could not be read", job.pk, exc_info=True)


@dataclass(frozen=True)
class Estimate:
    training_tokens: int
    eta_seconds: float
    teacher_tokens: int | None
    cost_usd: float | None


def estimate(corpus: Corpus, recipe: str, options: dict[str, Any], teacher: dict[str, Any]) -> Estimate | None:
    version = corpus.current_version
    if version is None:
        return None
    train_tokens = int(version.stats.get("tokens", 0) * (1 - version.stats.get("heldout_share", 0.0)))
    chunks = int(version.stats.get("chunks", 0))
    pairs = int(options.get("pairs_per_chunk", 2))
    reasoning = bool(options.get("reasoning"))
    # What one epoch trains on: kd the corpus text, qa the pairs the teacher writes about it.
    epoch_tokens = train_tokens if recipe == "kd" else chunks * pairs * qa_pair_tokens(reasoning=reasoning)
    budget = options.get("token_budget") or int(epoch_tokens * float(options.get("epochs") or 1))
    # Under a budget of less than one epoch the teacher reads only the share of the corpus training needs: kd
    # the chunks training reads, qa the chunks whose pairs add up to the budget (workers/ml/distill/qa_generate).
    share = min(1.0, budget / epoch_tokens) if epoch_tokens else 1.0
    teacher_read, asked = int(train_tokens * share), math.ceil(chunks * share)
    kind = teacher_kind(teacher)
    cross = recipe == "kd" and crosses_tokenizers(teacher, settings.MOE_BASE_MODEL)
    if cross:  # no teacher pass: the teacher runs at every training step (measured with training)
        teacher_seconds = 0.0
    elif recipe == "kd":  # the teacher pass reads each chunk training needs once (with its context)
        teacher_seconds = teacher_read / measured_teacher_tokens_per_s(kind)
    else:  # qa's teacher writes (and grades) pairs chunk by chunk: generation, far slower than reading
        teacher_seconds = asked * measured_seconds("qa_chunk", kind)
    evaluation = measured_seconds("eval_qa" if recipe == "qa" else "eval_kd", kind)
    eta = budget / measured_tokens_per_s(cross_tokenizer=cross) + teacher_seconds + evaluation
    teacher_tokens = cost = None
    if kind == "endpoint":
        if recipe == "kd":
            teacher_tokens = teacher_read * 2
        else:
            grading = self_reward_setting(options.get("self_reward") or "auto") != "off"  # auto: an endpoint grades
            teacher_tokens = qa_teacher_tokens(teacher_read, asked, pairs, reasoning=reasoning, grading=grading)
        price_in = teacher.get("price_input_per_million") or 0
        price_out = teacher.get("price_output_per_million") or 0
        if price_in or price_out:
            cost = teacher_tokens * max(price_in, price_out) / 1_000_000
    return Estimate(budget, eta, teacher_tokens, cost)


def qa_pair_tokens(*, reasoning: bool = False) -> int:
    """The tokens of one written question–answer pair (about what it trains on, too, with the chat template)."""
    return QA_PAIR_TOKENS + (QA_REASONING_TOKENS if reasoning else 0)


def qa_teacher_tokens(
    train_tokens: int, chunks: int, pairs: int, *, reasoning: bool = False, grading: bool = True
) -> int:
    """What a qa job sends to and gets from its teacher: each of the `chunks` asked about (`train_tokens` of
    text) to write pairs, again with each pair to grade it (self-reward, when `grading`), and the evaluation's
    questions."""
    pair = qa_pair_tokens(reasoning=reasoning)
    writing = train_tokens + chunks * (QA_PROMPT_TOKENS + pairs * pair)
    graded = pairs * (train_tokens + chunks * (QA_PROMPT_TOKENS + pair)) if grading else 0
    return writing + graded + QA_EVAL_QUESTIONS * QA_EVAL_TOKENS_PER_QUESTION


def month_compute_seconds(organization: Organization) -> float:
    start = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    jobs = DistillationJob.objects.for_org(organization).filter(created_at__gte=start)
    used = jobs.aggregate(s=Sum("compute_seconds"))
    return float(used["s"] or 0.0)


def limit_refusal(organization: Organization) -> str | None:
    active = DistillationJob.objects.for_org(organization).filter(status__in=ACTIVE_STATUSES).count()
    if active >= settings.ORG_MAX_ACTIVE_JOBS:
        return (
            f"Your organization already has {active} job(s) queued or running, the most allowed at once "
            f"({settings.ORG_MAX_ACTIVE_JOBS}): wait for one to finish or cancel one."
        )
    used = month_compute_seconds(organization)
    if used >= settings.ORG_MONTHLY_COMPUTE_SECONDS:
        return (
            f"Your organization used {used / 3600:.1f} of its {settings.ORG_MONTHLY_COMPUTE_SECONDS / 3600:.0f} "
            "compute hours this month."
        )
    return None


# ---------------------------------------------------------------- lifecycle


def enqueue(job: DistillationJob) -> None:
    def send() -> None:
        from workers.tasks.jobs import run_job

        DistillationJob.objects.filter(pk=job.pk).update(enqueued_at=timezone.now())
        try:
            run_job.delay(job.pk)
        except Exception:
            # The broker is down (Redis restarting): the job is saved and stays queued, and no message went out.
            # A null `enqueued_at` tells beat's sweep to send it at its next run; the user gets no error page.
            logger.warning("job %s: could not be sent to the workers; the sweep will send it", job.pk, exc_info=True)
            DistillationJob.objects.filter(pk=job.pk).update(enqueued_at=None)

    transaction.on_commit(send)


@transaction.atomic
def create_job(
    organization: Organization,
    user: Any,
    *,
    name: str,
    corpus: Corpus,
    teacher_value: str,
    recipe: str,
    options: dict[str, Any],
    eval_set_name: str = "",
    spend_cap_usd: Any = None,
) -> DistillationJob:
    # Lock the org: two concurrent submissions cannot both pass the limit on active jobs.
    Organization.objects.select_for_update().filter(pk=organization.pk).first()
    if corpus.organization_id != organization.pk:
        raise JobError("Choose one of your corpora.")
    if corpus.current_version is None:
        raise JobError("The corpus has no ready version yet: ingest it first.")
    choice = resolve_teacher(organization, teacher_value)
    student = settings.MOE_BASE_MODEL
    if recipe == DistillationJob.Recipe.KD:
        refusal = kd_refusal(choice.snapshot, student)
        if refusal:
            raise JobError(refusal)
    if recipe == DistillationJob.Recipe.QA and (refusal := qa_refusal(choice.snapshot)):
        raise JobError(refusal)
    refusal = limit_refusal(organization)
    if refusal:
        raise JobError(refusal)
    if spend_cap_usd is not None:
        spend_cap_usd = Decimal(str(spend_cap_usd))
        if spend_cap_usd < Decimal("0.01") or spend_cap_usd != spend_cap_usd.quantize(Decimal("0.01")):
            raise JobError("The spend cap is in dollars and cents: at least 0.01 USD, at most two decimals.")
    job = DistillationJob.objects.create(
        organization=organization,
        name=name,
        corpus=corpus,
        corpus_version=corpus.current_version,
        teacher=choice.teacher,
        teacher_snapshot=choice.snapshot,
        student=student,
        recipe=recipe,
        options=options,
        eval_set_name=eval_set_name,
        spend_cap_usd=spend_cap_usd,
        max_attempts=settings.JOB_MAX_ATTEMPTS,
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )
    enqueue(job)
    return job


@transaction.atomic
def cancel_job(job: DistillationJob) -> None:
    """Queued: cancelled at once. Running: the worker finishes its step, saves a checkpoint and stops."""
    job = DistillationJob.objects.select_for_update().get(pk=job.pk)
    if job.is_final:
        raise JobError(f"The job already ended ({job.get_status_display().lower()}).")
    if job.status == JobStatus.QUEUED:
        job.status, job.finished_at = JobStatus.CANCELLED, timezone.now()
        job.save(update_fields=["status", "finished_at"])
        webhooks.job_ended(job)  # no worker ends this one: the event goes out from here
        return
    job.cancel_requested = True
    job.save(update_fields=["cancel_requested"])


@transaction.atomic
def retry_job(job: DistillationJob) -> DistillationJob:
    """Queue a failed or cancelled job again: it resumes from its last checkpoint when one exists."""
    job = DistillationJob.objects.select_for_update().get(pk=job.pk)
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise JobError("Only a failed or cancelled job can be retried.")
    refusal = limit_refusal(job.organization)
    if refusal:
        raise JobError(refusal)
    job.status = JobStatus.QUEUED
    job.cancel_requested = False
    job.error = job.traceback = ""
    job.finished_at = None
    # A retry gets a fresh allowance of attempts on top of those already spent.
    job.max_attempts = job.attempt + settings.JOB_MAX_ATTEMPTS
    job.save()
    enqueue(job)
    return job


def notify_job_ended(job_id: int) -> None:
    """To the org's webhooks; in the app for the job's creator, and by email when the deployment sends email."""
    job = DistillationJob.objects.select_related("created_by", "organization").get(pk=job_id)
    webhooks.job_ended(job)
    if job.created_by is None:
        return
    url = reverse("jobs:detail", args=[job.pk])
    message = f"Job “{job.name}” {job.get_status_display().lower()}."
    if job.status == JobStatus.FAILED and job.error:
        message += f" {job.error[:200]}"
    Notification.objects.create(organization=job.organization, recipient=job.created_by, message=message, url=url)
    if job.status == JobStatus.SUCCEEDED:
        record_job_speeds(job)
    if job.created_by.email and not settings.EMAIL_BACKEND.endswith("console.EmailBackend"):
        try:
            send_mail(f"[Distillery] {message[:120]}", f"{message}\n\n{url}", None, [job.created_by.email])
        except Exception:  # mail is a courtesy: never fail the job over it
            logger.warning("could not email the end of job %s", job.pk, exc_info=True)
