"""Organization pages: create, switch, settings, members, API tokens, audit log.

Every view works on the current org only (request.organization) and looks objects up through
`for_org(...)`, so an id from another org answers 404. Role checks raise 403 via `org_member_required`.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from webapp.core.http import client_ip
from webapp.tenants import services
from webapp.tenants.current import OrgRequest, org_member_required, set_current_organization
from webapp.tenants.forms import (
    AddMemberForm,
    ApiTokenForm,
    DeleteOrganizationForm,
    OrganizationForm,
    QuotaForm,
    RoleForm,
)
from webapp.tenants.models import ApiToken, AuditEvent, Membership, Organization
from webapp.tenants.permissions import Perm


# ------------------------------------------------------------------ organizations
@login_required
@require_http_methods(["GET", "POST"])
def create_organization(request: HttpRequest) -> HttpResponse:
    form = OrganizationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        org = Organization.create_with_owner(name=form.cleaned_data["name"], owner=request.user)
        set_current_organization(request, org.pk)
        messages.success(request, f"Created {org.name}. You are its owner.")
        return redirect("tenants:settings")
    return render(request, "tenants/create.html", {"form": form})


@login_required
@require_POST
def switch_organization(request: HttpRequest) -> HttpResponse:
    # Only orgs the user belongs to: any other id is a 404, whether or not the org exists.
    membership = get_object_or_404(Membership, user=request.user, organization_id=request.POST.get("organization"))
    set_current_organization(request, membership.organization_id)
    messages.success(request, f"Now working in {membership.organization.name}.")
    return redirect("core:home")


@org_member_required(Perm.VIEW_ORG)
@require_http_methods(["GET", "POST"])
def organization_settings(request: OrgRequest) -> HttpResponse:
    org = request.organization
    membership = request.membership
    form = OrganizationForm(instance=org, prefix="org")
    quota_form = QuotaForm(instance=org, prefix="quota")
    if request.method == "POST":
        section = request.POST.get("section")
        perm = Perm.MANAGE_QUOTAS if section == "quota" else Perm.CHANGE_ORG
        if not membership.allows(perm):
            return render(request, "403.html", status=403)
        bound = (QuotaForm if section == "quota" else OrganizationForm)(
            request.POST, instance=org, prefix="quota" if section == "quota" else "org"
        )
        if bound.is_valid():
            bound.save()
            AuditEvent.record(
                org,
                request.user,
                AuditEvent.Action.ORG_UPDATED,
                target=org.name,
                detail={key: str(bound.cleaned_data[key]) for key in bound.changed_data},
                ip_address=client_ip(request),
            )
            messages.success(request, "Saved.")
            return redirect("tenants:settings")
        if section == "quota":
            quota_form = bound
        else:
            form = bound
    context = {
        "form": form,
        "quota_form": quota_form,
        "delete_form": DeleteOrganizationForm(organization=org),
    }
    return render(request, "tenants/settings.html", context)


@org_member_required(Perm.DELETE_ORG)
@require_POST
def delete_organization(request: OrgRequest) -> HttpResponse:
    org = request.organization
    form = DeleteOrganizationForm(request.POST, organization=org)
    if not form.is_valid():
        messages.error(request, "Not deleted: type the organization's exact name to confirm.")
        return redirect("tenants:settings")
    services.delete_organization(actor=request.user, org=org, ip=client_ip(request))
    messages.success(request, f"Deleted {org.name} and everything it owned.")
    return redirect("core:home")


# ------------------------------------------------------------------ members
@org_member_required(Perm.VIEW_MEMBERS)
@require_http_methods(["GET", "POST"])
def members(request: OrgRequest) -> HttpResponse:
    org = request.organization
    actor = request.membership
    form = AddMemberForm(request.POST or None)
    if request.method == "POST":
        if not actor.allows(Perm.MANAGE_MEMBERS):
            return render(request, "403.html", status=403)
        if form.is_valid():
            try:
                added = services.add_member(actor=actor, ip=client_ip(request), **form.cleaned_data)
            except services.MembershipError as error:
                form.add_error("identifier", str(error))
            else:
                messages.success(request, f"Added {added.user.get_username()} as {added.get_role_display()}.")
                return redirect("tenants:members")
    memberships = Membership.objects.for_org(org).select_related("user")
    return render(request, "tenants/members.html", {"form": form, "memberships": memberships})


@org_member_required(Perm.MANAGE_MEMBERS)
@require_POST
def change_member_role(request: OrgRequest, membership_id: int) -> HttpResponse:
    target = get_object_or_404(Membership.objects.for_org(request.organization), pk=membership_id)
    form = RoleForm(request.POST)
    error = None
    if form.is_valid():
        try:
            services.change_role(
                actor=request.membership,
                target=target,
                role=form.cleaned_data["role"],
                ip=client_ip(request),
            )
        except services.MembershipError as exc:
            error = str(exc)
            target.refresh_from_db()
    else:
        error = "Choose a valid role."
    if request.htmx:
        # htmx swaps just this member's row; the status stays 200 so htmx performs the swap.
        return render(request, "tenants/_member_row.html", {"membership": target, "row_error": error})
    if error:
        messages.error(request, error)
    else:
        messages.success(request, f"{target.user.get_username()} is now {target.get_role_display()}.")
    return redirect("tenants:members")


@org_member_required(Perm.VIEW_MEMBERS)
@require_POST
def remove_member(request: OrgRequest, membership_id: int) -> HttpResponse:
    target = get_object_or_404(Membership.objects.for_org(request.organization), pk=membership_id)
    actor = request.membership
    if target.pk != actor.pk and not actor.allows(Perm.MANAGE_MEMBERS):
        return render(request, "403.html", status=403)
    try:
        services.remove_member(actor=actor, target=target, ip=client_ip(request))
    except services.MembershipError as error:
        messages.error(request, str(error))
        return redirect("tenants:members")
    if target.pk == actor.pk:
        messages.success(request, f"You left {target.organization.name}.")
        return redirect("core:home")
    messages.success(request, f"Removed {target.user.get_username()}.")
    return redirect("tenants:members")


# ------------------------------------------------------------------ API tokens
@org_member_required(Perm.MANAGE_TOKENS)
@require_http_methods(["GET", "POST"])
def api_tokens(request: OrgRequest) -> HttpResponse:
    org = request.organization
    form = ApiTokenForm(request.POST or None)
    new_plaintext = None
    if request.method == "POST" and form.is_valid():
        _, new_plaintext = ApiToken.issue(
            organization=org, name=form.cleaned_data["name"], created_by=request.user, scope=form.cleaned_data["scope"]
        )
        form = ApiTokenForm()
    # Queries: the org's tokens with their creators in one join.
    tokens = ApiToken.objects.for_org(org).select_related("created_by")
    context = {"form": form, "tokens": tokens, "new_plaintext": new_plaintext}
    # The plaintext is rendered in this response only; it is never stored nor shown again.
    template = "tenants/_tokens.html" if request.htmx else "tenants/tokens.html"
    return render(request, template, context)


@org_member_required(Perm.MANAGE_TOKENS)
@require_POST
def revoke_api_token(request: OrgRequest, token_id: int) -> HttpResponse:
    token = get_object_or_404(ApiToken.objects.for_org(request.organization), pk=token_id)
    token.revoke(by=request.user)
    messages.success(request, f"Revoked “{token.name}”. Clients using it are refused from now on.")
    return redirect("tenants:tokens")


# ------------------------------------------------------------------ audit log
@org_member_required(Perm.VIEW_AUDIT_LOG)
def audit_log(request: OrgRequest) -> HttpResponse:
    events = AuditEvent.objects.for_org(request.organization)
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    return render(request, "tenants/audit.html", {"page": page})
