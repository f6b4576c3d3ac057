"""The org page's card of requests and tokens per expert over the last 30 days."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.inclusion_tag("experts/_usage.html", takes_context=True)
def expert_usage(context: Any) -> dict[str, Any]:
    """The current org's usage per bucket (base model or one expert), from the daily counters."""
    from webapp.experts.presenters import usage_rows

    organization = getattr(context.get("request"), "organization", None)
    return {"expert_usage": usage_rows(organization) if organization is not None else None}
