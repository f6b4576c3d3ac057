"""Error pages that give back the database connection they used.

Under ASGI Django renders the page for an exception raised to an async layer (Http404, PermissionDenied,
SuspiciousOperation, any 500) with `sync_to_async(response_for_exception, thread_sensitive=False)`: on a
thread of the executor pool, not the request's thread. Our error pages extend the base template, whose
context (the signed-in user's organizations) queries the database, so that pool thread opens a connection of
its own. Django closes connections when a request starts and finishes, on the request's thread only: the pool
thread's connection would stay open for the life of the process, ignore CONN_MAX_AGE, go stale when the
database restarts (and the next error page rendered there would fail with a 500 of its own), and block
dropping a test database. Each handler here renders Django's default page, then closes the connections its
thread opened, unless they are inside a transaction (a test's atomic block, or a view's own transaction).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.views import defaults


def _releasing(page: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """`page`, then the connections its thread opened closed (outside a transaction)."""

    @wraps(page)  # keeps the signature Django's URL checks inspect
    def handler(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = page(request, *args, **kwargs)
        for connection in connections.all(initialized_only=True):
            if not connection.in_atomic_block:
                connection.close()
        return response

    return handler


bad_request = _releasing(defaults.bad_request)
permission_denied = _releasing(defaults.permission_denied)
page_not_found = _releasing(defaults.page_not_found)
server_error = _releasing(defaults.server_error)
