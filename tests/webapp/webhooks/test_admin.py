"""The operator's view in Django's admin: endpoints and deliveries, never the signing secret."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.webapp.conftest import Cast, make_user
from webapp.webhooks import services
from webapp.webhooks.models import EventType, WebhookEndpoint

pytestmark = pytest.mark.django_db


def test_staff_see_endpoints_and_deliveries_but_not_the_secret(cast: Cast) -> None:
    hook, secret = WebhookEndpoint.create(
        organization=cast.org, url="https://ci.example.com/h", description="", events=["job.failed"], created_by=None
    )
    delivery = services.emit(cast.org, EventType.JOB_FAILED, {"id": 5})[0]
    staff = Client()
    staff.force_login(make_user("root", is_staff=True, is_superuser=True))

    pages = [
        "/admin/webhooks/webhookendpoint/",
        f"/admin/webhooks/webhookendpoint/{hook.pk}/change/",
        "/admin/webhooks/webhookdelivery/",
        f"/admin/webhooks/webhookdelivery/{delivery.pk}/change/",
    ]
    for url in pages:
        response = staff.get(url)
        assert response.status_code == 200, url
        assert secret not in response.content.decode()
        assert hook.secret_encrypted not in response.content.decode()
    assert delivery.message_id in staff.get(pages[3]).content.decode()
