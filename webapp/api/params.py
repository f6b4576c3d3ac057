"""Reading what a REST request sends: its JSON object body, and OpenAI-style list paging (`limit`, `after`)."""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse

from webapp.api.auth import invalid

MAX_PAGE = 200


def json_object(request: HttpRequest) -> dict[str, Any] | JsonResponse:
    """The body as a JSON object, or the 400 to answer (never Django's HTML error page)."""
    try:
        body = json.loads(request.body or b"{}")
    except RequestDataTooBig:  # over DATA_UPLOAD_MAX_MEMORY_SIZE
        return invalid("The request body is too large.")
    except ValueError:
        return invalid("The body must be a JSON object.")
    if not isinstance(body, dict):
        return invalid("The body must be a JSON object.")
    return body


def page(request: HttpRequest, what: str) -> tuple[int, int | None] | JsonResponse:
    """`limit` rows (1–200, default 200) older than the `what` with id `after`; or the 400 to answer."""

    def whole(value: str) -> int | None:
        # isascii: str.isdigit() also takes "²", which int() refuses; 18 digits fit a bigint id.
        return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else None

    limit, after = request.GET.get("limit"), request.GET.get("after")
    size = whole(limit) if limit is not None else MAX_PAGE
    if size is None or not 1 <= size <= MAX_PAGE:
        return invalid(f"limit: must be a whole number from 1 to {MAX_PAGE}.")
    cursor = whole(after) if after is not None else None
    if after is not None and cursor is None:
        return invalid(f"after: must be a {what}'s id (the last `id` of the previous page).")
    return size, cursor
