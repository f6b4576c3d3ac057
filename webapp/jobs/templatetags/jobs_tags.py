"""The top bar's count of unread notifications (the base layout loads it on every page)."""

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
