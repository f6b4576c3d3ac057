"""A test event from the page travels web → Redis → a real ops worker → the receiver, signed.

Only the ops worker runs: a delivery never waits for the cpu worker (busy for minutes with a large ingest).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from django.urls import reverse
from standardwebhooks import Webhook

from tests.conftest import worker_on_test_database
from tests.webapp.conftest import Cast
from tests.webapp.webhooks.receiver import Receiver
from webapp.celery import OPS_QUEUE
from webapp.webhooks.models import WebhookDelivery, WebhookEndpoint


@pytest.mark.celery_worker
@pytest.mark.django_db(transaction=True)
def test_a_real_ops_worker_delivers_the_test_event_sent_from_the_page(
    cast: Cast, receiver: Receiver, tmp_path: Path, settings: pytest.FixtureRequest
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True  # this process checks the URL on save, the worker before it sends
    hook, secret = WebhookEndpoint.create(
        organization=cast.org, url=receiver.url, description="", events=["job.succeeded"], created_by=None
    )
    with worker_on_test_database(tmp_path, "webhooks-test@distillery", OPS_QUEUE, WEBHOOK_ALLOW_PRIVATE="1"):
        cast.client_for("admin").post(reverse("webhooks:test", args=[hook.pk]))  # sent to the worker on commit

        [request] = receiver.wait_for(1)
        delivery = WebhookDelivery.objects.get()
        deadline = time.monotonic() + 30
        while delivery.status == WebhookDelivery.Status.PENDING:
            assert time.monotonic() < deadline, "the worker did not record the outcome"
            time.sleep(0.1)
            delivery.refresh_from_db()

    assert Webhook(secret).verify(request.body, request.headers)["data"]["sent_by"] == "adam"
    assert delivery.status == WebhookDelivery.Status.SUCCEEDED
    assert delivery.response_status == 200
