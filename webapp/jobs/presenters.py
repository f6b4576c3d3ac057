"""What the jobs and teachers pages show, gathered in one place for full pages, htmx panels and the API.

Nothing here ever reads a teacher's API key: pages and API answers show `api_key_last4` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from webapp.core.times import unix_time
from webapp.jobs import services
from webapp.jobs.forms import DEFAULT_OPTIONS, JobForm
from webapp.jobs.models import ACTIVE_STATUSES, STAGES, DistillationJob, JobStatus, Teacher
from webapp.tenants.models import Organization

LOSS_WIDTH, LOSS_HEIGHT, LOSS_PAD = 480, 160, 4
LOSS_MAX_POINTS = 400
# The list's status filter: a name, its label, and the statuses it selects.
STATUS_FILTERS: list[tuple[str, str, tuple[str, ...]]] = [
    ("", "All", ()),
    ("active", "Active", tuple(status.value for status in ACTIVE_STATUSES)),
    ("queued", "Queued", (JobStatus.QUEUED.value,)),
    ("succeeded", "Succeeded", (JobStatus.SUCCEEDED.value,)),
    ("failed", "Failed", (JobStatus.FAILED.value,)),
    ("cancelled", "Cancelled", (JobStatus.CANCELLED.value,)),
]


def humanize_seconds(seconds: float | None) -> str:
    """3725 → "1 h 2 min"; 42 → "42 s"; None → "—"."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "—"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if minutes < 10 and secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def duration_seconds(job: DistillationJob, now: datetime | None = None) -> float | None:
    """How long the job ran: start to end, or start to now while it runs; None before it started."""
    if job.started_at is None:
        return None
    end = job.finished_at or (now or timezone.now())
    return max(0.0, (end - job.started_at).total_seconds())


# ---------------------------------------------------------------- the job page


def _finite(history: list[list[float]]) -> list[tuple[float, float]]:
    return [(float(step), float(loss)) for step, loss, *_ in history if loss is not None and math.isfinite(loss)]


def _with_cross_entropy(history: list[list[float]]) -> bool:
    """Whether every point carries the training cross-entropy ([step, objective, ce]; older jobs: [step, loss])."""
    return bool(history) and all(len(row) >= 3 and row[2] is not None for row in history)


def loss_curve(history: list[list[float]], heldout: list[list[float]] | None = None) -> dict[str, Any] | None:
    """SVG polylines of the training cross-entropy and the held-out cross-entropy at evaluation points, on
    shared axes: the same measure on training and held-out text (kd's objective, α·CE + (1 − α)·τ²·D, sits at
    another level, so the caption gives it apart). A history without cross-entropy plots the objective.
    Server-side points: the page needs no charting script."""
    cross_entropy = _with_cross_entropy(history)
    objective = _finite(history)
    rows = _finite([[row[0], row[2]] for row in history]) if cross_entropy else objective
    held = _finite(heldout or [])
    if len(rows) < 2:
        return None
    objective_last = round(objective[-1][1], 4) if objective else None
    # The caption's range is the training loss's own, over every step: the axes may span more (held-out points).
    train_low, train_high = min(loss for _, loss in rows), max(loss for _, loss in rows)
    if len(rows) > LOSS_MAX_POINTS:  # keep the first and the last, evenly thinned between
        stride = (len(rows) - 1) / (LOSS_MAX_POINTS - 1)
        rows = [rows[round(index * stride)] for index in range(LOSS_MAX_POINTS)]
    first_step, last_step = rows[0][0], max(rows[-1][0], held[-1][0] if held else 0.0)
    low, high = min([train_low, *(loss for _, loss in held)]), max([train_high, *(loss for _, loss in held)])
    step_span, loss_span = (last_step - first_step) or 1.0, (high - low) or 1.0
    inner_w, inner_h = LOSS_WIDTH - 2 * LOSS_PAD, LOSS_HEIGHT - 2 * LOSS_PAD

    def xy(series: list[tuple[float, float]]) -> list[list[str]]:
        """SVG coordinates, one decimal, of each (step, loss)."""
        return [
            [
                f"{LOSS_PAD + (step - first_step) / step_span * inner_w:.1f}",
                f"{LOSS_PAD + (high - loss) / loss_span * inner_h:.1f}",
            ]
            for step, loss in series
        ]

    held_xy = xy(held)
    return {
        "points": " ".join(",".join(point) for point in xy(rows)),
        "heldout_points": " ".join(",".join(point) for point in held_xy),
        # A dot per evaluation point as well: a run evaluated once has a single point, which no line shows.
        "heldout_dots": held_xy,
        "heldout_last": round(held[-1][1], 4) if held else None,
        "width": LOSS_WIDTH,
        "height": LOSS_HEIGHT,
        "first_step": int(first_step),
        "last_step": int(last_step),
        "low": round(train_low, 4),
        "high": round(train_high, 4),
        # The axis extremes, written at the chart's top and bottom edges so its scale can be read.
        "axis_high": f"{high:.4g}",
        "axis_low": f"{low:.4g}",
        "axis_low_y": LOSS_HEIGHT - 2 * LOSS_PAD,  # the label's baseline, just above the bottom edge
        "last": round(rows[-1][1], 4),
        "cross_entropy": cross_entropy,
        # The objective's last value, when it is not the cross-entropy itself (kd with α < 1, answer KD).
        "objective_last": objective_last if cross_entropy and objective_last != round(rows[-1][1], 4) else None,
    }


