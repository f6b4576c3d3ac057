from __future__ import annotations

import pytest
from django.test import Client, override_settings

from tests.webapp.conftest import Cast


@pytest.mark.django_db
def test_it_serves_the_landing_page_to_visitors() -> None:
    body = Client().get("/").content.decode()
    assert "Sign up" in body
    assert "htmx" in body  # the shipped htmx script, served locally


def test_it_wires_the_csrf_token_into_htmx_requests(cast: Cast) -> None:
    body = cast.client_for("member").get("/").content.decode()
    assert 'hx-headers=\'{"X-CSRFToken": "' in body


@override_settings(DEBUG=False)
def test_it_answers_a_friendly_404(cast: Cast) -> None:
    response = cast.client_for("member").get("/no/such/page/")
    assert response.status_code == 404
    assert "Not found" in response.content.decode()


def test_it_serves_htmx_from_local_static_files(db: None) -> None:
    page = Client().get("/").content.decode()
    src = page.split('<script src="')[1].split('"')[0]
    assert src.startswith("/static/")
    response = Client().get(src)
    assert response.status_code == 200
