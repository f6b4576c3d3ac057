"""Which organization a request acts for, and the guards views use.

The current org is kept in the session; a user who is a member of several orgs switches it explicitly. Views
read `request.organization` and `request.membership` (set lazily by CurrentOrganizationMiddleware) and scope
every query with `Model.objects.for_org(request.organization)`, so another org's objects answer 404.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django_htmx.middleware import HtmxDetails

from webapp.tenants.models import Membership, Organization
from webapp.tenants.permissions import Perm

SESSION_KEY = "current_organization_id"


class TenantRequest(HttpRequest):
    """A request after the middleware: the membership and org are None for anonymous or org-less users."""

    membership: Membership | None
    organization: Organization | None
    htmx: HtmxDetails


class OrgRequest(HttpRequest):
    """A request inside an `org_member_required` view: a member of a current org."""

    membership: Membership
    organization: Organization
    htmx: HtmxDetails


def resolve_membership(request: HttpRequest) -> Membership | None:
    """The user's membership in the session's org, else their first org (and remember it)."""
    user = request.user
    if not user.is_authenticated:
        return None
    memberships = Membership.objects.select_related("organization").filter(user=user)
    wanted = request.session.get(SESSION_KEY)
    membership = None
    if wanted is not None:
        membership = memberships.filter(organization_id=wanted).first()
    if membership is None:
        membership = memberships.order_by("created_at", "id").first()
        if membership is not None:
            request.session[SESSION_KEY] = membership.organization_id
    return membership


def set_current_organization(request: HttpRequest, organization_id: int) -> None:
    request.session[SESSION_KEY] = organization_id


ViewFunc = Callable[..., HttpResponse]


def org_member_required(perm: Perm = Perm.VIEW_ORG) -> Callable[[ViewFunc], ViewFunc]:
    """Require a signed-in member of a current org whose role grants `perm` (403 otherwise).

    A signed-in user with no org is sent to create one; objects of other orgs are handled by scoping (404).
    """

    def decorator(view: ViewFunc) -> ViewFunc:
        @login_required
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            membership = getattr(request, "membership", None)
            if membership is None:
                return redirect("tenants:create")
            if not membership.allows(perm):
                raise PermissionDenied(f"Your role ({membership.get_role_display()}) cannot do this.")
            return view(request, *args, **kwargs)

        return wrapped

    return decorator