def stage_list(job: DistillationJob) -> list[dict[str, Any]]:
    """Every stage with its state: done, current or to come (none is current once a job failed or was cancelled)."""
    stages = [str(stage) for stage in STAGES]
    # Failed or cancelled: where it stopped is not recorded per stage, so none is marked current.
    current = stages.index(job.status) if job.status in stages else -1
    rows = []
    for index, stage in enumerate(STAGES):
        if job.status == JobStatus.SUCCEEDED or (current >= 0 and index < current):
            state = "done"
        elif index == current:
            state = "current"
        else:
            state = "todo"
        rows.append({"value": stage.value, "label": stage.label, "state": state})
    return rows


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


STAGE_TIME_LABELS = {
    "loading": "loading",
    "teacher": "teacher pass",
    "generating": "teacher writing pairs",
    "training": "training",
    "evaluating": "evaluation",
}


def _stage_times(stage_seconds: Any) -> list[tuple[str, str]]:
    """(stage, duration) of the run's last attempt, up to its evaluation (metrics' stage_seconds; older runs: none)."""
    if not isinstance(stage_seconds, dict):
        return []
    return [
        (STAGE_TIME_LABELS.get(stage, stage), humanize_seconds(seconds))
        for stage, seconds in stage_seconds.items()
        if _number(seconds) is not None
    ]


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def qa_data_view(qa_data: Any) -> dict[str, Any] | None:
    """What recipe qa trained on (metrics' qa_data, qa_generate.GenerationStats): pairs kept of those written,
    from how many chunks, why the others were dropped, and whether the teacher graded them and why."""
    if not isinstance(qa_data, dict):
        return None
    dropped = qa_data.get("dropped") if isinstance(qa_data.get("dropped"), dict) else {}
    threshold = _count(qa_data.get("reward_threshold"))
    reasons = {
        "unparseable": "in replies that did not parse",
        "empty": "empty",
        "no_answer": "whose answer was only a question",
        "ungrounded": "with answers mostly not in their chunk",
        "duplicate": "duplicates",
        "below_threshold": f"graded below {threshold}",
        "ungraded": "with no readable grade",
    }
    why = qa_data.get("self_reward_why")
    return {
        "kept": _count(qa_data.get("pairs_kept")),
        "requested": _count(qa_data.get("pairs_requested")),
        "chunks_done": _count(qa_data.get("chunks_done")),
        "chunks": _count(qa_data.get("chunks")),
        "dropped": [(_count(dropped.get(key)), label) for key, label in reasons.items() if _count(dropped.get(key))],
        "graded": "yes" if qa_data.get("self_reward") else "no",
        "graded_why": why if isinstance(why, str) else "",
        "budget_exhausted": qa_data.get("budget_exhausted") is True,
    }


