"""REST API for webhook endpoints: what the Webhooks pages do, for a pipeline that sets itself up.

    curl -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \\
         -d '{"url": "https://ci.example.com/hooks", "events": ["job.succeeded", "job.failed"]}' \\
         https://host/api/v1/webhooks                       # the answer holds the signing secret, once
    curl -H "Authorization: Bearer $TOKEN" -X POST https://host/api/v1/webhooks/2/test
    curl -H "Authorization: Bearer $TOKEN" https://host/api/v1/webhooks/2/deliveries

Every lookup is scoped to the token's org: another org's ids answer 404. The secret is in the answer of a
create or a roll only; no other answer holds it.
"""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse
from django.views.decorators.http import require_http_methods, require_POST

from webapp.api.auth import ApiRequest, api_error, api_token_required, invalid, not_found
from webapp.api.params import json_object, page
from webapp.core.http import client_ip
from webapp.core.times import unix_time
from webapp.tenants.models import AuditEvent
from webapp.webhooks import services
from webapp.webhooks.forms import EndpointForm
from webapp.webhooks.models import WebhookDelivery, WebhookEndpoint

FIELDS = ("url", "description", "events", "enabled")


def endpoint_json(endpoint: WebhookEndpoint, secret: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "object": "webhook_endpoint",
        "id": endpoint.pk,
        "url": endpoint.url,
        "description": endpoint.description,
        "events": endpoint.events,
        "enabled": endpoint.is_active,
        "disabled_reason": endpoint.disabled_reason or None,
        "created_at": unix_time(endpoint.created_at),
    }
    if secret is not None:
        data["secret"] = secret
    return data


def delivery_json(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "object": "webhook_delivery",
        "id": delivery.pk,
        "endpoint": delivery.endpoint_id,
        "webhook_id": delivery.message_id,
        "type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "max_attempts": delivery.max_attempts,
        "response_status": delivery.response_status,
        "error": delivery.last_error or None,
        "next_attempt_at": unix_time(delivery.next_attempt_at),
        "created_at": unix_time(delivery.created_at),
    }


def _endpoint(request: ApiRequest, endpoint_id: int) -> WebhookEndpoint | None:
    return WebhookEndpoint.objects.for_org(request.organization).filter(pk=endpoint_id).first()


def _audit(request: ApiRequest, action: AuditEvent.Action, endpoint: WebhookEndpoint, **detail: object) -> None:
    AuditEvent.record(
        request.organization,
        request.api_token.created_by,
        action,
        target=endpoint.url,
        detail=detail,
        ip_address=client_ip(request),
    )


