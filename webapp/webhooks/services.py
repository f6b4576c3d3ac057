"""Webhook rules: which endpoints an event goes to, what it says, and one delivery attempt.

1. `emit` writes one delivery row per subscribed active endpoint of the org, in the caller's transaction, and
   sends each to the workers once it commits. The row is the record: a lost message or a dead worker is made
   good by beat's sweep (`workers/tasks/webhooks.py`), which sends every due delivery again.
2. `attempt` claims a due delivery with a conditional UPDATE, checks the URL again (a name may resolve
   elsewhere by now), signs and POSTs it, and records the outcome: delivered, retried after the next of
   WEBHOOK_RETRY_DELAYS_SECONDS, or failed once they are spent.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from webapp.core.encryption import DecryptionError
from webapp.core.outbound import OutboundPolicy, Refusal, allowed_address, url_refusal
from webapp.tenants.models import AuditEvent, Organization
from webapp.webhooks.models import EventType, WebhookDelivery, WebhookEndpoint
from webapp.webhooks.sender import SendOutcome, send

logger = logging.getLogger(__name__)


def outbound_policy() -> OutboundPolicy:
    return OutboundPolicy(
        allow_private=settings.WEBHOOK_ALLOW_PRIVATE,
        allowed_hosts=settings.WEBHOOK_ALLOWED_HOSTS,
        noun="webhook",
        private_setting="WEBHOOK_ALLOW_PRIVATE",
        hosts_setting="WEBHOOK_ALLOWED_HOSTS",
    )


def check_url(url: str) -> str | None:
    """Why the server may not POST to `url`, or None."""
    return url_refusal(url, outbound_policy())


def _body(delivery: WebhookDelivery) -> str:
    return json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False)


def _send_on_commit(deliveries: list[WebhookDelivery]) -> None:
    def send_all() -> None:
        from workers.tasks.webhooks import deliver_webhook

        for delivery in deliveries:
            try:
                deliver_webhook.delay(delivery.pk)
            except Exception:  # the broker is down: the row stays due and beat's sweep sends it
                logger.warning("webhook delivery %s: not sent to the workers; the sweep will", delivery.pk)

    transaction.on_commit(send_all)


def emit(
    organization: Organization, event_type: str, data: dict[str, Any], *, only: WebhookEndpoint | None = None
) -> list[WebhookDelivery]:
    """Queue `event_type` with `data` to every active endpoint of `organization` that subscribes to it
    (or to `only`). Returns the deliveries made; none when no endpoint wants it."""
    endpoints = [only] if only is not None else WebhookEndpoint.objects.for_org(organization).filter(is_active=True)
    targets = [endpoint for endpoint in endpoints if endpoint.wants(event_type)]
    if not targets:
        return []
    timestamp = timezone.now().isoformat().replace("+00:00", "Z")
    payload = {"type": event_type, "timestamp": timestamp, "data": data}
    message_id = f"msg_{uuid.uuid4().hex}"
    deliveries = WebhookDelivery.objects.bulk_create(
        WebhookDelivery.queued(endpoint, message_id, event_type, payload) for endpoint in targets
    )
    _send_on_commit(deliveries)
    return deliveries


class WebhookError(Exception):
    """A request the endpoint's state refuses (disabled, or the delivery still being tried); the message says so."""


def send_test_event(endpoint: WebhookEndpoint, sent_by: str) -> WebhookDelivery:
    """A `ping` to one endpoint, from its page or the API: the way to check the receiver and its signature check."""
    if not endpoint.is_active:
        raise WebhookError("The endpoint is disabled: enable it to send it events.")
    data = {"object": "ping", "endpoint": endpoint.pk, "organization": endpoint.organization.slug, "sent_by": sent_by}
    return emit(endpoint.organization, EventType.PING, data, only=endpoint)[0]


def redeliver(delivery: WebhookDelivery) -> WebhookDelivery:
    """The same event again, as a new delivery with the same `webhook-id` (a receiver that got it dedupes)."""
    if not delivery.endpoint.is_active:
        raise WebhookError("The endpoint is disabled: enable it to redeliver.")
    if delivery.status == WebhookDelivery.Status.PENDING:
        raise WebhookError("This delivery is still being tried.")
    copy = WebhookDelivery.queued(delivery.endpoint, delivery.message_id, delivery.event_type, delivery.payload)
    copy.save()
    _send_on_commit([copy])
    return copy


def attempt_lease() -> timedelta:
    """How long a claimed attempt may take before beat's sweep sends the delivery again (its worker died)."""
    return timedelta(seconds=4 * settings.WEBHOOK_TIMEOUT_SECONDS + 30)


