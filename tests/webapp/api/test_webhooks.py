"""The webhook endpoints' REST API: the token's org only, checked input, and the secret shown on create or roll."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from standardwebhooks import Webhook

from tests.webapp.api.openapi_schema import assert_documented
from tests.webapp.conftest import Cast
from tests.webapp.webhooks.receiver import Receiver
from webapp.tenants.models import ApiToken, AuditEvent
from webapp.webhooks import services
from webapp.webhooks.models import EventType, WebhookDelivery, WebhookEndpoint

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("public_dns")]

URL = "https://deploy.example.com/distillery"


class Token:
    def __init__(self, org: Any, creator: Any, scope: str = ApiToken.Scope.FULL) -> None:
        plaintext = ApiToken.issue(organization=org, name="CI", created_by=creator, scope=scope)[1]
        self.client = Client(headers={"Authorization": f"Bearer {plaintext}"})

    def send(self, method: str, url: str, body: Any = None) -> Any:
        data = "" if body is None else json.dumps(body)
        return self.client.generic(method, f"/api/v1/webhooks{url}", data, content_type="application/json")


@pytest.fixture
def token(cast: Cast) -> Token:
    return Token(cast.org, cast.admin)


@pytest.fixture
def hook(cast: Cast) -> WebhookEndpoint:
    return WebhookEndpoint.create(
        organization=cast.org, url=URL, description="CD", events=["job.succeeded"], created_by=cast.owner
    )[0]


def test_it_adds_an_endpoint_and_gives_its_secret_in_that_answer_only(cast: Cast, token: Token) -> None:
    created = token.send("POST", "", {"url": URL, "events": ["job.failed", "job.succeeded"]})

    assert created.status_code == 201
    body = created.json()
    hook = WebhookEndpoint.objects.get()
    assert body["secret"] == hook.secret
    assert (body["url"], body["events"], body["enabled"], body["description"]) == (
        URL,
        ["job.succeeded", "job.failed"],
        True,
        "",
    )
    assert hook.organization == cast.org
    assert hook.created_by == cast.admin
    assert "secret" not in token.send("GET", f"/{hook.pk}").json()
    assert "secret" not in token.send("GET", "").json()["data"][0]
    assert AuditEvent.objects.get(action=AuditEvent.Action.WEBHOOK_CREATED).actor == cast.admin


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"url": URL}, "events: Choose at least one event."),
        ({"url": URL, "events": []}, "events: Choose at least one event."),
        ({"url": URL, "events": "job.failed"}, 'events: must be a list of event types, e.g. ["job.succeeded"].'),
        ({"url": URL, "events": ["job.started"]}, "events: Select a valid choice. job.started is not one of"),
        ({"url": "ftp://deploy.example.com/", "events": ["job.failed"]}, "url: The endpoint must be an http(s) URL"),
        ({"url": "http://10.0.0.8/h", "events": ["job.failed"]}, "url: 10.0.0.8 resolves to the private address"),
        ({"url": 7, "events": ["job.failed"]}, "url and description must be text."),
        ({"url": URL, "events": ["job.failed"], "enabled": "yes"}, "enabled: must be true or false."),
        ({"url": URL, "events": ["job.failed"], "secret": "x"}, "unknown field(s) secret; accepted: url,"),
        ([URL], "The body must be a JSON object."),
    ],
)
def test_it_refuses_a_bad_endpoint_and_names_the_field(token: Token, body: Any, message: str) -> None:
    response = token.send("POST", "", body)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(message)
    assert not WebhookEndpoint.objects.exists()


def test_a_change_keeps_the_fields_it_leaves_out(token: Token, hook: WebhookEndpoint) -> None:
    response = token.send("PATCH", f"/{hook.pk}", {"events": ["job.cancelled"], "enabled": False})

    assert response.status_code == 200
    hook.refresh_from_db()
    assert (hook.url, hook.description, hook.events, hook.is_active) == (URL, "CD", ["job.cancelled"], False)
    assert AuditEvent.objects.get(action=AuditEvent.Action.WEBHOOK_CHANGED).detail == {"changed": ["events", "enabled"]}
    refused = token.send("POST", f"/{hook.pk}/test")
    assert refused.status_code == 409
    assert refused.json()["error"]["message"] == "The endpoint is disabled: enable it to send it events."
    assert token.send("PATCH", f"/{hook.pk}", {}).status_code == 400


def test_it_rolls_the_secret(token: Token, hook: WebhookEndpoint) -> None:
    old = hook.secret
    response = token.send("POST", f"/{hook.pk}/roll-secret")
    hook.refresh_from_db()
    assert response.json()["secret"] == hook.secret != old


def test_a_test_event_from_the_api_arrives_signed(token: Token, cast: Cast, settings: Any, receiver: Receiver) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    created = token.send("POST", "", {"url": receiver.url, "events": ["job.succeeded"]}).json()

    queued = token.send("POST", f"/{created['id']}/test")
    services.attempt(queued.json()["id"])  # what the worker does with it

    assert queued.status_code == 202
    assert queued.json()["status"] == "pending"
    [request] = receiver.requests
    event = Webhook(created["secret"]).verify(request.body, request.headers)
    assert event["data"]["sent_by"] == "API token CI"
    delivered = token.send("GET", f"/{created['id']}/deliveries").json()["data"][0]
    assert (delivered["status"], delivered["response_status"], delivered["webhook_id"]) == (
        "succeeded",
        200,
        request.headers["webhook-id"],
    )


def test_it_pages_the_deliveries_newest_first(token: Token, hook: WebhookEndpoint) -> None:
    made = [services.emit(hook.organization, EventType.JOB_SUCCEEDED, {"n": n})[0].pk for n in range(5)]

    first = token.send("GET", f"/{hook.pk}/deliveries?limit=2").json()
    rest = token.send("GET", f"/{hook.pk}/deliveries?limit=10&after={first['data'][-1]['id']}").json()

    assert [d["id"] for d in first["data"]] == made[::-1][:2]
    assert first["has_more"] is True
    assert [d["id"] for d in rest["data"]] == made[::-1][2:]
    assert rest["has_more"] is False
    bad = token.send("GET", f"/{hook.pk}/deliveries?after=x")
    assert bad.json()["error"]["message"] == "after: must be a delivery's id (the last `id` of the previous page)."


def test_it_redelivers_a_failed_delivery_with_the_same_webhook_id(token: Token, hook: WebhookEndpoint) -> None:
    delivery = services.emit(hook.organization, EventType.JOB_SUCCEEDED, {"id": 3})[0]
    pending = token.send("POST", f"/{hook.pk}/deliveries/{delivery.pk}/redeliver")
    assert pending.status_code == 409
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=WebhookDelivery.Status.FAILED)

    again = token.send("POST", f"/{hook.pk}/deliveries/{delivery.pk}/redeliver")

    assert again.status_code == 202
    assert again.json()["webhook_id"] == delivery.message_id
    assert again.json()["id"] != delivery.pk


def test_it_deletes_an_endpoint(token: Token, hook: WebhookEndpoint) -> None:
    assert token.send("DELETE", f"/{hook.pk}").json() == {"object": "webhook_endpoint", "id": hook.pk, "deleted": True}
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/{id}"),
        ("PATCH", "/{id}"),
        ("DELETE", "/{id}"),
        ("POST", "/{id}/roll-secret"),
        ("POST", "/{id}/test"),
        ("GET", "/{id}/deliveries"),
        ("POST", "/{id}/deliveries/{delivery}/redeliver"),
    ],
)
def test_another_orgs_token_gets_404_and_changes_nothing(
    cast: Cast, hook: WebhookEndpoint, method: str, path: str
) -> None:
    delivery = services.emit(cast.org, EventType.JOB_SUCCEEDED, {"id": 1})[0]
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=WebhookDelivery.Status.FAILED)
    outsider = Token(cast.other_org, cast.outsider)
    secret = hook.secret

    response = outsider.send(method, path.format(id=hook.pk, delivery=delivery.pk), {"url": "https://x.example.com/"})

    assert response.status_code == 404
    hook.refresh_from_db()
    assert (hook.url, hook.secret, hook.is_active) == (URL, secret, True)
    assert WebhookDelivery.objects.count() == 1
    assert outsider.send("GET", "").json()["data"] == []


def test_a_models_only_token_cannot_reach_webhooks(cast: Cast, hook: WebhookEndpoint) -> None:
    response = Token(cast.org, cast.owner, ApiToken.Scope.MODELS).send("GET", "")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"


def test_it_says_why_the_server_disabled_an_endpoint_and_forgets_it_once_enabled(
    token: Token, hook: WebhookEndpoint
) -> None:
    assert token.send("GET", f"/{hook.pk}").json()["disabled_reason"] is None
    reason = "Disabled automatically: every delivery since 2026-11-20 10:00 UTC failed (9 in all)."
    hook.set_active(False, reason=reason)
    hook.save()

    response = token.send("GET", f"/{hook.pk}")
    assert_documented("/api/v1/webhooks/{endpoint_id}", "GET", response)
    assert (response.json()["enabled"], response.json()["disabled_reason"]) == (False, reason)

    enabled = token.send("PATCH", f"/{hook.pk}", {"enabled": True}).json()
    assert (enabled["enabled"], enabled["disabled_reason"]) == (True, None)
    hook.refresh_from_db()
    assert hook.disabled_at is None
