"""Webhook deliveries on the cpu queue: one attempt per task, and beat's sweep of due ones (retries included).

Retries are rows, not Celery countdowns: a delivery's `next_attempt_at` says when it is due, and the sweep
sends every due delivery each half minute. A countdown lives in the broker and a worker's memory, and is lost
with them; the row survives restarts, and the claim (webapp/webhooks/services.attempt) keeps each attempt single.
"""

from __future__ import annotations

from celery import shared_task

from webapp.webhooks import services
from webapp.webhooks.models import WebhookDelivery

# Deliveries sent per sweep at most: a receiver that was down for hours must not flood the queue at once.
SWEEP_BATCH = 500


@shared_task(name="distillery.webhooks.deliver", time_limit=180, soft_time_limit=150, ignore_result=True)
def deliver_webhook(delivery_id: int) -> str:
    delivery = services.attempt(delivery_id)
    return "not due" if delivery is None else delivery.status


@shared_task(name="distillery.webhooks.sweep", time_limit=60, expires=30, ignore_result=True)
def sweep_webhooks() -> int:
    """Beat, every 30 s: send the deliveries that are due (first attempts whose message was lost, retries), and
    forget finished ones older than WEBHOOK_LOG_RETENTION_DAYS, so the log does not grow without end."""
    due = list(WebhookDelivery.due().order_by("next_attempt_at").values_list("pk", flat=True)[:SWEEP_BATCH])
    for delivery_id in due:
        deliver_webhook.delay(delivery_id)
    WebhookDelivery.expired().delete()
    return len(due)
