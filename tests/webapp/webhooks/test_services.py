"""Events to endpoints: who gets what, one attempt at a time, retries on the row's schedule, and the sweep."""

from __future__ import annotations

import json
import socket
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from standardwebhooks import Webhook

from tests.webapp.api.openapi_schema import assert_matches
from tests.webapp.conftest import Cast
from tests.webapp.jobs.conftest import make_corpus, make_job
from tests.webapp.webhooks.receiver import Receiver
from webapp.jobs import services as job_services
from webapp.jobs.models import JobStatus, Notification
from webapp.tenants.models import AuditEvent, Membership, Organization
from webapp.webhooks import services
from webapp.webhooks.models import EventType, WebhookDelivery, WebhookEndpoint
from workers.tasks import webhooks as tasks

pytestmark = pytest.mark.django_db

JOB_EVENTS = ["job.succeeded", "job.failed", "job.cancelled"]


def endpoint(org: Organization, url: str, events: list[str] | None = None, **fields: Any) -> WebhookEndpoint:
    made, _ = WebhookEndpoint.create(
        organization=org, url=url, description="", events=JOB_EVENTS if events is None else events, created_by=None
    )
    for name, value in fields.items():
        setattr(made, name, value)
    made.save()
    return made


def test_it_sends_a_job_end_only_to_the_orgs_active_subscribed_endpoints(cast: Cast) -> None:
    wants_all = endpoint(cast.org, "https://a.example.com/hook")
    endpoint(cast.org, "https://b.example.com/hook", events=["job.failed"])
    endpoint(cast.org, "https://c.example.com/hook", is_active=False)
    endpoint(cast.other_org, "https://d.example.com/hook")
    job = make_job(make_corpus(cast.org), JobStatus.SUCCEEDED)

    job_services.notify_job_ended(job.pk)

    [delivery] = WebhookDelivery.objects.all()
    assert delivery.endpoint == wants_all
    assert delivery.organization == cast.org
    assert delivery.event_type == "job.succeeded"
    assert delivery.status == WebhookDelivery.Status.PENDING
    assert delivery.payload["data"]["id"] == job.pk
    assert delivery.payload["data"]["status"] == "succeeded"
    assert delivery.message_id.startswith("msg_")
    # The body is what the API reference documents as a JobEvent, with the job as GET /api/v1/jobs/{id} gives it.
    assert_matches({"$ref": "#/components/schemas/JobEvent"}, delivery.payload)


def test_it_gives_every_endpoint_of_one_event_the_same_webhook_id(cast: Cast) -> None:
    endpoint(cast.org, "https://a.example.com/hook")
    endpoint(cast.org, "https://b.example.com/hook")
    job = make_job(make_corpus(cast.org), JobStatus.FAILED, error="The teacher's endpoint refused the key.")

    job_services.notify_job_ended(job.pk)

    deliveries = WebhookDelivery.objects.all()
    assert {d.event_type for d in deliveries} == {"job.failed"}
    assert len({d.message_id for d in deliveries}) == 1
    assert len(deliveries) == 2
    assert deliveries[0].payload["data"]["error"] == "The teacher's endpoint refused the key."


def test_it_sends_job_cancelled_when_a_queued_job_is_cancelled(cast: Cast) -> None:
    endpoint(cast.org, "https://a.example.com/hook")
    job = make_job(make_corpus(cast.org), JobStatus.QUEUED)

    job_services.cancel_job(job)

    [delivery] = WebhookDelivery.objects.all()
    assert delivery.event_type == "job.cancelled"
    assert delivery.payload["data"]["status"] == "cancelled"


def test_it_sends_nothing_while_a_running_job_is_only_asked_to_cancel(cast: Cast) -> None:
    endpoint(cast.org, "https://a.example.com/hook")
    job_services.cancel_job(make_job(make_corpus(cast.org), JobStatus.TRAINING))
    assert not WebhookDelivery.objects.exists()  # the worker sends job.cancelled once it has stopped


@pytest.mark.usefixtures("private_webhooks")
def test_it_delivers_a_signed_event_and_records_the_answer(cast: Cast, receiver: Receiver) -> None:
    hook = endpoint(cast.org, receiver.url)
    job_services.notify_job_ended(make_job(make_corpus(cast.org), JobStatus.SUCCEEDED).pk)
    delivery = WebhookDelivery.objects.get()

    services.attempt(delivery.pk)

    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.SUCCEEDED
    assert delivery.attempts == 1
    assert delivery.response_status == 200
    assert delivery.response_excerpt == "thanks"
    assert delivery.next_attempt_at is None
    assert delivery.last_error == ""
    [request] = receiver.requests
    assert request.headers["webhook-id"] == delivery.message_id
    assert Webhook(hook.secret).verify(request.body, request.headers) == delivery.payload


