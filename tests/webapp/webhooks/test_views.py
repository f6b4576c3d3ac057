"""The webhook pages for owner, admin, member and outsider (owner of another org), with and without htmx."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from tests.webapp.conftest import Cast
from webapp.tenants.models import AuditEvent
from webapp.webhooks import services
from webapp.webhooks.models import EventType, WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db

PUBLIC_URL = "https://deploy.example.com/distillery"


@pytest.fixture
def hook(cast: Cast) -> WebhookEndpoint:
    made, _ = WebhookEndpoint.create(
        organization=cast.org, url=PUBLIC_URL, description="CI", events=["job.succeeded"], created_by=cast.owner
    )
    return made


@pytest.fixture
def delivery(hook: WebhookEndpoint) -> WebhookDelivery:
    made = services.emit(hook.organization, EventType.JOB_SUCCEEDED, {"id": 41, "name": "Leave expert"})[0]
    made.record_attempt(ok=False, status_code=502, error="Answered HTTP 502.", excerpt="bad gateway")
    made.status = WebhookDelivery.Status.FAILED
    made.save()
    return made


# ------------------------------------------------------------------ who may see what
@pytest.mark.parametrize(("who", "status"), [("owner", 200), ("admin", 200), ("member", 403), ("outsider", 200)])
def test_it_shows_the_list_to_owners_and_admins_of_each_org(
    cast: Cast, hook: WebhookEndpoint, who: str, status: int
) -> None:
    response = cast.client_for(who).get(reverse("webhooks:list"))
    assert response.status_code == status
    if status == 200:
        assert (PUBLIC_URL in response.content.decode()) == (who != "outsider")


@pytest.mark.parametrize(("who", "status"), [("owner", 200), ("admin", 200), ("member", 403), ("outsider", 404)])
@pytest.mark.parametrize("page", ["detail", "delivery"])
def test_it_shows_an_endpoint_and_its_deliveries_only_inside_its_org(
    cast: Cast, delivery: WebhookDelivery, who: str, status: int, page: str
) -> None:
    args = [delivery.endpoint_id] if page == "detail" else [delivery.endpoint_id, delivery.pk]
    response = cast.client_for(who).get(reverse(f"webhooks:{page}", args=args))
    assert response.status_code == status


@pytest.mark.parametrize("action", ["test", "roll-secret", "toggle", "delete", "redeliver", "detail"])
@pytest.mark.parametrize(("who", "status"), [("member", 403), ("outsider", 404)])
def test_it_refuses_every_change_to_members_and_outsiders(
    cast: Cast, delivery: WebhookDelivery, action: str, who: str, status: int
) -> None:
    hook = delivery.endpoint
    secret = hook.secret
    args = [hook.pk, delivery.pk] if action == "redeliver" else [hook.pk]
    data = {"url": "https://evil.example.com/", "events": ["job.failed"]}

    response = cast.client_for(who).post(reverse(f"webhooks:{action}", args=args), data)

    assert response.status_code == status
    hook.refresh_from_db()
    assert (hook.url, hook.is_active, hook.secret, hook.events) == (PUBLIC_URL, True, secret, ["job.succeeded"])
    assert WebhookDelivery.objects.count() == 1


def test_it_sends_anonymous_visitors_to_login(cast: Cast) -> None:
    response = cast.client_for("anonymous").get(reverse("webhooks:list"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:login"))


def test_it_links_webhooks_from_the_org_pages_for_owners_and_admins_only(cast: Cast) -> None:
    link = f'href="{reverse("webhooks:list")}"'
    assert link in cast.client_for("admin").get(reverse("tenants:settings")).content.decode()
    assert link not in cast.client_for("member").get(reverse("tenants:settings")).content.decode()


# ------------------------------------------------------------------ adding endpoints
def test_it_adds_an_endpoint_and_shows_its_secret_once(cast: Cast) -> None:
    client = cast.client_for("admin")

    response = client.post(
        reverse("webhooks:list"), {"url": PUBLIC_URL, "description": "Deploy bot", "events": ["job.succeeded"]}
    )

    page = response.content.decode()
    hook = WebhookEndpoint.objects.get()
    assert (hook.organization, hook.created_by, hook.events) == (cast.org, cast.admin, ["job.succeeded"])
    assert hook.secret.startswith("whsec_")
    assert hook.secret in page
    assert hook.secret not in hook.secret_encrypted  # stored encrypted
    assert hook.secret not in client.get(reverse("webhooks:list")).content.decode()
    assert hook.secret not in client.get(reverse("webhooks:detail", args=[hook.pk])).content.decode()
    assert AuditEvent.objects.filter(action=AuditEvent.Action.WEBHOOK_CREATED, target=PUBLIC_URL).exists()


def test_it_renders_the_endpoints_partial_for_htmx(cast: Cast) -> None:
    response = cast.client_for("owner").post(
        reverse("webhooks:list"), {"url": PUBLIC_URL, "events": ["job.failed"]}, headers={"HX-Request": "true"}
    )
    page = response.content.decode()
    assert "<html" not in page
    assert 'id="new-secret"' in page
    assert "<code>job.failed</code>" in page


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://ci.example.com/hooks", "The endpoint must be an http(s) URL with a host."),
        ("http://127.0.0.1:9000/hooks", "127.0.0.1 resolves to the private address 127.0.0.1"),
        ("http://169.254.169.254/latest", "Cloud metadata addresses cannot be webhooks."),
        ("not a url", "Enter a valid URL."),
    ],
)
def test_it_refuses_urls_the_server_must_not_post_to(cast: Cast, url: str, error: str) -> None:
    response = cast.client_for("owner").post(reverse("webhooks:list"), {"url": url, "events": ["job.failed"]})
    assert response.status_code == 200
    assert error in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_it_asks_for_at_least_one_event(cast: Cast) -> None:
    page = cast.client_for("owner").post(reverse("webhooks:list"), {"url": PUBLIC_URL}).content.decode()
    assert "Choose at least one event." in page
    assert not WebhookEndpoint.objects.exists()


def test_it_takes_a_private_address_when_the_operator_allows_it(cast: Cast, settings: Any) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    cast.client_for("owner").post(
        reverse("webhooks:list"), {"url": "http://127.0.0.1:9000/h", "events": ["job.failed"]}
    )
    assert WebhookEndpoint.objects.get().url == "http://127.0.0.1:9000/h"


# ------------------------------------------------------------------ one endpoint
def test_it_lists_the_endpoints_last_delivery(cast: Cast, delivery: WebhookDelivery) -> None:
    page = cast.client_for("owner").get(reverse("webhooks:list")).content.decode()
    assert "failed</span> (HTTP 502)" in page


def test_it_shows_deliveries_with_their_outcome_and_polls_only_while_one_is_due(
    cast: Cast, delivery: WebhookDelivery
) -> None:
    client = cast.client_for("owner")
    url = reverse("webhooks:detail", args=[delivery.endpoint_id])
    page = client.get(url).content.decode()
    assert "<code>job.succeeded</code>" in page
    assert "Answered HTTP 502." in page
    assert "1 of 8" in page
    assert 'hx-trigger="every 3s"' not in page

    ping = services.send_test_event(delivery.endpoint, "olivia")
    partial = client.get(url, headers={"HX-Request": "true"}).content.decode()
    assert "<html" not in partial
    assert "<code>ping</code>" in partial
    assert 'hx-trigger="every 3s"' in partial
    WebhookDelivery.claim(ping.pk, services.attempt_lease())  # a worker is sending it: still worth watching
    assert 'hx-trigger="every 3s"' in client.get(url, headers={"HX-Request": "true"}).content.decode()
    WebhookDelivery.objects.filter(pk=ping.pk).update(next_attempt_at=timezone.now() + timedelta(minutes=30))
    assert 'hx-trigger="every 3s"' not in client.get(url, headers={"HX-Request": "true"}).content.decode()


def test_it_sends_a_test_event_from_the_page(cast: Cast, hook: WebhookEndpoint) -> None:
    response = cast.client_for("admin").post(reverse("webhooks:test", args=[hook.pk]), follow=True)
    assert "Sent a test event (ping)" in response.content.decode()
    assert hook.deliveries.get().event_type == "ping"


def test_it_edits_the_url_and_events(cast: Cast, hook: WebhookEndpoint) -> None:
    response = cast.client_for("owner").post(
        reverse("webhooks:detail", args=[hook.pk]),
        {"url": "https://new.example.com/h", "description": "", "events": ["job.failed", "job.cancelled"]},
    )
    assert response.status_code == 302
    hook.refresh_from_db()
    assert hook.url == "https://new.example.com/h"
    assert hook.events == ["job.failed", "job.cancelled"]
    assert AuditEvent.objects.get(action=AuditEvent.Action.WEBHOOK_CHANGED).detail == {
        "changed": ["url", "description", "events"]
    }


def test_it_keeps_the_endpoint_and_shows_why_when_an_edit_is_refused(cast: Cast, hook: WebhookEndpoint) -> None:
    response = cast.client_for("owner").post(
        reverse("webhooks:detail", args=[hook.pk]), {"url": "http://10.0.0.8/h", "events": ["job.failed"]}
    )
    assert response.status_code == 200
    assert "10.0.0.8 resolves to the private address 10.0.0.8" in response.content.decode()
    hook.refresh_from_db()
    assert (hook.url, hook.events) == (PUBLIC_URL, ["job.succeeded"])


def test_it_rolls_the_secret_and_shows_the_new_one_once(cast: Cast, hook: WebhookEndpoint) -> None:
    old = hook.secret
    page = cast.client_for("owner").post(reverse("webhooks:roll-secret", args=[hook.pk])).content.decode()
    hook.refresh_from_db()
    assert hook.secret != old
    assert hook.secret in page
    assert old not in page


def test_a_disabled_endpoint_gets_no_events_until_enabled(cast: Cast, hook: WebhookEndpoint) -> None:
    client = cast.client_for("owner")
    client.post(reverse("webhooks:toggle", args=[hook.pk]))
    assert services.emit(cast.org, EventType.JOB_SUCCEEDED, {"id": 1}) == []
    refused = client.post(reverse("webhooks:test", args=[hook.pk]), follow=True).content.decode()
    assert "The endpoint is disabled" in refused

    client.post(reverse("webhooks:toggle", args=[hook.pk]))
    assert len(services.emit(cast.org, EventType.JOB_SUCCEEDED, {"id": 1})) == 1


def test_it_redelivers_a_failed_delivery_with_the_same_webhook_id(cast: Cast, delivery: WebhookDelivery) -> None:
    response = cast.client_for("admin").post(
        reverse("webhooks:redeliver", args=[delivery.endpoint_id, delivery.pk]), follow=True
    )
    assert "Sent job.succeeded again" in response.content.decode()
    again = WebhookDelivery.objects.exclude(pk=delivery.pk).get()
    assert (again.message_id, again.payload, again.attempts) == (delivery.message_id, delivery.payload, 0)


def test_it_shows_what_a_delivery_sent_and_what_came_back(cast: Cast, delivery: WebhookDelivery) -> None:
    page = (
        cast.client_for("owner")
        .get(reverse("webhooks:delivery", args=[delivery.endpoint_id, delivery.pk]))
        .content.decode()
    )
    assert f"webhook-id: {delivery.message_id}" in page
    assert "&quot;name&quot;: &quot;Leave expert&quot;" in page
    assert "HTTP 502" in page
    assert "bad gateway" in page


def test_it_answers_404_for_a_delivery_under_another_endpoint(cast: Cast, delivery: WebhookDelivery) -> None:
    other, _ = WebhookEndpoint.create(organization=cast.org, url=PUBLIC_URL, description="", events=[], created_by=None)
    response = cast.client_for("owner").get(reverse("webhooks:delivery", args=[other.pk, delivery.pk]))
    assert response.status_code == 404


def test_it_deletes_the_endpoint_and_its_log(cast: Cast, delivery: WebhookDelivery) -> None:
    response = cast.client_for("owner").post(reverse("webhooks:delete", args=[delivery.endpoint_id]))
    assert response["Location"] == reverse("webhooks:list")
    assert not WebhookEndpoint.objects.exists()
    assert not WebhookDelivery.objects.exists()
    assert AuditEvent.objects.filter(action=AuditEvent.Action.WEBHOOK_DELETED).exists()


def test_it_shows_why_the_server_disabled_an_endpoint_until_someone_enables_it(
    cast: Cast, hook: WebhookEndpoint
) -> None:
    reason = "Disabled automatically: every delivery since 2026-11-20 10:00 UTC failed (9 in all)."
    hook.set_active(False, reason=reason)
    hook.save()
    client = cast.client_for("admin")

    assert "disabled: failing" in client.get(reverse("webhooks:list")).content.decode()
    assert reason in client.get(reverse("webhooks:detail", args=[hook.pk])).content.decode()

    page = client.post(reverse("webhooks:toggle", args=[hook.pk]), follow=True).content.decode()
    assert "Enabled: events are sent again." in page
    assert reason not in page
    hook.refresh_from_db()
    assert (hook.is_active, hook.disabled_reason, hook.disabled_at) == (True, "", None)