def _validated(body: dict[str, Any], endpoint: WebhookEndpoint | None) -> EndpointForm | JsonResponse:
    """The endpoint form bound to the body (a change keeps the fields it leaves out); the 400 when it is wrong."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        return invalid(f"unknown field(s) {', '.join(unknown)}; accepted: {', '.join(FIELDS)}.")
    if "enabled" in body and not isinstance(body["enabled"], bool):
        return invalid("enabled: must be true or false.")
    events = body.get("events", endpoint.events if endpoint else None)
    if events is not None and not (isinstance(events, list) and all(isinstance(e, str) for e in events)):
        return invalid('events: must be a list of event types, e.g. ["job.succeeded"].')
    current = {"url": endpoint.url, "description": endpoint.description} if endpoint else {}
    data = {**current, **{key: body[key] for key in ("url", "description") if key in body}, "events": events or []}
    if not all(isinstance(data.get(key, ""), str) for key in ("url", "description")):
        return invalid("url and description must be text.")
    form = EndpointForm(data, instance=endpoint)
    if not form.is_valid():
        field, errors = next(iter(form.errors.items()))
        return invalid(f"{field}: {errors[0]}")
    return form


@require_http_methods(["GET", "POST"])
@api_token_required
def endpoint_list(request: ApiRequest) -> JsonResponse:
    if request.method == "GET":
        endpoints = WebhookEndpoint.objects.for_org(request.organization)
        return JsonResponse({"object": "list", "data": [endpoint_json(endpoint) for endpoint in endpoints]})
    body = json_object(request)
    if isinstance(body, JsonResponse):
        return body
    form = _validated(body, None)
    if isinstance(form, JsonResponse):
        return form
    endpoint, secret = WebhookEndpoint.create(
        organization=request.organization,
        url=form.cleaned_data["url"],
        description=form.cleaned_data["description"],
        events=form.cleaned_data["events"],
        created_by=request.api_token.created_by,
    )
    if body.get("enabled") is False:
        endpoint.set_active(False)
        endpoint.save(update_fields=endpoint.ACTIVATION_FIELDS)
    _audit(request, AuditEvent.Action.WEBHOOK_CREATED, endpoint, events=endpoint.events)
    return JsonResponse(endpoint_json(endpoint, secret), status=201)


@require_http_methods(["GET", "PATCH", "DELETE"])
@api_token_required
def endpoint_detail(request: ApiRequest, endpoint_id: int) -> JsonResponse:
    endpoint = _endpoint(request, endpoint_id)
    if endpoint is None:
        return not_found("webhook endpoint")
    if request.method == "DELETE":
        _audit(request, AuditEvent.Action.WEBHOOK_DELETED, endpoint)
        endpoint.delete()
        return JsonResponse({"object": "webhook_endpoint", "id": endpoint_id, "deleted": True})
    if request.method == "PATCH":
        body = json_object(request)
        if isinstance(body, JsonResponse):
            return body
        if not body:
            return invalid(f"The body must be a JSON object with any of {', '.join(FIELDS)}.")
        form = _validated(body, endpoint)
        if isinstance(form, JsonResponse):
            return form
        changed = list(form.changed_data)
        endpoint = form.save(commit=False)
        if "enabled" in body and body["enabled"] != endpoint.is_active:
            endpoint.set_active(body["enabled"])
            changed.append("enabled")
        endpoint.save()
        _audit(request, AuditEvent.Action.WEBHOOK_CHANGED, endpoint, changed=changed)
    return JsonResponse(endpoint_json(endpoint))


@require_POST
@api_token_required
def endpoint_roll_secret(request: ApiRequest, endpoint_id: int) -> JsonResponse:
    """A new signing secret, in this answer only; the old one stops verifying at once."""
    endpoint = _endpoint(request, endpoint_id)
    if endpoint is None:
        return not_found("webhook endpoint")
    secret = endpoint.roll_secret()
    _audit(request, AuditEvent.Action.WEBHOOK_CHANGED, endpoint, changed=["secret"])
    return JsonResponse(endpoint_json(endpoint, secret))


def _refused(error: services.WebhookError) -> JsonResponse:
    return api_error(str(error), status=409, error_type="invalid_request_error", code="webhook_refused")


@require_POST
@api_token_required
def endpoint_test(request: ApiRequest, endpoint_id: int) -> JsonResponse:
    """A `ping` to this endpoint, sent by a worker at once: poll its delivery for the outcome."""
    endpoint = _endpoint(request, endpoint_id)
    if endpoint is None:
        return not_found("webhook endpoint")
    try:
        delivery = services.send_test_event(endpoint, f"API token {request.api_token.name}")
    except services.WebhookError as error:
        return _refused(error)
    return JsonResponse(delivery_json(delivery), status=202)


@require_http_methods(["GET"])
@api_token_required
def delivery_list(request: ApiRequest, endpoint_id: int) -> JsonResponse:
    """The endpoint's deliveries, newest first, paged like the jobs list."""
    endpoint = _endpoint(request, endpoint_id)
    if endpoint is None:
        return not_found("webhook endpoint")
    paging = page(request, "delivery")
    if isinstance(paging, JsonResponse):
        return paging
    limit, after = paging
    deliveries = endpoint.deliveries.order_by("-pk")
    if after is not None:
        deliveries = deliveries.filter(pk__lt=after)
    found = list(deliveries[: limit + 1])
    data = [delivery_json(delivery) for delivery in found[:limit]]
    return JsonResponse({"object": "list", "data": data, "has_more": len(found) > limit})


@require_POST
@api_token_required
def delivery_redeliver(request: ApiRequest, endpoint_id: int, delivery_id: int) -> JsonResponse:
    """The same event again, with the same `webhook_id`, as a new delivery."""
    delivery = WebhookDelivery.objects.for_org(request.organization).filter(pk=delivery_id, endpoint_id=endpoint_id)
    found = delivery.select_related("endpoint").first()
    if found is None:
        return not_found("webhook delivery")
    try:
        again = services.redeliver(found)
    except services.WebhookError as error:
        return _refused(error)
    return JsonResponse(delivery_json(again), status=202)
