"""Webhook pages of the current org: endpoints, their deliveries, test events and redelivery.

Owners and admins only (Perm.MANAGE_WEBHOOKS). Every object is looked up through `for_org(...)`, so another
org's endpoint or delivery answers 404.
"""

from __future__ import annotations

import json
from datetime import timedelta

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import OuterRef, Subquery
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from webapp.core.http import client_ip
from webapp.tenants.current import OrgRequest, org_member_required
from webapp.tenants.models import AuditEvent
from webapp.tenants.permissions import Perm
from webapp.webhooks import services
from webapp.webhooks.forms import EndpointForm
from webapp.webhooks.models import WebhookDelivery, WebhookEndpoint
from webapp.webhooks.sender import USER_AGENT

DELIVERIES_PER_PAGE = 25
# The deliveries table re-fetches itself while an attempt is due this soon (or in flight), so a test event's
# outcome appears without a reload.
LIVE_WINDOW = timedelta(seconds=30)


def _endpoint(request: OrgRequest, endpoint_id: int) -> WebhookEndpoint:
    return get_object_or_404(WebhookEndpoint.objects.for_org(request.organization), pk=endpoint_id)


def _audit(request: OrgRequest, action: AuditEvent.Action, endpoint: WebhookEndpoint, **detail: object) -> None:
    AuditEvent.record(
        request.organization, request.user, action, target=endpoint.url, detail=detail, ip_address=client_ip(request)
    )


@org_member_required(Perm.MANAGE_WEBHOOKS)
@require_http_methods(["GET", "POST"])
def endpoint_list(request: OrgRequest) -> HttpResponse:
    form = EndpointForm(request.POST or None)
    new_secret = None
    created = None
    if request.method == "POST" and form.is_valid():
        created, new_secret = WebhookEndpoint.create(
            organization=request.organization,
            url=form.cleaned_data["url"],
            description=form.cleaned_data["description"],
            events=form.cleaned_data["events"],
            created_by=request.user,
        )
        _audit(request, AuditEvent.Action.WEBHOOK_CREATED, created, events=created.events)
        form = EndpointForm()
    # Queries: the org's endpoints with the id of each one's latest delivery (a subquery), then those deliveries.
    latest_delivery = WebhookDelivery.objects.filter(endpoint=OuterRef("pk")).order_by("-created_at", "-id")
    endpoints = list(
        WebhookEndpoint.objects.for_org(request.organization).annotate(
            latest_delivery_id=Subquery(latest_delivery.values("pk")[:1])
        )
    )
    latest = WebhookDelivery.objects.in_bulk([e.latest_delivery_id for e in endpoints if e.latest_delivery_id])
    rows = [(endpoint, latest.get(endpoint.latest_delivery_id)) for endpoint in endpoints]
    context = {"form": form, "rows": rows, "new_secret": new_secret, "created": created}
    # The secret is rendered in this response only; it can be rolled on the endpoint's page, never read back.
    template = "webhooks/_endpoints.html" if request.htmx else "webhooks/list.html"
    return render(request, template, context)


def _detail_context(
    request: OrgRequest, endpoint: WebhookEndpoint, form: EndpointForm | None = None, new_secret: str | None = None
) -> dict[str, object]:
    deliveries = endpoint.deliveries.all()
    # An attempt in flight has pushed its delivery's next attempt one lease ahead: that counts as soon too.
    soon = timezone.now() + LIVE_WINDOW + services.attempt_lease()
    live = deliveries.filter(status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=soon).exists()
    return {
        "endpoint": endpoint,
        "form": form or EndpointForm(instance=endpoint),
        "page": Paginator(deliveries, DELIVERIES_PER_PAGE).get_page(request.GET.get("page")),
        "live": live,
        "new_secret": new_secret,
    }


