"""The top bar's count of unread notifications, and the usage card the org page shows."""

from __future__ import annotations

from typing import Any

from django import template

from webapp.jobs.models import Notification

register = template.Library()


@register.simple_tag(takes_context=True)
def unread_notification_count(context: Any) -> int:
    """The signed-in user's unread notifications in the current org (one indexed count)."""
    request = context.get("request")
    organization = getattr(request, "organization", None)
    if request is None or organization is None or not request.user.is_authenticated:
        return 0
    return Notification.objects.for_org(organization).filter(recipient=request.user, read_at__isnull=True).count()


@register.inclusion_tag("jobs/_usage.html", takes_context=True)
def org_usage(context: Any) -> dict[str, Any]:
    """The current org's compute hours against its monthly limit, active jobs and teacher tokens and cost."""
    from webapp.jobs.presenters import usage

    organization = getattr(context.get("request"), "organization", None)
    return {"usage": usage(organization) if organization is not None else None}