def attempt(delivery_id: int) -> WebhookDelivery | None:
    """One attempt at a due delivery; None when it is not due (delivered, scheduled later, or another worker's)."""
    delivery = WebhookDelivery.claim(delivery_id, lease=attempt_lease())
    if delivery is None:
        return None
    endpoint = delivery.endpoint
    if not endpoint.is_active:
        delivery.give_up("The endpoint was disabled before this delivery was sent.")
        return delivery
    outcome = _send(delivery)
    delivery.record_attempt(
        ok=outcome.ok, status_code=outcome.status_code, error=outcome.error, excerpt=outcome.excerpt
    )
    if delivery.status == WebhookDelivery.Status.FAILED:
        _notify_failure(delivery, disabled=_disable_if_failing(endpoint))
    return delivery


def _send(delivery: WebhookDelivery) -> SendOutcome:
    """The attempt itself, or why it could not be made (a refused URL, a secret no key decrypts)."""
    endpoint = delivery.endpoint
    address = allowed_address(endpoint.url, outbound_policy())  # checked again: the name may resolve elsewhere now
    if isinstance(address, Refusal):
        return SendOutcome(False, None, address.refusal, "")
    try:
        secret = endpoint.secret
    except DecryptionError as error:  # keys changed without rotation: say so in the log, do not crash the task
        return SendOutcome(False, None, f"Not signed: {error}", "")
    timeout = settings.WEBHOOK_TIMEOUT_SECONDS
    return send(endpoint.url, secret, delivery.message_id, _body(delivery), timeout, address=address)


def _disable_if_failing(endpoint: WebhookEndpoint) -> bool:
    """Disable an endpoint whose every delivery failed for WEBHOOK_DISABLE_AFTER_DAYS (0: never), as Stripe and
    Svix do: a receiver gone for good would otherwise be retried for ever, event after event. Whether it did."""
    days = settings.WEBHOOK_DISABLE_AFTER_DAYS
    run = endpoint.failing_since() if days and endpoint.is_active else None
    if run is None or timezone.now() - run[0] < timedelta(days=days):
        return False
    first, count = run
    reason = (
        f"Disabled automatically: every delivery since {first:%Y-%m-%d %H:%M} UTC failed ({count} in all). "
        "Enable it again once the receiver answers."
    )
    endpoint.set_active(False, reason=reason)
    endpoint.save(update_fields=endpoint.ACTIVATION_FIELDS)
    AuditEvent.record(
        endpoint.organization,
        None,
        AuditEvent.Action.WEBHOOK_CHANGED,
        target=endpoint.url,
        detail={"is_active": False, "reason": reason},
    )
    logger.warning("webhook endpoint %s disabled: every delivery failed for %s days", endpoint.pk, days)
    return True


def _notify_failure(delivery: WebhookDelivery, *, disabled: bool) -> None:
    """A delivery that spent every retry tells whoever added the endpoint, in the app: nothing else would.

    When that failure also disabled the endpoint, the one notice says so and links to the endpoint's page.
    """
    from webapp.jobs.models import Notification

    endpoint = delivery.endpoint
    creator = endpoint.created_by
    if creator is None or endpoint.organization.role_of(creator) is None:
        return
    failed = f"{delivery.event_type} failed after {delivery.attempts} attempts: {delivery.last_error}"
    if disabled:
        days = settings.WEBHOOK_DISABLE_AFTER_DAYS
        message = f"Webhook endpoint {endpoint.url} was disabled: every delivery failed for {days} days. Last, {failed}"
        url = reverse("webhooks:detail", args=[endpoint.pk])
    else:
        message = f"Webhook {delivery.event_type} to {endpoint.url} failed after {delivery.attempts} attempts: "
        message += delivery.last_error
        url = reverse("webhooks:delivery", args=[endpoint.pk, delivery.pk])
    Notification.objects.create(organization=endpoint.organization, recipient=creator, message=message[:300], url=url)


def job_ended(job: Any) -> list[WebhookDelivery]:
    """`job.succeeded`, `job.failed` or `job.cancelled` with the job as the jobs API gives it."""
    from webapp.jobs.presenters import job_json

    event_type = f"job.{job.status}"
    if event_type not in EventType.values:
        return []
    return emit(job.organization, event_type, job_json(job))


def corpus_ingested(version: Any) -> list[WebhookDelivery]:
    """`corpus.ready` or `corpus.failed` with the corpus and the version as the corpora API gives it."""
    from webapp.corpora.presenters import version_json

    event_type = {"ready": EventType.CORPUS_READY, "failed": EventType.CORPUS_FAILED}.get(version.status)
    if event_type is None:
        return []
    corpus = version.corpus
    data = {
        "corpus": {"id": corpus.pk, "name": corpus.name},
        "version": {"object": "corpus.version", **version_json(version)},
    }
    return emit(corpus.organization, event_type, data)
