"""What the experts pages show: list rows, the expert page, the router's decision, the org's usage per expert.

Training samples (the Q&A pairs, the best/worst answers) only reach an org that `services.can_see_samples`
allows: the owner org, or anyone when the owner shared the samples too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db.models import Count, QuerySet, Sum
from django.utils import timezone

from webapp.experts import services
from webapp.experts.models import Expert, ExpertVersion, MixtureSharedExpert, UsageCounter
from webapp.experts.privacy import PublicView
from webapp.jobs.presenters import metrics_view
from webapp.tenants.models import Organization

README_MAX_BYTES = 64 * 1024
QA_ROWS_SHOWN = 50
USAGE_DAYS = 30


def gap_closed_percent(version: ExpertVersion | None) -> float | None:
    """The key metric of the list: the share of the base → teacher gap the expert closed, in %."""
    value = (version.metrics or {}).get("gap_closed") if version else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return round(float(value) * 100, 1)


@dataclass
class ExpertRow:
    expert: Expert
    version: ExpertVersion | None
    gap_closed: float | None


def expert_rows(experts: list[Expert]) -> list[ExpertRow]:
    return [ExpertRow(expert, expert.active_version, gap_closed_percent(expert.active_version)) for expert in experts]


def read_card(version: ExpertVersion, view: PublicView | None = None) -> str:
    """The version's README.md (the model card) as text, cut at 64 KiB; "" when there is none. Another org's
    `view` leaves out what it may not see."""
    card = services.read_stored_text(version, "README.md", limit=README_MAX_BYTES)
    return view.card(card) if view else card


def signature_summary(signature: dict[str, Any]) -> dict[str, Any] | None:
    """The routing signature in a few numbers: embedder, dimension, centroids and the chunks behind each."""
    if not signature:
        return None
    centroids = signature.get("centroids") or []
    counts = [int(count) for count in signature.get("counts") or [] if isinstance(count, int | float)]
    return {
        "embedder": str(signature.get("embedder") or "—"),
        "dim": signature.get("dim") or (len(centroids[0]) if centroids and isinstance(centroids[0], list) else None),
        "centroids": len(centroids),
        "counts": counts,
        "chunks": sum(counts),
    }


def version_metrics(version: ExpertVersion, view: PublicView | None = None) -> dict[str, Any] | None:
    """The jobs page's metrics table for a version; another org's `view` leaves out what it may not see."""
    return metrics_view(view.metrics(version.metrics) if view else version.metrics or {})


def detail_context(expert: Expert, organization: Organization) -> dict[str, Any]:
    """The expert page. Another org's (shared) expert: its active version only, no job links, no versions."""
    own = expert.organization_id == organization.pk
    samples = services.can_see_samples(expert, organization)
    version = expert.active_version
    view = services.public_view(version, organization) if version else None
    versions: list[dict[str, Any]] = []
    if own:
        for row in expert.versions.select_related("job"):
            versions.append(
                {
                    "version": row,
                    "active": row.pk == expert.active_version_id,
                    "gap_closed": gap_closed_percent(row),
                }
            )
    included_here = (
        expert.servable
        if own
        else MixtureSharedExpert.objects.filter(mixture__organization=organization, expert=expert).exists()
    )
    context: dict[str, Any] = {
        "expert": expert,
        "own": own,
        "version": version,
        "versions": versions,
        "card": read_card(version, view) if version else "",
        "metrics": version_metrics(version, view) if version else None,
        "samples": samples,
        "qa_rows": services.read_stored_jsonl(version, "qa_data.jsonl", limit=QA_ROWS_SHOWN)
        if version and samples
        else [],
        "signature": signature_summary(version.signature) if version else None,
        "api_name": expert.api_name(organization),
        "included_here": included_here,
        "in_catalog": not own and expert.shared and expert.servable,
    }
    if own and expert.shared:
        # Other orgs that include it: a number only, never their names.
        context["included_elsewhere"] = (
            MixtureSharedExpert.objects.filter(expert=expert).exclude(mixture__organization=organization).count()
        )
    return context


# ---------------------------------------------------------------- the catalog and the mixture


