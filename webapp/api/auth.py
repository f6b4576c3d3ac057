"""Bearer-token authentication for the REST API, with OpenAI-style JSON errors."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

import redis
from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from webapp.tenants.models import ApiToken, Organization

logger = logging.getLogger(__name__)


class ApiRequest(HttpRequest):
    api_token: ApiToken
    organization: Organization


def api_error(message: str, *, status: int, error_type: str, code: str | None = None) -> JsonResponse:
    """The error shape of OpenAI's API, so the official clients raise readable exceptions."""
    return JsonResponse({"error": {"message": message, "type": error_type, "param": None, "code": code}}, status=status)


def invalid(message: str, code: str = "invalid") -> JsonResponse:
    """A 400 whose message says what to change."""
    return api_error(message, status=400, error_type="invalid_request_error", code=code)


def not_found(what: str = "object") -> JsonResponse:
    return api_error(f"No such {what}.", status=404, error_type="invalid_request_error", code="not_found")


ApiView = Callable[..., HttpResponseBase]

# What a models-only token reaches: the OpenAI-compatible routes (`webapp/api/openai_urls.py`). Every other route,
# present or added later, needs a full-access token.
MODELS_NAMESPACES = frozenset({"openai"})


def authenticate_request(request: HttpRequest) -> JsonResponse | None:
    """Check `Authorization: Bearer dst_…` and set `request.api_token` / `request.organization`.

    None when the request may go on; otherwise the answer: 401 (no token, or a bad one), 403 (a models-only token
    off the OpenAI-compatible routes) or 429 (past the org's rate limit).
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
    limited = rate_limited(token.organization)
    if limited is not None:
        return limited
    request.api_token = token  # type: ignore[attr-defined]
    request.organization = token.organization  # type: ignore[attr-defined]
    return None


def rate_limited(organization: Organization) -> JsonResponse | None:
    """At most API_RATE_LIMIT_PER_MINUTE requests per org per calendar minute, over both APIs (one Redis INCR a
    request): the 429 to answer past it, with Retry-After."""
    limit = int(settings.API_RATE_LIMIT_PER_MINUTE)
    if limit <= 0:
        return None
    now = time.time()
    window = int(now // 60)
    key = f"api-rate:{organization.pk}:{window}"
    try:
        if cache.add(key, 1, timeout=120):
            count = 1
        else:
            try:
                count = cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.set(key, 1, timeout=120)
                count = 1
    except redis.RedisError as error:  # Redis away: serve unmetered (logged) rather than answer 500
        logger.warning("API rate limit skipped: the cache is unavailable (%s)", error)
        return None
    if count <= limit:
        return None
    retry_after = max(1, math.ceil((window + 1) * 60 - now))
    response = api_error(
        f"Rate limit reached: {limit} requests per minute for this organization. Retry in {retry_after} s.",
        status=429,
        error_type="rate_limit_error",
        code="rate_limit_exceeded",
    )
    response["Retry-After"] = str(retry_after)
    return response


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
