"""Experts pages: the org's experts, one expert (card, metrics, samples, versions, sharing), its download, the
shared catalog, and the mixture (router settings and "try a query").

Views are thin: the rules live in `services`, what a page shows in `presenters`. The org's own experts are read
through `for_org`; another org's expert is visible only while it is shared (read-only), so any other id answers
404. htmx requests get a partial template, other requests the full page, so every page also works without
JavaScript.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from webapp.core.http import client_ip
from webapp.experts import engine, presenters, services
from webapp.experts.forms import MixtureForm, PublishForm, TryQueryForm
from webapp.experts.models import Expert, ExpertVersion
from webapp.tenants.current import OrgRequest, org_member_required
from webapp.tenants.models import AuditEvent, Organization
from webapp.tenants.permissions import Perm

EXPERTS_PER_PAGE = 50  # by name; the rest are a link away
CATALOG_PER_PAGE = 50  # by name; the rest are a link away


def _own_expert(request: OrgRequest, expert_id: int) -> Expert:
    """An expert of the current org (404 for any other id: changes are the owner org's alone)."""
    experts = Expert.objects.for_org(request.organization).select_related("organization", "active_version")
    return get_object_or_404(experts, pk=expert_id)


def _visible_expert(request: OrgRequest, expert_id: int) -> Expert:
    """An expert of the current org, or another org's shared one (read-only); 404 otherwise."""
    return get_object_or_404(services.visible_experts(request.organization), pk=expert_id)


# ---------------------------------------------------------------- the list and one expert


@org_member_required(Perm.USE_EXPERTS)
@require_GET
def expert_list(request: OrgRequest) -> HttpResponse:
    # The page's count, then one query for the page's experts with their active version; the catalog count last.
    experts = Expert.objects.for_org(request.organization).select_related("active_version").order_by("name", "pk")
    page = Paginator(experts, EXPERTS_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "rows": presenters.expert_rows(list(page.object_list)),
        "page": page,
        "catalog_count": services.shared_catalog(request.organization).count(),
    }
    return render(request, "experts/list.html", context)


@org_member_required(Perm.USE_EXPERTS)
@require_GET
def expert_detail(request: OrgRequest, expert_id: int) -> HttpResponse:
    expert = _visible_expert(request, expert_id)
    context = presenters.detail_context(expert, request.organization)
    version = expert.active_version
    recipe = version.recipe if version else "qa"
    examples = bool(((version.metrics or {}).get("qa") or {}).get("examples")) if version else False
    context["publish_form"] = PublishForm(
        initial={"share_samples": expert.share_samples}, recipe=recipe, has_examples=examples
    )
    return render(request, "experts/detail.html", context)


@org_member_required(Perm.USE_EXPERTS)
@require_GET
def expert_download(request: OrgRequest, expert_id: int) -> HttpResponse:
    """A zip of one version's files (the active one by default); another org gets the active version of a
    shared expert only, without the training samples unless the owner shared them."""
    expert = _visible_expert(request, expert_id)
    try:
        version = services.download_version(expert, request.organization, request.GET.get("version", ""))
    except services.ExpertError as error:
        raise Http404(str(error)) from None
    return zip_response(expert, version, request.organization)


def zip_response(expert: Expert, version: ExpertVersion, organization: Organization) -> StreamingHttpResponse:
    """The version's files as a streamed zip download (the page's and the API's)."""
    version.expert = expert  # iter_zip names the folder after the expert's slug: no second query
    response = StreamingHttpResponse(services.iter_zip(version, organization), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{expert.slug}-v{version.number}.zip"'
    return response


# ---------------------------------------------------------------- changes (the owner org)


@org_member_required(Perm.USE_EXPERTS)
@require_POST
def expert_status(request: OrgRequest, expert_id: int) -> HttpResponse:
    """Enable or disable: a disabled expert leaves the org's mixture (and every mixture that included it)."""
    expert = _own_expert(request, expert_id)
    status = request.POST.get("status", "")
    try:
        services.set_status(expert, status, user=request.user, ip_address=client_ip(request))
    except services.ExpertError as error:
        messages.error(request, str(error))
    else:
        if expert.is_active:
            messages.success(request, f"“{expert.name}” is enabled: the mixture routes to it again.")
        else:
            messages.success(request, f"“{expert.name}” is disabled: no mixture routes to it until you enable it.")
    return redirect("experts:detail", expert_id=expert.pk)


@org_member_required(Perm.USE_EXPERTS)
@require_POST
def expert_rollback(request: OrgRequest, expert_id: int, number: int) -> HttpResponse:
    """Serve version `number` again (the newer versions are kept, so this can be undone the same way)."""
    expert = _own_expert(request, expert_id)
    version = get_object_or_404(ExpertVersion.objects.filter(expert=expert), number=number)
    try:
        services.rollback(expert, version, user=request.user)
    except services.ExpertError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, f"Version {version.number} of “{expert.name}” is now the active one.")
    return redirect("experts:detail", expert_id=expert.pk)


@org_member_required(Perm.PUBLISH_EXPERTS)
@require_POST
def expert_publish(request: OrgRequest, expert_id: int) -> HttpResponse:
    expert = _own_expert(request, expert_id)
    if expert.active_version_id is None:
        messages.error(request, "This expert has no version to share.")
        return redirect("experts:detail", expert_id=expert.pk)
    share_samples = PublishForm(request.POST).flag()
    services.publish(expert, user=request.user, share_samples=share_samples)
    samples = " with its training samples" if share_samples else " (its training samples stay private)"
    messages.success(request, f"“{expert.name}” is in the shared catalog{samples}.")
    return redirect("experts:detail", expert_id=expert.pk)


@org_member_required(Perm.PUBLISH_EXPERTS)
@require_POST
def expert_withdraw(request: OrgRequest, expert_id: int) -> HttpResponse:
    expert = _own_expert(request, expert_id)
    services.withdraw(expert, user=request.user)
    messages.success(request, f"“{expert.name}” left the shared catalog and every other org's mixture.")
    return redirect("experts:detail", expert_id=expert.pk)


@org_member_required(Perm.USE_EXPERTS)
@require_http_methods(["GET", "POST"])
def expert_delete(request: OrgRequest, expert_id: int) -> HttpResponse:
    expert = _own_expert(request, expert_id)
    # Other orgs may route to a shared expert: an owner or admin withdraws it first (deleting is then local).
    blocked = expert.shared
    if request.method == "POST" and not blocked:
        name = expert.name
        services.delete_expert(expert, user=request.user)
        messages.success(request, f"Deleted the expert “{name}” and its stored versions. Its jobs keep their record.")
        return redirect("experts:list")
    return render(request, "experts/delete.html", {"expert": expert, "blocked": blocked})


# ---------------------------------------------------------------- the shared catalog


@org_member_required(Perm.USE_EXPERTS)
@require_GET
def catalog(request: OrgRequest) -> HttpResponse:
    experts = presenters.catalog_experts(request.organization)
    page = Paginator(experts, CATALOG_PER_PAGE).get_page(request.GET.get("page"))
    rows = presenters.catalog_rows(request.organization, list(page.object_list))
    return render(request, "experts/catalog.html", {"rows": rows, "page": page})


def _back(request: OrgRequest, default: str) -> HttpResponse:
    """Back to the page the form was on (a local path only), or `default`."""
    target = request.POST.get("next", "")
    # Django's own check: "/\evil.example" is read as "//evil.example" by browsers, which a prefix test misses.
    local = url_has_allowed_host_and_scheme(target, allowed_hosts=None, require_https=request.is_secure())
    if target.startswith("/") and local:
        return redirect(target)
    return redirect(default)


@org_member_required(Perm.USE_EXPERTS)
@require_POST
def catalog_include(request: OrgRequest, expert_id: int) -> HttpResponse:
    """Add another org's shared expert to this org's mixture (any expert not in the catalog: 404)."""
    expert = get_object_or_404(services.shared_catalog(request.organization), pk=expert_id)
    services.include_shared(request.organization, expert)
    messages.success(request, f"“{expert.api_name(request.organization)}” is in your mixture.")
    return _back(request, "experts:catalog")


@org_member_required(Perm.USE_EXPERTS)
@require_POST
def catalog_exclude(request: OrgRequest, expert_id: int) -> HttpResponse:
    # Excluding works even after the owner disabled it: the catalog no longer lists it, the membership row stays.
    expert = get_object_or_404(
        Expert.objects.filter(shared=True).exclude(organization=request.organization).select_related("organization"),
        pk=expert_id,
    )
    services.exclude_shared(request.organization, expert)
    messages.success(request, f"“{expert.api_name(request.organization)}” left your mixture.")
    return _back(request, "experts:catalog")


# ---------------------------------------------------------------- the mixture


def _mixture_page(request: OrgRequest, form: MixtureForm, **extra: Any) -> HttpResponse:
    context = {
        "form": form,
        "members": presenters.member_rows(request.organization),
        "try_form": extra.pop("try_form", None) or TryQueryForm(),
        **extra,
    }
    return render(request, "experts/mixture.html", context)


@org_member_required(Perm.USE_EXPERTS)
@require_http_methods(["GET", "POST"])
def mixture(request: OrgRequest) -> HttpResponse:
    current = services.mixture_for(request.organization)
    form = MixtureForm(request.POST or None, instance=current)
    if request.method == "POST":
        if form.is_valid():
            changed = list(form.changed_data)
            form.save()
            if changed:
                AuditEvent.record(
                    request.organization,
                    request.user,
                    AuditEvent.Action.ORG_UPDATED,
                    target="mixture",
                    detail={"object": "mixture", "fields": changed},
                    ip_address=client_ip(request),
                )
            messages.success(request, "Saved the router settings.")
            return redirect("experts:mixture")
        return _mixture_page(request, form)
    return _mixture_page(request, form)


def _decision(request: OrgRequest, query: str) -> dict[str, Any]:
    """The router's decision for `query`, or why there is none (no members, the engine down or refusing)."""
    mixture = services.mixture_for(request.organization)
    if not services.route_candidates(request.organization):
        return {"query": query, "empty": True}
    try:
        decision = engine.route(request.organization, query, mixture)
    except engine.EngineUnavailable as error:
        return {"query": query, "unavailable": str(error)}
    except engine.EngineRejected as error:
        return {"query": query, "rejected": str(error)}
    return {"query": query, **presenters.decision_view(request.organization, decision, mixture.threshold)}


@org_member_required(Perm.USE_EXPERTS)
@require_POST
def mixture_try(request: OrgRequest) -> HttpResponse:
    """The decision panel (htmx swaps it under the form), or the mixture page showing it."""
    try_form = TryQueryForm(request.POST)
    decision = _decision(request, try_form.cleaned_data["query"]) if try_form.is_valid() else None
    if request.htmx:
        return render(request, "experts/_decision.html", {"try_form": try_form, "decision": decision})
    form = MixtureForm(instance=services.mixture_for(request.organization))
    return _mixture_page(request, form, try_form=try_form, decision=decision)
