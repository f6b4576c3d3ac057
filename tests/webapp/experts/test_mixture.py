"""The mixture page: router settings, "try a query" (htmx and full page, engine up, down or refusing), and the
org page's usage card fed by record_usage."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from tests.webapp.conftest import Cast
from tests.webapp.experts.conftest import make_expert
from webapp.experts import engine, services
from webapp.experts.models import Mixture, UsageCounter

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true", "HX-Target": "decision"}


def test_it_saves_valid_router_settings(cast: Cast) -> None:
    client = cast.client_for("member")
    data = {"top_k": "2", "temperature": "0.1", "threshold": "-0.5", "fallback_to_base": ""}
    response = client.post(reverse("experts:mixture"), data)
    assert response["Location"] == reverse("experts:mixture")
    mixture = Mixture.objects.get(organization=cast.org)
    assert mixture.router_settings() == {"top_k": 2, "temperature": 0.1, "threshold": -0.5, "fallback_to_base": False}
    assert Mixture.objects.filter(organization=cast.other_org).count() == 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("top_k", "0", "greater than or equal to 1"),
        ("top_k", "5", "less than or equal to 4"),
        ("top_k", "two", "Enter a whole number"),
        ("temperature", "0", "above 0"),
        ("temperature", "-1", "above 0"),
        ("temperature", "nan", ""),
        ("temperature", "inf", ""),
        ("threshold", "1.5", "less than or equal to 1"),
        ("threshold", "-2", "greater than or equal to -1"),
        ("threshold", "", "This field is required"),
    ],
)
def test_it_shows_errors_for_invalid_router_settings(cast: Cast, field: str, value: str, message: str) -> None:
    data = {"top_k": "1", "temperature": "0.05", "threshold": "0.3", "fallback_to_base": "on", field: value}
    response = cast.client_for("member").post(reverse("experts:mixture"), data)
    assert response.status_code == 200
    assert "errorlist" in response.content.decode()
    assert message in response.content.decode()
    assert Mixture.objects.get(organization=cast.org).router_settings()["top_k"] == 1


def test_it_says_the_engine_is_down_when_trying_a_query(cast: Cast) -> None:
    make_expert(cast.org)  # the mixture has a member, so the engine is asked (settings point at a closed port)
    client = cast.client_for("member")
    partial = client.post(reverse("experts:mixture-try"), {"query": "How much leave?"}, headers=HTMX)
    assert partial.status_code == 200
    body = partial.content.decode()
    assert "inference engine is not answering" in body
    assert "<html" not in body
    assert "Router settings" not in body
    full = client.post(reverse("experts:mixture-try"), {"query": "How much leave?"})
    assert full.status_code == 200
    body = full.content.decode()
    assert "inference engine is not answering" in body
    assert "Router settings" in body
    assert "<html" in body


def test_it_says_when_the_engine_refuses_the_query(cast: Cast, monkeypatch: pytest.MonkeyPatch) -> None:
    make_expert(cast.org)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise engine.EngineRejected("The query is too long.")

    monkeypatch.setattr(engine, "route", refuse)
    body = cast.client_for("member").post(reverse("experts:mixture-try"), {"query": "x"}, headers=HTMX)
    assert "refused the query: The query is too long." in body.content.decode()


def test_it_shows_the_decision_with_weights_and_score_bars(cast: Cast, monkeypatch: pytest.MonkeyPatch) -> None:
    leave = make_expert(cast.org, "Leave policy")
    pricing = make_expert(cast.other_org, "Pricing")
    services.publish(pricing, user=cast.outsider)
    services.include_shared(cast.org, pricing)
    sent: dict[str, Any] = {}
    leave_id, pricing_id = leave.active_version.engine_id, pricing.active_version.engine_id

    def route(organization: Any, query: str, mixture: Any = None) -> dict[str, Any]:
        sent.update(payload=engine.route_payload(organization, query, mixture))
        return {
            "experts": [[leave_id, 0.75], [pricing_id, 0.25]],
            "fallback": False,
            "best_score": 0.82,
            "scores": [[leave_id, 0.82], [pricing_id, -0.1]],
            "embed_ms": 3.2,
            "score_ms": 0.1,
            "unknown": [],
        }

    monkeypatch.setattr(engine, "route", route)
    response = cast.client_for("member").post(
        reverse("experts:mixture-try"), {"query": "How much leave?"}, headers=HTMX
    )
    body = response.content.decode()
    assert "Answered by" in body
    assert "<code>leave-policy</code> (75.0%)" in body
    assert "<code>globex/pricing</code> (25.0%)" in body
    assert 'style="width: 82.0%"' in body
    assert 'style="width: 0.0%"' in body
    assert "-0.100" in body
    # The candidates are the mixture's members only.
    ids = {candidate["id"] for candidate in sent["payload"]["candidates"]}
    assert ids == {leave_id, pricing_id}


def test_it_shows_the_fallback_to_the_base_model(cast: Cast, monkeypatch: pytest.MonkeyPatch) -> None:
    expert = make_expert(cast.org)
    decision = {"experts": [], "fallback": True, "best_score": 0.1, "scores": [[expert.active_version.engine_id, 0.1]]}
    monkeypatch.setattr(engine, "route", lambda *args, **kwargs: decision)
    body = cast.client_for("member").post(reverse("experts:mixture-try"), {"query": "Weather?"}).content.decode()
    assert "Falls back to the base model" in body
    assert "0.100" in body
    assert "Router settings" in body


def test_it_answers_without_the_engine_when_the_mixture_is_empty(cast: Cast) -> None:
    body = cast.client_for("member").post(reverse("experts:mixture-try"), {"query": "hi"}, headers=HTMX)
    assert "has no experts: the query goes to the base model" in body.content.decode()


def test_it_asks_for_a_query(cast: Cast) -> None:
    response = cast.client_for("member").post(reverse("experts:mixture-try"), {"query": ""}, headers=HTMX)
    assert response.status_code == 200
    assert "This field is required" in response.content.decode()


def test_it_lists_own_active_experts_and_included_shared_ones_as_members(cast: Cast) -> None:
    make_expert(cast.org, "Leave policy")
    make_expert(cast.org, "Switched off", status="disabled")
    page = cast.client_for("member").get(reverse("experts:mixture")).content.decode()
    assert "leave-policy" in page
    assert "Switched off" not in page


def test_it_counts_usage_and_shows_it_on_the_org_page(cast: Cast) -> None:
    leave = make_expert(cast.org, "Leave policy")
    pricing = make_expert(cast.other_org, "Pricing")
    services.record_usage(cast.org, [leave], prompt_tokens=10, completion_tokens=5)
    services.record_usage(cast.org, [leave, pricing], prompt_tokens=20, completion_tokens=7)
    services.record_usage(cast.org, [], prompt_tokens=3, completion_tokens=1)
    services.record_usage(cast.other_org, [pricing], prompt_tokens=999, completion_tokens=999)
    row = UsageCounter.objects.get(organization=cast.org, bucket=f"expert:{leave.pk}")
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (2, 30, 12)
    assert UsageCounter.objects.get(organization=cast.org, bucket="base").requests == 1
    page = cast.client_for("member").get(reverse("tenants:settings")).content.decode()
    assert "Model usage, last 30 days" in page
    assert "<code>leave-policy</code>" in page
    assert "<code>globex/pricing</code>" in page
    assert "<code>base model</code>" in page
    assert "4 requests, 73 tokens" in page  # 2 + 1 + 1 requests; 30+12 + 20+7 + 3+1 tokens (not org B's)
    assert "999" not in page


def test_it_keeps_old_usage_off_the_card(cast: Cast) -> None:
    from datetime import timedelta

    from django.utils import timezone

    UsageCounter.objects.create(
        organization=cast.org, day=timezone.localdate() - timedelta(days=40), bucket="base", requests=5
    )
    page = cast.client_for("owner").get(reverse("tenants:settings")).content.decode()
    assert "No requests to the base model" in page
