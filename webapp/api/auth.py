"""Bearer-token authentication for the REST API, with OpenAI-style JSON errors."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from webapp.tenants.models import ApiToken, Organization


class ApiRequest(HttpRequest):
    api_token: ApiToken
    organization: Organization


def api_error(message: str, *, status: int, error_type: str, code: str | None = None) -> JsonResponse:
    """The error shape of OpenAI's API, so the official clients raise readable exceptions."""
    return JsonResponse({"error": {"message": message, "type": error_type, "param": None, "code": code}}, status=status)


def not_found(what: str = "object") -> JsonResponse:
    return api_error(f"No such {what}.", status=404, error_type="invalid_request_error", code="not_found")


ApiView = Callable[..., HttpResponseBase]

# What a models-only token reaches: the OpenAI-compatible routes (`webapp/api/openai_urls.py`). Every other route,
# present or added later, needs a full-access token.
MODELS_NAMESPACES = frozenset({"openai"})


def authenticate_request(request: HttpRequest) -> JsonResponse | None:
    """Check `Authorization: Bearer dst_…` and set `request.api_token` / `request.organization`.

    None when the token is good; otherwise the 401 to answer.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, plaintext = header.partition(" ")
    if scheme.lower() != "bearer" or not plaintext.strip():
        return api_error(
            "Missing API token: send `Authorization: Bearer <token>` (create one under Org → API tokens).",
            status=401,
            error_type="authentication_error",
            code="missing_api_key",
        )
    token = ApiToken.authenticate(plaintext.strip())
    if token is None:
        return api_error(
            "Invalid or revoked API token.",
            status=401,
            error_type="authentication_error",
            code="invalid_api_key",
        )
    match = request.resolver_match
    if token.scope != ApiToken.Scope.FULL and (match is None or match.namespace not in MODELS_NAMESPACES):
        return api_error(
            "This token may only call the OpenAI-compatible API (/v1/): create a token with full access for the "
            "REST API.",
            status=403,
            error_type="permission_error",
            code="insufficient_scope",
        )
    request.api_token = token  # type: ignore[attr-defined]
    request.organization = token.organization  # type: ignore[attr-defined]
    return None


def api_token_required(view: ApiView) -> ApiView:
    """Authenticate `Authorization: Bearer dst_…`; the token's org becomes `request.organization`.

    Token requests carry no cookies, so CSRF does not apply (csrf_exempt); a browser session is not accepted
    here, which keeps the API from being driven cross-site.
    """

    @csrf_exempt
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        refused = authenticate_request(request)
        if refused is not None:
            return refused
        return view(request, *args, **kwargs)

    return wrapped
