"""REST API v1 (token-authenticated). Every lookup is scoped to the token's org: others answer 404."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.http import require_GET

from webapp.api.auth import ApiRequest, api_token_required, not_found
from webapp.tenants.models import ApiToken


def _token_json(token: ApiToken) -> dict[str, object]:
    return {
        "id": token.pk,
        "object": "api_token",
        "name": token.name,
        "prefix": token.display_prefix,
        "scope": token.scope,
        "created_at": int(token.created_at.timestamp()),
        "last_used_at": int(token.last_used_at.timestamp()) if token.last_used_at else None,
        "revoked": token.revoked_at is not None,
    }


@require_GET
@api_token_required
def organization(request: ApiRequest) -> JsonResponse:
    org = request.organization
    return JsonResponse(
        {
            "object": "organization",
            "id": org.pk,
            "slug": org.slug,
            "name": org.name,
            "members": org.memberships.count(),
        }
    )


@require_GET
@api_token_required
def token_list(request: ApiRequest) -> JsonResponse:
    tokens = ApiToken.objects.for_org(request.organization)
    return JsonResponse({"object": "list", "data": [_token_json(token) for token in tokens]})


@require_GET
@api_token_required
def token_detail(request: ApiRequest, token_id: int) -> JsonResponse:
    token = ApiToken.objects.for_org(request.organization).filter(pk=token_id).first()
    if token is None:
        return not_found("API token")
    return JsonResponse(_token_json(token))