def metrics_view(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The final metrics table: held-out scores per model, gap closed, KL, and Q&A when the recipe made them."""
    if not metrics:
        return None
    heldout = metrics.get("heldout") or {}
    rows = []
    for role in ("base", "expert", "teacher"):
        scores = heldout.get(role) or {}
        rows.append(
            {
                "role": role,
                "perplexity": _number(scores.get("perplexity")),
                "bits_per_byte": _number(scores.get("bits_per_byte")),
                "measured": bool(scores),
            }
        )
    gap = _number(metrics.get("gap_closed"))
    kl = metrics.get("kl_to_teacher") or {}
    qa = metrics.get("qa") if isinstance(metrics.get("qa"), dict) else None
    qa_view = None
    if qa:
        examples = [example for example in qa.get("examples") or [] if isinstance(example, dict)]
        ranked = sorted(examples, key=lambda example: -(_number(example.get("score")) or 0.0))
        best = ranked[:5]
        worst = ranked[len(best) :][::-1][:5]
        judge = qa.get("judge") if isinstance(qa.get("judge"), dict) else None
        grades = (judge or {}).get("mean_grade") or {}
        qa_view = {
            # (model, ROUGE-L, the judge's mean grade 1–5 or None)
            "scores": [
                (role, _number(score), _number(grades.get(role))) for role, score in (qa.get("rouge_l") or {}).items()
            ],
            "judge": str(judge.get("judge") or "the teacher") if judge else None,
            "source": qa.get("source") or "",
            "best": best,
            "worst": worst,
        }
    return {
        "rows": rows,
        "gap_closed_percent": None if gap is None else round(gap * 100, 1),
        "gap_basis": (metrics.get("gap_basis") or "perplexity").replace("_", " "),
        # Why there is no gap closed, when the run said (older runs did not).
        "gap_note": metrics.get("gap_note") or "the teacher was no better than the base, or not measured",
        "kl_before": _number(kl.get("before")),
        "kl_after": _number(kl.get("after")),
        "qa": qa_view,
        "qa_data": qa_data_view(metrics.get("qa_data")),
        "stage_times": _stage_times(metrics.get("stage_seconds")),
    }


# The settings each recipe reads (the others are stored with the job but play no part in it).
RECIPE_OPTIONS = {
    "kd": ("epochs", "token_budget", "lora_rank", "divergence", "alpha", "context"),
    "qa": ("epochs", "token_budget", "lora_rank", "pairs_per_chunk", "self_reward", "reward_threshold", "reasoning"),
}


def settings_rows(job: DistillationJob) -> list[tuple[str, str]]:
    """(label, value) of the job's settings that its recipe uses, labelled as on the form."""
    rows = []
    for key in RECIPE_OPTIONS.get(job.recipe, tuple(job.options)):
        # A job made before an option existed ran with its default.
        value = job.self_reward if key == "self_reward" else job.options.get(key, DEFAULT_OPTIONS.get(key))
        rows.append((_option_label(key), _option_value(value)))
    return rows


def _option_label(key: str) -> str:
    field = JobForm.base_fields.get(key)
    return str(field.label) if field is not None and field.label else key.replace("_", " ").capitalize()


def _option_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "—" if value is None else str(value)


def job_context(job: DistillationJob) -> dict[str, Any]:
    fraction = job.progress_fraction
    return {
        "job": job,
        "stages": stage_list(job),
        "percent": round(fraction * 100, 1),
        "eta": humanize_seconds(job.eta_s) if job.eta_s is not None else None,
        "duration": humanize_seconds(duration_seconds(job)),
        "compute": humanize_seconds(job.compute_seconds),
        "curve": loss_curve(job.loss_history or [], job.heldout_history or []),
        "log_lines": list(job.log_tail or [])[-20:],
        "metrics": metrics_view(job.metrics) if job.status == JobStatus.SUCCEEDED else None,
        "queue_position": job.queue_position(),
        "can_cancel": job.is_active and not job.cancel_requested,
        "can_retry": job.status in (JobStatus.FAILED, JobStatus.CANCELLED),
        "settings_rows": settings_rows(job),
    }


# ---------------------------------------------------------------- the jobs list


@dataclass
class JobRow:
    job: DistillationJob
    queue_position: int | None
    duration: str

    @property
    def percent(self) -> float:
        return round(self.job.progress_fraction * 100)


def job_rows(jobs: list[DistillationJob]) -> list[JobRow]:
    now = timezone.now()
    return [
        JobRow(job, job.queue_position() if job.status == JobStatus.QUEUED else None, _duration(job, now))
        for job in jobs
    ]


def _duration(job: DistillationJob, now: datetime) -> str:
    seconds = duration_seconds(job, now)
    return "—" if seconds is None else humanize_seconds(seconds)


def status_filter(value: str | None) -> tuple[str, tuple[str, ...]]:
    """The list filter chosen by `?status=`: a named group, one exact status, or everything."""
    for name, _, statuses in STATUS_FILTERS:
        if name and value == name:
            return name, statuses
    if value in JobStatus.values:
        return str(value), (str(value),)
    return "", ()


def usage(organization: Organization) -> dict[str, Any]:
    """This month's compute and teacher spending of the org, against its limits."""
    start = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    month = DistillationJob.objects.for_org(organization).filter(created_at__gte=start)
    totals = month.aggregate(
        tokens_in=Sum("teacher_tokens_in"), tokens_out=Sum("teacher_tokens_out"), cost=Sum("teacher_cost_usd")
    )
    used = services.month_compute_seconds(organization)
    limit = settings.ORG_MONTHLY_COMPUTE_SECONDS
    active = DistillationJob.objects.for_org(organization).filter(status__in=ACTIVE_STATUSES).count()
    return {
        "month": start,
        "compute_hours": round(used / 3600, 2),
        "limit_hours": round(limit / 3600, 1),
        "compute_percent": min(100.0, round(100 * used / limit, 1)) if limit else 0.0,
        "active_jobs": active,
        "max_active_jobs": settings.ORG_MAX_ACTIVE_JOBS,
        "teacher_tokens_in": int(totals["tokens_in"] or 0),
        "teacher_tokens_out": int(totals["tokens_out"] or 0),
        "teacher_cost_usd": float(totals["cost"] or 0),
    }


# ---------------------------------------------------------------- API shapes


def _expert_made(job: DistillationJob) -> dict[str, Any] | None:
    """The expert a job made or re-distils, and the version it made (None until it succeeded)."""
    if job.expert_id is None:
        return None
    made = [version.number for version in job.expert_versions.all()]
    return {"id": job.expert_id, "model": job.expert.slug, "version": made[0] if made else None}


def job_json(job: DistillationJob, *, detail: bool = False) -> dict[str, Any]:
    """A job in the API: its settings, status and progress; with `detail`, metrics, logs and accounting."""
    data: dict[str, Any] = {
        "object": "distillation_job",
        "id": job.pk,
        "name": job.name,
        "status": job.status,
        "recipe": job.recipe,
        "corpus": job.corpus_id,
        "corpus_version": job.corpus_version.number if job.corpus_version else None,
        # The snapshot names the teacher (kind, spec or endpoint and model); it never holds the key.
        "teacher": {key: value for key, value in job.teacher_snapshot.items() if "key" not in key},
        "student": job.student,
        "options": job.options,
        "spend_cap_usd": float(job.spend_cap_usd) if job.spend_cap_usd is not None else None,
        "eval_set": bool(job.eval_set_name),
        "queue_position": job.queue_position(),
        "cancel_requested": job.cancel_requested,
        "progress": {
            "step": job.step,
            "total_steps": job.total_steps,
            "fraction": round(job.progress_fraction, 4),
            "loss": job.loss,
            "tokens_per_s": job.tokens_per_s,
            "eta_s": job.eta_s,
            "stage_message": job.stage_message,
        },
        "error": job.error or None,
        # The expert it made (or re-distils): `model` is the name the chat API takes, `/api/v1/experts/{id}` it.
        "expert": _expert_made(job),
        "created_at": unix_time(job.created_at),
        "started_at": unix_time(job.started_at),
        "finished_at": unix_time(job.finished_at),
    }
    if detail:
        data.update(
            metrics=job.metrics or None,
            loss_history=job.loss_history,
            log_tail=job.log_tail,
            artifact_dir=job.artifact_dir or None,
            attempt=job.attempt,
            retry_of=job.retry_of_id,
            usage={
                "compute_seconds": job.compute_seconds,
                "teacher_tokens_in": job.teacher_tokens_in,
                "teacher_tokens_out": job.teacher_tokens_out,
                "teacher_cost_usd": float(job.teacher_cost_usd),
            },
        )
    return data


def teacher_json(choice: services.TeacherChoice) -> dict[str, Any]:
    """A teacher the org may use: `id` is the value a new job's `teacher` takes. Last 4 of the key at most."""
    snapshot = choice.snapshot
    teacher: Teacher | None = choice.teacher
    return {
        "object": "teacher",
        "id": choice.value,
        "name": snapshot.get("name"),
        "source": snapshot.get("source"),
        "kind": snapshot.get("kind"),
        "spec": snapshot.get("spec") or None,
        "base_url": snapshot.get("base_url") or None,
        "model_name": snapshot.get("model_name") or None,
        "api_key_last4": (teacher.api_key_last4 or None) if teacher else None,
        "price_input_per_million": snapshot.get("price_input_per_million"),
        "price_output_per_million": snapshot.get("price_output_per_million"),
    }