@pytest.mark.usefixtures("private_webhooks")
def test_it_retries_on_the_schedule_then_fails_for_good(cast: Cast, receiver: Receiver, settings: Any) -> None:
    settings.WEBHOOK_RETRY_DELAYS_SECONDS = [5, 300]
    receiver.status, receiver.reply = 500, b"database is down"
    endpoint(cast.org, receiver.url, created_by=cast.admin)
    [delivery] = services.emit(cast.org, EventType.JOB_FAILED, {"id": 1})

    before = timezone.now()
    services.attempt(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.PENDING
    assert delivery.attempts == 1
    assert timedelta(seconds=4) < delivery.next_attempt_at - before < timedelta(seconds=7)
    assert delivery.response_status == 500
    assert "HTTP 500" in delivery.last_error
    assert services.attempt(delivery.pk) is None  # not due yet: nothing is sent
    assert len(receiver.requests) == 1

    for expected_attempts, expected_status in ((2, "pending"), (3, "failed")):
        WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
        services.attempt(delivery.pk)
        delivery.refresh_from_db()
        assert (delivery.attempts, delivery.status) == (expected_attempts, expected_status)
    assert delivery.next_attempt_at is None
    assert delivery.max_attempts == 3
    assert [r.headers["webhook-id"] for r in receiver.requests] == [delivery.message_id] * 3
    # Whoever added the endpoint hears of it in the app (once, at the end), with a link to the delivery.
    [note] = Notification.objects.filter(recipient=cast.admin)
    assert note.message.startswith(f"Webhook job.failed to {receiver.url} failed after 3 attempts: Answered HTTP 500")
    assert note.url == f"/org/webhooks/{delivery.endpoint_id}/deliveries/{delivery.pk}/"


@pytest.mark.usefixtures("private_webhooks")
def test_it_tells_no_one_who_has_left_the_org(cast: Cast, receiver: Receiver, settings: Any) -> None:
    settings.WEBHOOK_RETRY_DELAYS_SECONDS = []  # one attempt, then failed
    receiver.status = 410
    endpoint(cast.org, receiver.url, created_by=cast.member)
    Membership.objects.filter(organization=cast.org, user=cast.member).delete()
    [delivery] = services.emit(cast.org, EventType.JOB_FAILED, {"id": 1})

    services.attempt(delivery.pk)

    assert WebhookDelivery.objects.get(pk=delivery.pk).status == WebhookDelivery.Status.FAILED
    assert not Notification.objects.exists()


@pytest.mark.usefixtures("private_webhooks")
def test_it_sends_an_attempt_once_while_another_worker_holds_it(cast: Cast, receiver: Receiver) -> None:
    endpoint(cast.org, receiver.url)
    [delivery] = services.emit(cast.org, EventType.JOB_SUCCEEDED, {"id": 1})

    assert WebhookDelivery.claim(delivery.pk, lease=timedelta(minutes=1)) is not None  # a worker took it
    assert services.attempt(delivery.pk) is None  # a duplicate message finds it taken
    assert receiver.requests == []


def test_it_refuses_a_private_address_at_delivery_time(cast: Cast, receiver: Receiver, settings: Any) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    endpoint(cast.org, receiver.url)  # allowed when it was saved
    settings.WEBHOOK_ALLOW_PRIVATE = False
    [delivery] = services.emit(cast.org, EventType.JOB_SUCCEEDED, {"id": 1})

    services.attempt(delivery.pk)

    delivery.refresh_from_db()
    assert receiver.requests == []
    assert "resolves to the private address 127.0.0.1" in delivery.last_error
    assert "WEBHOOK_ALLOW_PRIVATE" in delivery.last_error


def test_it_records_a_secret_it_cannot_decrypt_instead_of_crashing(cast: Cast) -> None:
    hook = endpoint(cast.org, "https://a.example.com/hook")
    WebhookEndpoint.objects.filter(pk=hook.pk).update(secret_encrypted="written-under-a-key-since-removed")
    [delivery] = services.emit(cast.org, EventType.JOB_SUCCEEDED, {"id": 1})

    services.attempt(delivery.pk)

    delivery.refresh_from_db()
    assert delivery.attempts == 1
    assert delivery.status == WebhookDelivery.Status.PENDING  # retried: the operator may restore the key
    assert delivery.last_error.startswith("Not signed: A stored secret cannot be decrypted")


def test_a_name_that_resolves_elsewhere_after_the_check_does_not_move_the_delivery(
    cast: Cast, receiver: Receiver, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the check sees an allowed address, a second lookup would give another. Only one is made."""
    settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.example.com"]  # a listed host may be private: the receiver's 127.0.0.1
    port = int(receiver.url.split(":")[2].split("/")[0])
    answers = iter(["127.0.0.1", "10.255.255.1"])  # the second would be another machine of the server's network
    lookups = []

    real = socket.getaddrinfo

    def rebinding_dns(host: str, port_: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "hooks.example.com":
            return real(host, port_, *args, **kwargs)  # an address: itself
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port_))]

    endpoint(cast.org, f"http://hooks.example.com:{port}/hooks/distillery")
    [delivery] = services.emit(cast.org, EventType.JOB_SUCCEEDED, {"id": 1})
    monkeypatch.setattr(socket, "getaddrinfo", rebinding_dns)

    services.attempt(delivery.pk)

    after = WebhookDelivery.objects.get(pk=delivery.pk)
    assert after.status == WebhookDelivery.Status.SUCCEEDED, after.last_error
    assert lookups == ["hooks.example.com"]
    assert receiver.requests[0].headers["host"] == f"hooks.example.com:{port}"


def test_it_gives_up_on_a_delivery_whose_endpoint_was_disabled(cast: Cast) -> None:
    hook = endpoint(cast.org, "https://a.example.com/hook")
    [delivery] = services.emit(cast.org, EventType.JOB_SUCCEEDED, {"id": 1})
    hook.is_active = False
    hook.save()

    services.attempt(delivery.pk)

    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.FAILED
    assert delivery.attempts == 0
    assert "disabled" in delivery.last_error


@pytest.mark.usefixtures("private_webhooks")
def test_a_redelivery_is_a_new_delivery_with_the_same_webhook_id(cast: Cast, receiver: Receiver) -> None:
    endpoint(cast.org, receiver.url)
    [first] = services.emit(cast.org, EventType.JOB_SUCCEEDED, {"id": 7})
    services.attempt(first.pk)
    first.refresh_from_db()

    again = services.redeliver(first)
    services.attempt(again.pk)

    assert again.pk != first.pk
    assert again.message_id == first.message_id
    assert [json.loads(r.body)["data"] for r in receiver.requests] == [{"id": 7}, {"id": 7}]
    assert WebhookDelivery.objects.get(pk=again.pk).status == WebhookDelivery.Status.SUCCEEDED


def test_it_refuses_to_redeliver_while_pending_or_disabled(cast: Cast) -> None:
    hook = endpoint(cast.org, "https://a.example.com/hook")
    [delivery] = services.emit(cast.org, EventType.JOB_SUCCEEDED, {"id": 7})
    with pytest.raises(services.WebhookError, match="still being tried"):
        services.redeliver(delivery)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=WebhookDelivery.Status.FAILED)
    hook.is_active = False
    hook.save()
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery.pk)
    with pytest.raises(services.WebhookError, match="disabled"):
        services.redeliver(delivery)
    with pytest.raises(services.WebhookError, match="disabled"):
        services.send_test_event(hook, "olivia")
    assert WebhookDelivery.objects.count() == 1


def test_a_ping_goes_to_its_endpoint_whatever_it_subscribes_to(cast: Cast) -> None:
    hook = endpoint(cast.org, "https://a.example.com/hook", events=[])
    other = endpoint(cast.org, "https://b.example.com/hook")

    delivery = services.send_test_event(hook, cast.owner.get_username())

    assert delivery.endpoint == hook
    assert delivery.event_type == "ping"
    assert not other.deliveries.exists()
    assert delivery.payload["data"] == {
        "object": "ping",
        "endpoint": hook.pk,
        "organization": cast.org.slug,
        "sent_by": "olivia",
    }
    assert_matches({"$ref": "#/components/schemas/PingEvent"}, delivery.payload)


@pytest.mark.usefixtures("private_webhooks")
def test_the_sweep_sends_the_due_deliveries_and_forgets_old_finished_ones(
    cast: Cast, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint(cast.org, receiver.url)
    [due] = services.emit(cast.org, EventType.JOB_SUCCEEDED, {"id": 1})
    [later] = services.emit(cast.org, EventType.JOB_FAILED, {"id": 2})
    WebhookDelivery.objects.filter(pk=later.pk).update(next_attempt_at=timezone.now() + timedelta(minutes=5))
    # The sweep's messages run here, in this process, instead of on a worker.
    monkeypatch.setattr(tasks.deliver_webhook, "delay", lambda delivery_id: tasks.deliver_webhook.apply((delivery_id,)))

    old = services.emit(cast.org, EventType.JOB_FAILED, {"id": 3})[0]
    stuck = services.emit(cast.org, EventType.JOB_FAILED, {"id": 4})[0]
    long_ago = timezone.now() - timedelta(days=31)
    WebhookDelivery.objects.filter(pk=old.pk).update(status="failed", created_at=long_ago, next_attempt_at=None)
    WebhookDelivery.objects.filter(pk=stuck.pk).update(
        created_at=long_ago, next_attempt_at=timezone.now() + timedelta(hours=1)
    )

    assert tasks.sweep_webhooks() == 1

    assert WebhookDelivery.objects.get(pk=due.pk).status == WebhookDelivery.Status.SUCCEEDED
    assert WebhookDelivery.objects.get(pk=later.pk).attempts == 0
    assert [json.loads(r.body)["type"] for r in receiver.requests] == ["job.succeeded"]
    # A finished delivery past the log's 30 days is forgotten; a pending one is kept, whatever its age.
    assert not WebhookDelivery.objects.filter(pk=old.pk).exists()
    assert WebhookDelivery.objects.filter(pk=stuck.pk).exists()


def _age(delivery: WebhookDelivery, days: float) -> None:
    """Make `delivery` look `days` old (a run of failures takes days of retries in real time)."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(created_at=timezone.now() - timedelta(days=days))


@pytest.fixture
def failing(cast: Cast, receiver: Receiver, settings: Any, private_webhooks: None) -> WebhookEndpoint:
    """An endpoint enabled a month ago whose receiver answers 503; one attempt per delivery; disabled after 5 days."""
    settings.WEBHOOK_RETRY_DELAYS_SECONDS = []  # one attempt, then failed
    settings.WEBHOOK_DISABLE_AFTER_DAYS = 5
    receiver.status = 503
    hook = endpoint(cast.org, receiver.url, created_by=cast.admin)
    WebhookEndpoint.objects.filter(pk=hook.pk).update(enabled_at=timezone.now() - timedelta(days=30))
    hook.refresh_from_db()
    return hook


def _event(cast: Cast, job_id: int) -> WebhookDelivery:
    """One job.failed event, attempted at once."""
    [delivery] = services.emit(cast.org, EventType.JOB_FAILED, {"id": job_id})
    services.attempt(delivery.pk)
    return delivery


def test_it_disables_an_endpoint_whose_every_delivery_failed_for_days(
    cast: Cast, receiver: Receiver, failing: WebhookEndpoint
) -> None:
    """As Stripe and Svix do: a receiver gone for good is not retried for ever, event after event."""
    first = _event(cast, 1)
    _age(first, 4)
    _event(cast, 2)  # failing for 4 days: still enabled
    failing.refresh_from_db()
    assert failing.is_active
    _age(first, 6)

    _event(cast, 3)

    failing.refresh_from_db()
    assert not failing.is_active
    assert failing.disabled_at is not None
    assert failing.disabled_reason.startswith("Disabled automatically: every delivery since ")
    assert "(3 in all)" in failing.disabled_reason
    assert services.emit(cast.org, EventType.JOB_FAILED, {"id": 4}) == []
    # One notice for the last failure, saying the endpoint is off, with a link to its page; the earlier two
    # failures had their own.
    notes = list(Notification.objects.filter(recipient=cast.admin).order_by("pk"))
    assert len(notes) == 3
    assert notes[-1].message.startswith(f"Webhook endpoint {receiver.url} was disabled: every delivery failed for 5")
    assert notes[-1].url == f"/org/webhooks/{failing.pk}/"
    event = AuditEvent.objects.get(organization=cast.org, action=AuditEvent.Action.WEBHOOK_CHANGED)
    assert (event.actor, event.detail["is_active"], event.target) == (None, False, receiver.url)


def test_it_keeps_an_endpoint_that_delivered_anything_within_the_window(
    cast: Cast, receiver: Receiver, failing: WebhookEndpoint
) -> None:
    _age(_event(cast, 1), 10)
    receiver.status = 200
    delivered = _event(cast, 2)  # 2 days ago, it answered
    WebhookDelivery.objects.filter(pk=delivered.pk).update(last_attempt_at=timezone.now() - timedelta(days=2))
    receiver.status = 500

    _event(cast, 3)

    failing.refresh_from_db()
    assert failing.is_active
    run = failing.failing_since()
    assert run is not None
    assert run[1] == 1  # the run began after the last delivery


def test_enabling_an_endpoint_again_starts_a_new_count_of_failures(cast: Cast, failing: WebhookEndpoint) -> None:
    _age(_event(cast, 1), 10)
    _event(cast, 2)
    failing.refresh_from_db()
    assert not failing.is_active

    failing.set_active(True)
    failing.save()
    _event(cast, 3)

    failing.refresh_from_db()
    assert failing.is_active  # the failures before it was enabled again do not count
    assert (failing.disabled_reason, failing.disabled_at) == ("", None)


def test_it_never_disables_an_endpoint_when_the_setting_is_zero(
    cast: Cast, failing: WebhookEndpoint, settings: Any
) -> None:
    settings.WEBHOOK_DISABLE_AFTER_DAYS = 0
    _age(_event(cast, 1), 20)
    _event(cast, 2)

    failing.refresh_from_db()
    assert failing.is_active
