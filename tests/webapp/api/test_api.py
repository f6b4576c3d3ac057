from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.webapp.conftest import Cast
from webapp.tenants.models import ApiToken

pytestmark = pytest.mark.django_db


def bearer(plaintext: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {plaintext}"}


@pytest.fixture
def tokens(cast: Cast) -> dict[str, tuple[ApiToken, str]]:
    return {
        "a": ApiToken.issue(organization=cast.org, name="A", created_by=cast.owner),
        "b": ApiToken.issue(organization=cast.other_org, name="B", created_by=cast.outsider),
    }


def test_it_answers_for_the_tokens_own_org(cast: Cast, tokens: dict[str, tuple[ApiToken, str]]) -> None:
    response = Client().get(reverse("api:organization"), headers=bearer(tokens["a"][1]))
    assert response.status_code == 200
    assert response.json()["slug"] == cast.org.slug


def test_it_hides_another_orgs_objects_from_a_token(tokens: dict[str, tuple[ApiToken, str]]) -> None:
    other_token, _ = tokens["b"]
    response = Client().get(reverse("api:token", args=[other_token.pk]), headers=bearer(tokens["a"][1]))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    listed = Client().get(reverse("api:tokens"), headers=bearer(tokens["a"][1])).json()["data"]
    assert [item["name"] for item in listed] == ["A"]


def test_it_never_returns_a_tokens_secret(tokens: dict[str, tuple[ApiToken, str]]) -> None:
    token, plaintext = tokens["a"]
    body = Client().get(reverse("api:token", args=[token.pk]), headers=bearer(plaintext)).content.decode()
    assert plaintext not in body
    assert token.token_hash not in body


def test_it_refuses_a_revoked_token(cast: Cast, tokens: dict[str, tuple[ApiToken, str]]) -> None:
    token, plaintext = tokens["a"]
    token.revoke(by=cast.owner)
    response = Client().get(reverse("api:organization"), headers=bearer(plaintext))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("header", [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}])
def test_it_explains_a_missing_token(db: None, header: dict[str, str]) -> None:
    response = Client().get(reverse("api:organization"), headers=header)
    assert response.status_code == 401
    assert "Authorization: Bearer" in response.json()["error"]["message"]


def test_it_ignores_a_browser_session_on_the_api(cast: Cast) -> None:
    response = cast.client_for("owner").get(reverse("api:organization"))
    assert response.status_code == 401
