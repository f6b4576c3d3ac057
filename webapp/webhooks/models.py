"""Webhooks: an org's HTTP endpoints, and each delivery of an event to one of them.

Deliveries follow Standard Webhooks (https://www.standardwebhooks.com), the scheme OpenAI and Svix use: a JSON
body `{"type", "timestamp", "data"}`, signed with HMAC-SHA256 over `id.timestamp.body` in the `webhook-id`,
`webhook-timestamp` and `webhook-signature` headers. A receiver verifies it with the `standardwebhooks` package
or OpenAI's client (`client.webhooks.verify_signature`), and de-duplicates on `webhook-id`: delivery is at least
once, and every attempt and redelivery of one event carries the same id.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from webapp.core.encryption import decrypt, encrypt
from webapp.tenants.models import Organization, TenantOwnedModel


class EventType(models.TextChoices):
    CORPUS_READY = "corpus.ready", "corpus.ready: an ingest made a new version of a corpus, ready to distil"
    CORPUS_FAILED = "corpus.failed", "corpus.failed: an ingest failed"
    JOB_SUCCEEDED = "job.succeeded", "job.succeeded: a distillation job finished and registered its expert"
    JOB_FAILED = "job.failed", "job.failed: a distillation job failed"
    JOB_CANCELLED = "job.cancelled", "job.cancelled: a distillation job was cancelled"
    # Sent only on demand, from the endpoint's page, whatever the endpoint subscribes to.
    PING = "ping", "ping: a test event"


SUBSCRIBABLE_EVENTS = [
    EventType.CORPUS_READY,
    EventType.CORPUS_FAILED,
    EventType.JOB_SUCCEEDED,
    EventType.JOB_FAILED,
    EventType.JOB_CANCELLED,
]


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class WebhookEndpoint(TenantOwnedModel):
    """A URL that receives the org's events. The signing secret is stored encrypted: signing needs it in clear."""

    url = models.URLField(max_length=2000, help_text="Where the events are POSTed, e.g. https://ci.example.com/hooks")
    description = models.CharField(max_length=200, blank=True, help_text="What listens there, e.g. “Deploy bot”.")
    events = models.JSONField(default=list, help_text="The event types this endpoint receives.")
    secret_encrypted = models.TextField(editable=False)
    is_active = models.BooleanField(default=True)
    # When it was last enabled: a run of failed deliveries that disables it counts from here at the earliest.
    enabled_at = models.DateTimeField(default=timezone.now)
    disabled_at = models.DateTimeField(null=True, blank=True)
    # Why the server disabled it (every delivery failed for WEBHOOK_DISABLE_AFTER_DAYS); blank when a person did.
    disabled_reason = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.url

    @classmethod
    def create(
        cls, *, organization: Organization, url: str, description: str, events: list[str], created_by: Any
    ) -> tuple[WebhookEndpoint, str]:
        """A new endpoint and its signing secret (shown to the user once; it can be rolled, not read back)."""
        secret = new_secret()
        endpoint = cls.objects.create(
            organization=organization,
            url=url,
            description=description,
            events=list(events),
            secret_encrypted=encrypt(secret),
            created_by=created_by,
        )
        return endpoint, secret

    @property
    def secret(self) -> str:
        return decrypt(self.secret_encrypted)

    def roll_secret(self) -> str:
        """A new signing secret: deliveries from now on are signed with it, the old one stops verifying."""
        secret = new_secret()
        self.secret_encrypted = encrypt(secret)
        self.save(update_fields=["secret_encrypted"])
        return secret

    # What `set_active` changes: the fields a caller saves after it.
    ACTIVATION_FIELDS = ("is_active", "enabled_at", "disabled_at", "disabled_reason")

    def set_active(self, active: bool, *, reason: str = "") -> None:
        """Enable or disable it (unsaved). Enabling starts a new count of failures; `reason` says why the server
        disabled it, and is cleared when anyone enables it again."""
        if active == self.is_active:
            return
        self.is_active = active
        if active:
            self.enabled_at, self.disabled_at, self.disabled_reason = timezone.now(), None, ""
        else:
            self.disabled_at, self.disabled_reason = timezone.now(), reason[:300]

    def failing_since(self) -> tuple[datetime, int] | None:
        """(when the run began, how many deliveries it failed) of the failures since the endpoint last delivered
        an event or was enabled, or None when it has not failed a delivery for good since then."""
        floor = self.enabled_at
        last_delivered = self.deliveries.filter(status=WebhookDelivery.Status.SUCCEEDED).aggregate(
            at=models.Max("last_attempt_at")
        )["at"]
        if last_delivered is not None and last_delivered > floor:
            floor = last_delivered
        failed = self.deliveries.filter(status=WebhookDelivery.Status.FAILED, created_at__gte=floor)
        run = failed.aggregate(first=models.Min("created_at"), count=models.Count("id"))
        return None if run["first"] is None else (run["first"], run["count"])

    def wants(self, event_type: str) -> bool:
        return self.is_active and (event_type == EventType.PING or event_type in self.events)


