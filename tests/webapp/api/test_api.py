from __future__ import annotations

import json
from typing import Any

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


# ------------------------------------------------------------------ OpenAI-compatible parameters (no engine needed)
@pytest.fixture
def completions(settings: Any, tokens: dict[str, tuple[ApiToken, str]]) -> Any:
    """POST a chat completion body; the engine is a closed port, so a valid request would answer 503."""
    settings.INFERENCE_URL = "http://127.0.0.1:9"
    settings.API_RATE_LIMIT_PER_MINUTE = 0

    def post(body: dict[str, Any]) -> Any:
        url = reverse("openai:chat-completions")
        return Client().post(url, json.dumps(body), content_type="application/json", headers=bearer(tokens["a"][1]))

    return post


HELLO = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        # Each was a 500 before it was validated (the error each raised is named).
        ({"temperature": 10**400}, "temperature"),  # OverflowError in math.isfinite
        ({"top_p": -(10**400)}, "top_p"),  # OverflowError in math.isfinite
        ({"messages": [{"role": ["user"], "content": "Hi"}]}, "messages"),  # TypeError: unhashable type: 'list'
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages"),  # TypeError in join
    ],
)
def test_it_answers_400_to_parameters_that_used_to_crash(completions: Any, changes: dict[str, Any], param: str) -> None:
    response = completions({"model": "base", "messages": HELLO, **changes})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_parameter", param)


def test_it_answers_400_to_a_body_over_the_upload_limit(completions: Any, settings: Any) -> None:
    # Was Django's HTML 400 page (RequestDataTooBig), not the API's JSON error.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    response = completions({"model": "base", "messages": [{"role": "user", "content": "x" * 200}]})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "The request body is too large."


def test_it_still_takes_integer_sampling_values_within_range(completions: Any) -> None:
    """An integer temperature is a number like any other: valid ones reach the (here closed) engine."""
    response = completions({"model": "base", "messages": HELLO, "temperature": 2, "top_p": 1})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "engine_unavailable"


def test_the_openai_api_serves_unmetered_when_redis_is_away(
    tokens: dict[str, tuple[ApiToken, str]], monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    import redis

    from webapp.api import auth

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("Connection refused")

    settings.INFERENCE_URL = "http://127.0.0.1:9"
    monkeypatch.setattr(auth.cache, "add", unreachable)
    response = Client().post(
        "/v1/chat/completions",
        {"model": "base", "messages": [{"role": "user", "content": "Hi"}]},
        content_type="application/json",
        headers=bearer(tokens["a"][1]),
    )
    assert response.status_code == 503  # past the rate limit, on to the (absent) engine: not a 500
    assert response.json()["error"]["code"] == "engine_unavailable"


def test_a_models_only_token_reaches_the_openai_api_and_nothing_else(cast: Cast, settings: Any) -> None:
    settings.INFERENCE_URL = "http://127.0.0.1:9"  # closed: a request that passes the token check gets 503
    settings.INFERENCE_TIMEOUT_SECONDS = 2.0
    token, plaintext = ApiToken.issue(organization=cast.org, name="App", created_by=cast.owner, scope="models")
    client = Client(headers=bearer(plaintext))

    assert client.get("/v1/models").status_code == 200
    chat = {"model": "base", "messages": [{"role": "user", "content": "Hi"}]}
    assert client.post("/v1/chat/completions", json.dumps(chat), content_type="application/json").status_code == 503
    for url in (reverse("api:organization"), reverse("api:corpora"), reverse("api:token", args=[token.pk])):
        refused = client.get(url)
        assert refused.status_code == 403, url
        assert refused.json()["error"]["type"] == "permission_error"
        assert refused.json()["error"]["code"] == "insufficient_scope"
    _, full = ApiToken.issue(organization=cast.org, name="CI", created_by=cast.owner)
    listed = Client(headers=bearer(full)).get(reverse("api:tokens")).json()["data"]
    assert {item["name"]: item["scope"] for item in listed} == {"App": "models", "CI": "full"}


@pytest.mark.usefixtures("fresh_rate_window")
def test_the_rate_limit_counts_every_api_request_of_the_org(
    cast: Cast, tokens: dict[str, tuple[ApiToken, str]], settings: Any
) -> None:
    settings.API_RATE_LIMIT_PER_MINUTE = 3
    client = Client(headers=bearer(tokens["a"][1]))
    assert [client.get(url).status_code for url in ("/api/v1/organization", "/v1/models", "/api/v1/corpora")] == [
        200,
        200,
        200,
    ]
    limited = client.get("/api/v1/jobs")
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert int(limited["Retry-After"]) >= 1
    # Another org has its own budget.
    assert Client(headers=bearer(tokens["b"][1])).get("/api/v1/organization").status_code == 200