def catalog_experts(organization: Organization) -> QuerySet[Expert]:
    """The catalog in its page order: by name, the pk breaking ties (names repeat across orgs), so pages never
    overlap."""
    return (
        services.shared_catalog(organization)
        .order_by("name", "pk")
        .annotate(including=Count("included_by", distinct=True))
    )


def catalog_rows(organization: Organization, experts: Iterable[Expert]) -> list[dict[str, Any]]:
    """The catalog's cards for `experts` (one page of `catalog_experts`)."""
    included = set(
        MixtureSharedExpert.objects.filter(mixture__organization=organization).values_list("expert_id", flat=True)
    )
    return [
        {
            "expert": expert,
            "version": expert.active_version,
            "gap_closed": gap_closed_percent(expert.active_version),
            "included": expert.pk in included,
            "api_name": expert.api_name(organization),
        }
        for expert in experts
    ]


def member_rows(organization: Organization) -> list[dict[str, Any]]:
    return [
        {
            "expert": expert,
            "own": expert.organization_id == organization.pk,
            "api_name": expert.api_name(organization),
            "version": expert.active_version,
            "gap_closed": gap_closed_percent(expert.active_version),
        }
        for expert in services.member_experts(organization)
    ]


def _percent(value: Any) -> float:
    number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
    return round(max(0.0, min(1.0, number)) * 100, 1) if math.isfinite(number) else 0.0


def decision_view(organization: Organization, decision: dict[str, Any], threshold: float) -> dict[str, Any]:
    """The engine's routing decision with expert names: the chosen experts, and every candidate's score as a bar.

    A cosine is in [-1, 1]; the bar shows its positive part (a negative score is an empty bar, its number says so).
    """
    chosen_ids = [str(pair[0]) for pair in decision.get("experts") or [] if pair]
    score_ids = [str(pair[0]) for pair in decision.get("scores") or [] if pair]
    names = services.expert_by_engine_id(organization, [*chosen_ids, *score_ids])

    def label(engine_id: str) -> str:
        expert = names.get(engine_id)
        return expert.api_name(organization) if expert else engine_id

    chosen = [
        {"name": label(str(engine_id)), "weight": _percent(weight)}
        for engine_id, weight, *_ in decision.get("experts") or []
    ]
    chosen_set = set(chosen_ids)
    scores = [
        {
            "name": label(str(engine_id)),
            "score": float(score),
            "width": _percent(score),
            "chosen": str(engine_id) in chosen_set,
        }
        for engine_id, score, *_ in decision.get("scores") or []
    ]
    best = decision.get("best_score")
    return {
        "chosen": chosen,
        "scores": scores,
        "fallback": bool(decision.get("fallback")) or not chosen,
        "best_score": float(best) if isinstance(best, int | float) else None,
        "threshold": threshold,
        "threshold_width": _percent(threshold),
        "embed_ms": decision.get("embed_ms"),
        "score_ms": decision.get("score_ms"),
    }


# ---------------------------------------------------------------- usage


def usage_rows(organization: Organization, days: int = USAGE_DAYS) -> dict[str, Any]:
    """Requests and tokens of the org over the last `days` days, per bucket (the base, or one expert)."""
    since = timezone.localdate() - timedelta(days=days - 1)
    grouped = (
        UsageCounter.objects.for_org(organization)
        .filter(day__gte=since)
        .values("bucket", "expert__name", "expert__slug", "expert__organization__slug", "expert__organization_id")
        .annotate(requests=Sum("requests"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
        .order_by("-requests", "bucket")
    )
    rows = []
    for row in grouped:
        if row["bucket"] == "base":
            label = "base model"
        elif row["expert__name"] is None:
            label = "deleted expert"
        elif row["expert__organization_id"] == organization.pk:
            label = row["expert__slug"]
        else:
            label = f"{row['expert__organization__slug']}/{row['expert__slug']}"
        rows.append(
            {
                "label": label,
                "name": row["expert__name"] or "",
                "requests": int(row["requests"] or 0),
                "prompt_tokens": int(row["prompt"] or 0),
                "completion_tokens": int(row["completion"] or 0),
            }
        )
    return {
        "days": days,
        "since": since,
        "rows": rows,
        "requests": sum(row["requests"] for row in rows),
        "tokens": sum(row["prompt_tokens"] + row["completion_tokens"] for row in rows),
    }
