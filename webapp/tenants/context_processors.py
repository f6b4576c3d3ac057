from __future__ import annotations

from django.http import HttpRequest

from webapp.tenants.models import Membership
from webapp.tenants.permissions import PERMISSIONS


def current_organization(request: HttpRequest) -> dict[str, object]:
    """Template context for the navigation: current org, the user's other orgs and what their role may do."""
    membership = getattr(request, "membership", None)
    if membership is None:
        return {"current_org": None, "current_membership": None, "user_memberships": [], "can": {}}
    role = membership.role
    return {
        "current_org": membership.organization,
        "current_membership": membership,
        "user_memberships": Membership.objects.filter(user=request.user).select_related("organization"),
        # {"tokens_manage": True, ...}: templates hide what the role cannot use (the views still enforce it).
        "can": {perm.value.replace(".", "_"): role in roles for perm, roles in PERMISSIONS.items()},
    }
