from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from webapp.core.health import run_checks
from webapp.tenants.current import TenantRequest


def home(request: TenantRequest) -> HttpResponse:
    return render(request, "core/home.html")


@staff_member_required
@never_cache
def health(request: HttpRequest) -> HttpResponse:
    report = run_checks()
    template = "core/_health_checks.html" if request.htmx else "core/health.html"  # type: ignore[attr-defined]
    return render(request, template, {"report": report}, status=200 if report.ok else 503)


@never_cache
def health_json(request: HttpRequest) -> JsonResponse:
    """For load balancers and monitors: 200 or 503. Details only for staff (they name hosts)."""
    report = run_checks()
    status = 200 if report.ok else 503
    if request.user.is_authenticated and request.user.is_staff:
        return JsonResponse(report.as_dict(), status=status)
    return JsonResponse({"status": report.as_dict()["status"]}, status=status)
