from __future__ import annotations

from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str | None:
    """The peer address for the audit log.

    REMOTE_ADDR only: X-Forwarded-For is client-controlled unless a trusted proxy rewrites it, and the
    deployment's proxy (if any) is expected to set REMOTE_ADDR correctly (e.g. uvicorn --proxy-headers).
    """
    return request.META.get("REMOTE_ADDR") or None
