"""Content-Security-Policy on every response, from the CONTENT_SECURITY_POLICY setting.

Django 5.2 has no CSP of its own. The setting has the shape of Django 6.0's ``SECURE_CSP`` (directive → list
of sources), so moving to ``django.middleware.csp.ContentSecurityPolicyMiddleware`` is a rename when the
project upgrades; this module can go then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from django.conf import settings
from django.http import HttpRequest, HttpResponse

HEADER = "Content-Security-Policy"


def build_policy(directives: Mapping[str, Sequence[str]]) -> str:
    return "; ".join(" ".join([name, *sources]) for name, sources in directives.items())


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        # Built once per process: the policy does not vary by request (no nonces: the pages have no inline script).
        self.policy = build_policy(settings.CONTENT_SECURITY_POLICY)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        # A view that needs another policy sets its own header; an empty setting sends none.
        if self.policy and HEADER not in response:
            response[HEADER] = self.policy
        return response
