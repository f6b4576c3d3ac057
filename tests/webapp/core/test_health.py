from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.webapp.conftest import Cast, make_user


@pytest.fixture
def staff_client(db: None) -> Client:
    client = Client()
    client.force_login(make_user("sam", is_staff=True))
    return client


@pytest.mark.parametrize("who", ["owner", "member", "anonymous"])
def test_it_keeps_the_health_page_to_staff(cast: Cast, who: str) -> None:
    response = cast.client_for(who).get(reverse("core:health"))
    assert response.status_code == 302  # to the admin login


def test_it_reports_a_queue_without_workers_clearly(staff_client: Client) -> None:
    response = staff_client.get(reverse("core:health-json"))
    assert response.status_code == 503
    checks = {check["name"]: check for check in response.json()["checks"]}
    assert checks["database"]["status"] == "ok"
    assert checks["redis"]["status"] == "ok"
    assert checks["queue:gpu"]["status"] == "fail"
    assert "No worker consumes the 'gpu' queue: distillation jobs do not start" in checks["queue:gpu"]["message"]
    assert checks["queue:ops"]["status"] == "fail"
    assert "webhooks are not delivered" in checks["queue:ops"]["message"]
    assert "-Q ops --hostname ops@%h --pool threads" in checks["queue:ops"]["message"]


def test_it_gives_anonymous_monitors_only_the_status(db: None) -> None:
    response = Client().get(reverse("core:health-json"))
    assert response.json() == {"status": "fail"}


@pytest.mark.celery_worker
def test_it_shows_green_with_a_worker_on_each_queue(staff_client: Client, celery_workers: dict[str, str]) -> None:
    response = staff_client.get(reverse("core:health"))
    body = response.content.decode()
    assert response.status_code == 200
    assert "All systems go" in body
    assert celery_workers["cpu"] in body
    assert celery_workers["gpu"] in body
    assert celery_workers["ops"] in body
    json_response = Client().get(reverse("core:health-json"))
    assert json_response.status_code == 200
    assert json_response.json() == {"status": "ok"}


@pytest.mark.celery_worker
def test_it_refreshes_the_checks_as_a_partial_for_htmx(staff_client: Client, celery_workers: dict[str, str]) -> None:
    body = staff_client.get(reverse("core:health"), headers={"HX-Request": "true"}).content.decode()
    assert 'id="health-overall"' in body
    assert "<html" not in body
