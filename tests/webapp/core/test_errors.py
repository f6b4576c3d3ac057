"""Error pages under ASGI give back the database connection they used (webapp/core/errors.py)."""

from __future__ import annotations

import time

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test import AsyncClient

from tests.webapp.conftest import Cast

pytestmark = pytest.mark.django_db(transaction=True)


def open_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


@pytest.mark.parametrize("path", ["/no-such-page/", "/corpora/999999/", "/experts/999999/download/"])
def test_it_closes_the_connection_an_error_page_opened_on_a_pool_thread(cast: Cast, path: str) -> None:
    client = AsyncClient()
    client.force_login(cast.member)
    before = open_connections()

    for _ in range(3):
        response = async_to_sync(client.get)(path)
        assert response.status_code == 404
        # The page was rendered with the signed-in user's context (the base template's org switcher).
        assert cast.org.name in response.content.decode()

    # A connection left open by the error page stays; one a thread of an earlier test is still closing (a live
    # server finishing a streamed reply) goes within moments: wait for those before counting.
    deadline = time.monotonic() + 5
    while open_connections() > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_connections() == before


def test_it_still_renders_error_pages_for_a_plain_client(cast: Cast) -> None:
    client = cast.client_for("member")
    first = client.get("/no-such-page/")
    second = client.get("/corpora/999999/")  # the connection the first page closed opens again
    assert first.status_code == second.status_code == 404
    assert "Not found" in second.content.decode()