class WebhookDelivery(TenantOwnedModel):
    """One event on its way to one endpoint: the record of every attempt's outcome, and the next one's time."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Delivered"
        FAILED = "failed", "Failed"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    # The `webhook-id` header: one per event, the same on every attempt and redelivery, for receivers to dedupe.
    message_id = models.CharField(max_length=64)
    event_type = models.CharField(max_length=40, choices=EventType.choices)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # Pending: when the next attempt is due. An attempt in progress pushes it a lease ahead, so a worker that
    # died mid-send is replaced by beat's sweep and two workers never send the same attempt.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    response_status = models.PositiveIntegerField(null=True, blank=True)
    response_excerpt = models.TextField(blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="webhook_delivery_due")]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.endpoint_id} ({self.status})"

    @classmethod
    def queued(cls, endpoint: WebhookEndpoint, message_id: str, event_type: str, payload: Any) -> WebhookDelivery:
        """An unsaved delivery of one event to `endpoint`, due now."""
        now = timezone.now()
        return cls(
            organization_id=endpoint.organization_id,
            endpoint=endpoint,
            message_id=message_id,
            event_type=event_type,
            payload=payload,
            next_attempt_at=now,
            created_at=now,
        )

    @classmethod
    def due(cls) -> models.QuerySet[WebhookDelivery]:
        return cls.objects.filter(status=cls.Status.PENDING, next_attempt_at__lte=timezone.now())

    @classmethod
    def expired(cls) -> models.QuerySet[WebhookDelivery]:
        """Finished deliveries past the log's retention (pending ones are kept whatever their age)."""
        cutoff = timezone.now() - timedelta(days=settings.WEBHOOK_LOG_RETENTION_DAYS)
        return cls.objects.exclude(status=cls.Status.PENDING).filter(created_at__lt=cutoff)

    @classmethod
    def claim(cls, delivery_id: int, lease: timedelta) -> WebhookDelivery | None:
        """Take a due delivery for one attempt (one conditional UPDATE), or None when it is not due or taken."""
        now = timezone.now()
        taken = cls.due().filter(pk=delivery_id).update(next_attempt_at=now + lease, last_attempt_at=now)
        return cls.objects.select_related("endpoint").get(pk=delivery_id) if taken else None

    def record_attempt(self, *, ok: bool, status_code: int | None, error: str, excerpt: str) -> None:
        """The outcome of the attempt just made: delivered, retried after the next delay, or failed for good."""
        self.attempts += 1
        self.response_status = status_code
        self.response_excerpt = excerpt
        self.last_error = "" if ok else error
        delays = settings.WEBHOOK_RETRY_DELAYS_SECONDS
        if ok:
            self.status, self.next_attempt_at = self.Status.SUCCEEDED, None
        elif self.attempts <= len(delays):
            self.next_attempt_at = timezone.now() + timedelta(seconds=delays[self.attempts - 1])
        else:
            self.status, self.next_attempt_at = self.Status.FAILED, None
        self.save(
            update_fields=[
                "attempts",
                "response_status",
                "response_excerpt",
                "last_error",
                "status",
                "next_attempt_at",
            ]
        )

    def give_up(self, reason: str) -> None:
        """Stop without another attempt (the endpoint was disabled)."""
        self.status, self.next_attempt_at, self.last_error = self.Status.FAILED, None, reason
        self.save(update_fields=["status", "next_attempt_at", "last_error"])

    @property
    def max_attempts(self) -> int:
        return len(settings.WEBHOOK_RETRY_DELAYS_SECONDS) + 1