@org_member_required(Perm.MANAGE_WEBHOOKS)
@require_http_methods(["GET", "POST"])
def endpoint_detail(request: OrgRequest, endpoint_id: int) -> HttpResponse:
    endpoint = _endpoint(request, endpoint_id)
    form = None
    if request.method == "POST":
        form = EndpointForm(request.POST, instance=endpoint)
        if form.is_valid():
            changed = list(form.changed_data)
            form.save()
            _audit(request, AuditEvent.Action.WEBHOOK_CHANGED, endpoint, changed=changed)
            messages.success(request, "Saved.")
            return redirect("webhooks:detail", endpoint.pk)
    context = _detail_context(request, endpoint, form)
    if request.htmx and request.method == "GET":
        return render(request, "webhooks/_deliveries.html", context)
    return render(request, "webhooks/detail.html", context)


@org_member_required(Perm.MANAGE_WEBHOOKS)
@require_POST
def send_test(request: OrgRequest, endpoint_id: int) -> HttpResponse:
    endpoint = _endpoint(request, endpoint_id)
    try:
        services.send_test_event(endpoint, request.user.get_username())
    except services.WebhookError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, "Sent a test event (ping). Its outcome appears below in a few seconds.")
    return redirect("webhooks:detail", endpoint.pk)


@org_member_required(Perm.MANAGE_WEBHOOKS)
@require_POST
def roll_secret(request: OrgRequest, endpoint_id: int) -> HttpResponse:
    endpoint = _endpoint(request, endpoint_id)
    secret = endpoint.roll_secret()
    _audit(request, AuditEvent.Action.WEBHOOK_CHANGED, endpoint, changed=["secret"])
    # Rendered once, like a new token; a redirect would have to store it somewhere to show it.
    context = _detail_context(request, endpoint, new_secret=secret)
    return render(request, "webhooks/detail.html", context)


@org_member_required(Perm.MANAGE_WEBHOOKS)
@require_POST
def toggle(request: OrgRequest, endpoint_id: int) -> HttpResponse:
    endpoint = _endpoint(request, endpoint_id)
    endpoint.set_active(not endpoint.is_active)
    endpoint.save(update_fields=endpoint.ACTIVATION_FIELDS)
    _audit(request, AuditEvent.Action.WEBHOOK_CHANGED, endpoint, is_active=endpoint.is_active)
    messages.success(request, "Enabled: events are sent again." if endpoint.is_active else "Disabled: no events.")
    return redirect("webhooks:detail", endpoint.pk)


@org_member_required(Perm.MANAGE_WEBHOOKS)
@require_POST
def delete(request: OrgRequest, endpoint_id: int) -> HttpResponse:
    endpoint = _endpoint(request, endpoint_id)
    _audit(request, AuditEvent.Action.WEBHOOK_DELETED, endpoint)
    endpoint.delete()
    messages.success(request, f"Deleted the endpoint {endpoint.url} and its delivery log.")
    return redirect("webhooks:list")


def _delivery(request: OrgRequest, endpoint_id: int, delivery_id: int) -> WebhookDelivery:
    return get_object_or_404(
        WebhookDelivery.objects.for_org(request.organization).select_related("endpoint"),
        pk=delivery_id,
        endpoint_id=endpoint_id,
    )


@org_member_required(Perm.MANAGE_WEBHOOKS)
def delivery_detail(request: OrgRequest, endpoint_id: int, delivery_id: int) -> HttpResponse:
    delivery = _delivery(request, endpoint_id, delivery_id)
    context = {
        "delivery": delivery,
        "endpoint": delivery.endpoint,
        "body": json.dumps(delivery.payload, indent=2, ensure_ascii=False),
        "user_agent": USER_AGENT,
    }
    return render(request, "webhooks/delivery.html", context)


@org_member_required(Perm.MANAGE_WEBHOOKS)
@require_POST
def redeliver(request: OrgRequest, endpoint_id: int, delivery_id: int) -> HttpResponse:
    delivery = _delivery(request, endpoint_id, delivery_id)
    try:
        services.redeliver(delivery)
    except services.WebhookError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, f"Sent {delivery.event_type} again, with the same webhook-id.")
    return redirect("webhooks:detail", endpoint_id)
