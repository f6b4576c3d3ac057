"""REST API for experts: list, inspect, download (PEFT zip), enable or disable, choose the version served, share
in the catalog (with or without the samples), delete.

    curl -H "Authorization: Bearer $TOKEN" https://host/api/v1/experts
    curl -H "Authorization: Bearer $TOKEN" -o expert.zip https://host/api/v1/experts/3/download
    curl -H "Authorization: Bearer $TOKEN" -X PATCH -H "Content-Type: application/json" \\
         -d '{"status": "disabled"}' https://host/api/v1/experts/3

An org sees its own experts and the ones other orgs shared (read-only, active version only, and without the
example answers unless their owner shared the samples); any other id answers 404, and so does a change to an
expert of another org. `model` is the name the chat API takes.
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_http_methods

from webapp.api.auth import ApiRequest, api_error, api_token_required, invalid, not_found
from webapp.core.http import client_ip
from webapp.core.times import unix_time
from webapp.experts import presenters, services
from webapp.experts.models import Expert, ExpertVersion, MixtureSharedExpert
from webapp.experts.views import zip_response
from webapp.tenants.models import Organization

CHANGEABLE_FIELDS = frozenset({"status", "active_version", "shared", "share_samples"})


def version_json(version: ExpertVersion, viewer: Organization, *, active: bool, own: bool) -> dict[str, Any]:
    view = None if own else services.public_view(version, viewer)
    data: dict[str, Any] = {
        "number": version.number,
        "active": active,
        "recipe": version.recipe,
        "teacher": version.teacher_label,
        "base": {"spec": version.base_spec, "content_hash": version.base_hash},
        "gap_closed": presenters.gap_closed_percent(version),
        "metrics": view.metrics(version.metrics) if view else version.metrics or {},
        "size_bytes": version.size_bytes,
        "created_at": unix_time(version.created_at),
    }
    if own:  # jobs are the owner org's alone
        data["job"] = version.job_id
    return data


def expert_json(expert: Expert, viewer: Organization, *, in_mixture: bool, detail: bool = False) -> dict[str, Any]:
    own = expert.organization_id == viewer.pk
    data: dict[str, Any] = {
        "object": "expert",
        "id": expert.pk,
        "name": expert.name,
        "model": expert.api_name(viewer),
        "owned_by": expert.organization.slug,
        "own": own,
        "description": expert.description,
        "status": expert.status,
        "shared": expert.shared if own else True,
        "in_mixture": in_mixture,
        "active_version": expert.active_version.number if expert.active_version else None,
        "gap_closed": presenters.gap_closed_percent(expert.active_version),
        "created_at": unix_time(expert.created_at),
    }
    if detail:
        samples = services.can_see_samples(expert, viewer)
        versions = list(expert.versions.all()) if own else [v for v in [expert.active_version] if v is not None]
        data["samples_shared"] = samples
        data["versions"] = [
            version_json(version, viewer, active=version.pk == expert.active_version_id, own=own)
            for version in versions
        ]
    return data


def _mixture_ids(organization: Organization) -> set[int]:
    return {expert.pk for expert in services.member_experts(organization)}


def _visible(request: ApiRequest, expert_id: int) -> Expert | None:
    return services.visible_experts(request.organization).filter(pk=expert_id).first()


@require_GET
@api_token_required
def expert_list(request: ApiRequest) -> JsonResponse:
    """The org's own experts, then the shared catalog's (`own` tells them apart)."""
    viewer = request.organization
    own = list(Expert.objects.for_org(viewer).select_related("organization", "active_version"))
    shared = list(services.shared_catalog(viewer).order_by("name"))
    members = _mixture_ids(viewer)
    data = [expert_json(expert, viewer, in_mixture=expert.pk in members) for expert in own + shared]
    return JsonResponse({"object": "list", "data": data})


@require_http_methods(["GET", "PATCH", "DELETE"])
@api_token_required
def expert_detail(request: ApiRequest, expert_id: int) -> JsonResponse:
    expert = _visible(request, expert_id)
    own = expert is not None and expert.organization_id == request.organization.pk
    if expert is None or (request.method != "GET" and not own):  # changes are the owner org's alone
        return not_found("expert")
    if request.method == "DELETE":
        if expert.shared:  # other orgs may route to it: withdrawing first makes deleting a local matter
            return api_error(
                'This expert is shared: withdraw it first (PATCH {"shared": false}); other organizations may '
                "route to it.",
                status=409,
                error_type="invalid_request_error",
                code="expert_shared",
            )
        services.delete_expert(expert, user=request.api_token.created_by)
        return JsonResponse({"object": "expert", "id": expert_id, "deleted": True})
    if request.method == "PATCH":
        refused = _change(request, expert)  # on success, `expert` holds the changes
        if refused is not None:
            return refused
    if own:
        in_mixture = expert.servable
    else:
        in_mixture = MixtureSharedExpert.objects.filter(
            mixture__organization=request.organization, expert=expert
        ).exists()
    return JsonResponse(expert_json(expert, request.organization, in_mixture=in_mixture, detail=True))


def _change(request: ApiRequest, expert: Expert) -> JsonResponse | None:
    """Apply the JSON body's changes, all checked before any is made; the 400 to answer when one cannot be."""
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return invalid("The body must be a JSON object.")
    changeable = ", ".join(sorted(CHANGEABLE_FIELDS))
    if not isinstance(body, dict) or not body:
        return invalid(f"The body must be a JSON object with any of {changeable}.")
    unknown = sorted(set(body) - CHANGEABLE_FIELDS)
    if unknown:
        return invalid(f"unknown field(s) {', '.join(unknown)}; changeable: {changeable}.")
    version = None
    if "active_version" in body:
        number = body["active_version"]
        if isinstance(number, bool) or not isinstance(number, int):
            return invalid("active_version: must be a version number.")
        version = expert.versions.filter(number=number).first()
        if version is None:
            return invalid(f"active_version: this expert has no version {number}.")
    status = body.get("status")
    if "status" in body and status not in Expert.Status.values:
        return invalid(f"status: must be {' or '.join(Expert.Status.values)}.")
    for flag in ("shared", "share_samples"):
        if flag in body and not isinstance(body[flag], bool):
            return invalid(f"{flag}: must be true or false.")
    shared = body.get("shared", expert.shared)
    if shared and not expert.shared and expert.active_version_id is None and version is None:
        return invalid("shared: this expert has no version to share.")
    if body.get("share_samples") and not shared:
        return invalid('share_samples: only a shared expert shares its samples (set "shared": true too).')
    user = request.api_token.created_by
    if status is not None and status != expert.status:
        services.set_status(expert, status, user=user, ip_address=client_ip(request))
    if version is not None and version.pk != expert.active_version_id:
        services.rollback(expert, version, user=user)
    share_samples = body.get("share_samples", expert.share_samples)
    if shared and (not expert.shared or share_samples != expert.share_samples):
        services.publish(expert, user=user, share_samples=share_samples)
    elif not shared and expert.shared:
        services.withdraw(expert, user=user)
    return None


@require_GET
@api_token_required
def expert_download(request: ApiRequest, expert_id: int) -> HttpResponse:
    """The PEFT adapter and its files as a zip: `?version=N` (the owner's any version), else the active one."""
    expert = _visible(request, expert_id)
    if expert is None:
        return not_found("expert")
    try:
        version = services.download_version(expert, request.organization, request.GET.get("version", ""))
    except services.ExpertError as error:
        return api_error(str(error), status=404, error_type="invalid_request_error", code="not_found")
    return zip_response(expert, version, request.organization)
