"""Sign-ins and sign-outs go to the audit log of every org the user belongs to."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from webapp.core.http import client_ip
from webapp.tenants.models import AuditEvent, Organization


def _record_for_user_orgs(user: Any, action: AuditEvent.Action, request: Any) -> None:
    ip = client_ip(request) if request is not None else None
    for org in Organization.objects.filter(memberships__user=user):
        AuditEvent.record(org, user, action, target=user.get_username(), ip_address=ip)


@receiver(user_logged_in)
def _audit_login(sender: Any, request: Any, user: Any, **_: Any) -> None:
    _record_for_user_orgs(user, AuditEvent.Action.LOGIN, request)


@receiver(user_logged_out)
def _audit_logout(sender: Any, request: Any, user: Any, **_: Any) -> None:
    if user is not None:
        _record_for_user_orgs(user, AuditEvent.Action.LOGOUT, request)


@receiver(user_login_failed)
def _audit_failed_login(sender: Any, credentials: dict[str, Any], request: Any = None, **_: Any) -> None:
    # No org: the attempted name may not exist. Staff see these in the admin.
    AuditEvent.record(
        None,
        None,
        AuditEvent.Action.LOGIN_FAILED,
        target=str(credentials.get("username", ""))[:150],
        ip_address=client_ip(request) if request is not None else None,
    )
