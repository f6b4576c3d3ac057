"""The OpenAI-compatible API through the official `openai` client, against the real serving stack in-process:
Django under uvicorn (ASGI, as deployed), the inference engine with a tiny base and the real MiniLM router."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from django.test import Client

from tests.webapp.api.live_stack import register_expert
from tests.webapp.api.openapi_schema import assert_matches, response_schema
from tests.webapp.conftest import Cast
from webapp.experts.models import Expert, UsageCounter
from webapp.experts.services import include_shared, mixture_for, publish
from webapp.tenants.models import ApiToken

pytestmark = [pytest.mark.realmodel, pytest.mark.django_db(transaction=True)]

COOKING_QUESTION = "How long should I let the bread dough rise before baking?"
NETWORK_QUESTION = "Why can't my laptop connect to the office VPN gateway?"
OFFTOPIC_QUESTION = "Who won the football world cup in 1966?"


@pytest.fixture
def stack(
    cast: Cast, live_engine: str, web_url: str, expert_dirs: dict[str, Any], engine_service: Any
) -> dict[str, Any]:
    base_hash = engine_service.backend.engine.base_identity["content_hash"]
    cooking = register_expert(cast.org, "Cooking", str(expert_dirs["cooking"].path), base_hash)
    networking = register_expert(cast.org, "Networking", str(expert_dirs["networking"].path), base_hash)
    _, token_a = ApiToken.issue(organization=cast.org, name="A", created_by=cast.owner)
    _, token_b = ApiToken.issue(organization=cast.other_org, name="B", created_by=cast.outsider)
    return {
        "cooking": cooking,
        "networking": networking,
        "a": openai.OpenAI(base_url=f"{web_url}/v1", api_key=token_a, max_retries=0, timeout=60),
        "b": openai.OpenAI(base_url=f"{web_url}/v1", api_key=token_b, max_retries=0, timeout=60),
        "token_a": token_a,
    }


def test_it_lists_the_mixture_the_base_and_the_orgs_own_experts(stack: dict[str, Any]) -> None:
    names = [model.id for model in stack["a"].models.list()]
    assert names[:2] == ["moe", "base"]
    assert set(names[2:]) == {"cooking", "networking"}
    assert stack["a"].models.retrieve("cooking").owned_by == "acme"


def test_another_org_sees_none_of_them(stack: dict[str, Any]) -> None:
    assert [model.id for model in stack["b"].models.list()] == ["moe", "base"]
    with pytest.raises(openai.NotFoundError):
        stack["b"].chat.completions.create(model="cooking", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.NotFoundError):
        stack["b"].models.retrieve("cooking")


def test_moe_routes_a_question_to_the_expert_of_its_corpus_and_shows_the_scores(stack: dict[str, Any]) -> None:
    reply = stack["a"].chat.completions.create(
        model="moe", messages=[{"role": "user", "content": COOKING_QUESTION}], max_tokens=8, temperature=0
    )
    routing = reply.model_extra["routing"]
    assert routing["mode"] == "moe"
    assert [chosen["model"] for chosen in routing["experts"]] == ["cooking"]
    scores = {entry["model"]: entry["score"] for entry in routing["scores"]}
    assert set(scores) == {"cooking", "networking"}
    assert scores["cooking"] > scores["networking"]
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens == 8 or reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 0

    other = stack["a"].chat.completions.create(
        model="moe", messages=[{"role": "user", "content": NETWORK_QUESTION}], max_tokens=4, temperature=0
    )
    assert [chosen["model"] for chosen in other.model_extra["routing"]["experts"]] == ["networking"]


def test_an_off_topic_question_falls_back_to_the_base(stack: dict[str, Any]) -> None:
    reply = stack["a"].chat.completions.create(
        model="moe", messages=[{"role": "user", "content": OFFTOPIC_QUESTION}], max_tokens=4, temperature=0
    )
    routing = reply.model_extra["routing"]
    assert routing["fallback"] is True
    assert routing["experts"] == []


def test_the_expert_answers_what_the_engine_generates_for_it(stack: dict[str, Any], engine_service: Any) -> None:
    from workers.moe.adapters import ExpertRef
    from workers.moe.engine import GenerationRequest

    messages = [{"role": "user", "content": "Give me a tip."}]
    reply = stack["a"].chat.completions.create(model="cooking", messages=messages, max_tokens=10, temperature=0)
    version = stack["cooking"].active_version
    direct = engine_service.backend.engine.generate(
        GenerationRequest(
            messages=messages,
            experts=[ExpertRef(version.engine_id, version.artifact_location)],
            max_tokens=10,
            temperature=0.0,
        )
    )
    assert reply.choices[0].message.content == direct.text
    assert reply.model_extra["routing"] == {
        "mode": "expert",
        "experts": [{"model": "cooking", "weight": 1.0}],
        "scores": [],
        "fallback": False,
    }
    base = stack["a"].chat.completions.create(model="base", messages=messages, max_tokens=10, temperature=0)
    assert base.choices[0].message.content != reply.choices[0].message.content, "the expert changes the answer"


def test_streaming_gives_the_same_answer_token_by_token(stack: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": COOKING_QUESTION}]
    whole = stack["a"].chat.completions.create(model="moe", messages=messages, max_tokens=12, temperature=0)
    chunks = list(
        stack["a"].chat.completions.create(
            model="moe",
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    assert len([chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]) > 1
    assert chunks[0].model_extra["routing"]["experts"][0]["model"] == "cooking"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


# What a reasoning expert writes (recipe qa with reasoning), in the pieces the engine streams it in.
REASONED = ["<think>\nTomatoes", " lose water to salt.\n</", "think>\n\nSalt them", " first."]


def test_a_reasoning_experts_thinking_comes_apart_from_its_answer(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole and streamed, chat replies give the answer as `content` and the reasoning as `reasoning_content`.

    The engine here answers with a reasoning expert's text: the tiny experts of these tests never reason.
    """
    from webapp.experts import engine

    finished = {"finish_reason": "stop", "prompt_tokens": 7, "completion_tokens": 11}

    async def generate(path: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {"text": "".join(REASONED), **finished}

    async def stream(payload: dict[str, Any]) -> Any:
        for piece in REASONED:
            yield {"type": "delta", "text": piece}
        yield {"type": "finished", **finished}

    monkeypatch.setattr(engine, "apost", generate)
    monkeypatch.setattr(engine, "astream", stream)
    messages = [{"role": "user", "content": COOKING_QUESTION}]
    whole = stack["a"].chat.completions.create(model="cooking", messages=messages)
    assert whole.choices[0].message.content == "Salt them first."
    assert whole.choices[0].message.model_extra["reasoning_content"] == "Tomatoes lose water to salt."
    chunks = list(stack["a"].chat.completions.create(model="cooking", messages=messages, stream=True))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    reasoning = [delta.model_extra.get("reasoning_content") for delta in deltas]
    content = [delta.content for delta in deltas]
    assert "".join(part for part in reasoning if part) == "Tomatoes lose water to salt."
    assert "".join(part for part in content if part) == "Salt them first."
    # The reasoning streams first, as it is written; the answer follows it.
    first_content = next(index for index, part in enumerate(content) if part)
    assert all(not part for part in reasoning[first_content:])
    # Text completions are raw text: nothing is parted there.
    raw = stack["a"].completions.create(model="cooking", prompt="Tomatoes")
    assert raw.choices[0].text == "".join(REASONED)


def test_text_completions_work_too(stack: dict[str, Any]) -> None:
    reply = stack["a"].completions.create(model="networking", prompt="The VPN", max_tokens=5, temperature=0)
    assert reply.object == "text_completion"
    assert reply.choices[0].text
    streamed = stack["a"].completions.create(
        model="networking", prompt="The VPN", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == reply.choices[0].text


def test_tokens_are_metered_per_org_and_expert(stack: dict[str, Any], cast: Cast) -> None:
    reply = stack["a"].chat.completions.create(
        model="cooking", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0
    )
    row = UsageCounter.objects.get(organization=cast.org, bucket=f"expert:{stack['cooking'].pk}")
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (
        1,
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    )
    assert not UsageCounter.objects.filter(organization=cast.other_org).exists()


def test_a_shared_expert_is_used_only_by_orgs_that_included_it(stack: dict[str, Any], cast: Cast) -> None:
    messages = [{"role": "user", "content": COOKING_QUESTION}]
    before = stack["b"].chat.completions.create(model="moe", messages=messages, max_tokens=2, temperature=0)
    assert before.model_extra["routing"]["scores"] == []  # org B's mixture is empty: A's experts are not candidates
    publish(stack["cooking"], user=cast.owner)
    assert "acme/cooking" not in [model.id for model in stack["b"].models.list()]
    include_shared(cast.other_org, stack["cooking"])
    after = stack["b"].chat.completions.create(model="moe", messages=messages, max_tokens=2, temperature=0)
    assert [chosen["model"] for chosen in after.model_extra["routing"]["experts"]] == ["acme/cooking"]
    assert "acme/cooking" in [model.id for model in stack["b"].models.list()]


def test_an_expert_outside_the_mixture_is_never_chosen(stack: dict[str, Any], cast: Cast) -> None:
    stack["cooking"].status = Expert.Status.DISABLED
    stack["cooking"].save()
    reply = stack["a"].chat.completions.create(
        model="moe", messages=[{"role": "user", "content": COOKING_QUESTION}], max_tokens=2, temperature=0
    )
    routing = reply.model_extra["routing"]
    assert "cooking" not in [entry["model"] for entry in routing["scores"]]
    assert "cooking" not in [entry["model"] for entry in routing["experts"]]


def test_top_2_mixes_two_experts_with_the_router_s_weights(stack: dict[str, Any], cast: Cast) -> None:
    mixture = mixture_for(cast.org)
    mixture.top_k, mixture.threshold = 2, 0.0
    mixture.save()
    reply = stack["a"].chat.completions.create(
        model="moe", messages=[{"role": "user", "content": COOKING_QUESTION}], max_tokens=3, temperature=0
    )
    chosen = reply.model_extra["routing"]["experts"]
    assert [entry["model"] for entry in chosen] == ["cooking", "networking"]
    assert chosen[0]["weight"] > chosen[1]["weight"]
    assert sum(entry["weight"] for entry in chosen) == pytest.approx(1.0, abs=1e-3)


# ---------------------------------------------------------------- errors, in OpenAI's shape


def test_a_bad_token_is_401(web_url: str, transactional_db: None) -> None:
    client = openai.OpenAI(base_url=f"{web_url}/v1", api_key="dst_not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.body["code"] == "invalid_api_key"


def test_bad_parameters_are_400_naming_the_parameter(stack: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.BadRequestError) as caught:
        stack["a"].chat.completions.create(model="base", messages=messages, temperature=5)
    assert caught.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        stack["a"].chat.completions.create(model="base", messages=[{"role": "wizard", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        stack["a"].chat.completions.create(model="base", messages=messages, max_tokens=10**6)


def test_an_unknown_model_is_404(stack: dict[str, Any]) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        stack["a"].chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.body["code"] == "model_not_found"


@pytest.mark.usefixtures("fresh_rate_window")
def test_over_the_rate_limit_is_429_with_retry_after(stack: dict[str, Any], settings: Any) -> None:
    from django.core.cache import cache

    cache.clear()
    settings.API_RATE_LIMIT_PER_MINUTE = 2
    messages = [{"role": "user", "content": "Hi"}]
    for _ in range(2):
        stack["a"].chat.completions.create(model="base", messages=messages, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as caught:
        stack["a"].chat.completions.create(model="base", messages=messages, max_tokens=1)
    assert int(caught.value.response.headers["Retry-After"]) >= 1
    cache.clear()


def test_the_engine_down_is_503_and_it_recovers(stack: dict[str, Any], settings: Any, live_engine: str) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    settings.INFERENCE_URL = "http://127.0.0.1:9"
    with pytest.raises(openai.InternalServerError) as caught:
        stack["a"].chat.completions.create(model="base", messages=messages, max_tokens=1)
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "engine_unavailable"
    with pytest.raises(openai.InternalServerError):
        list(stack["a"].chat.completions.create(model="base", messages=messages, max_tokens=1, stream=True))
    settings.INFERENCE_URL = live_engine
    assert stack["a"].chat.completions.create(model="base", messages=messages, max_tokens=1).choices


def test_a_malformed_body_is_400_not_500(stack: dict[str, Any]) -> None:
    client = Client()
    headers = {"Authorization": f"Bearer {stack['token_a']}"}
    for body in (b"{", b"[]", b'{"model": 3, "messages": []}', b'{"model": "base", "messages": "hi"}'):
        response = client.post("/v1/chat/completions", body, content_type="application/json", headers=headers)
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_an_expert_behind_this_api_teaches_through_the_endpoint_teacher(stack: dict[str, Any], web_url: str) -> None:
    """Distillery's own API as the OpenAI-compatible teacher of another expert: the engine's real answers."""
    from workers.ml.distill.config import EndpointTeacherConfig
    from workers.ml.distill.teachers import EndpointTeacher

    conversations = [
        [{"role": "user", "content": COOKING_QUESTION}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Give me a tip."}],
    ]
    config = EndpointTeacherConfig(base_url=f"{web_url}/v1", model="cooking", api_key=stack["token_a"])
    with EndpointTeacher(config) as teacher:
        assert teacher.check_connection().startswith("OK: model cooking answered")
        before = (teacher.usage.prompt_tokens, teacher.usage.completion_tokens)
        answers = teacher.chat(conversations, max_new_tokens=8)
        used = (teacher.usage.prompt_tokens - before[0], teacher.usage.completion_tokens - before[1])
        # Recipe kd needs prompt logprobs, which this API does not serve: refused up front, not failed midway.
        assert teacher.supports_prompt_logprobs(4) is False
    direct = [
        stack["a"].chat.completions.create(model="cooking", messages=messages, max_tokens=8, temperature=0)
        for messages in conversations
    ]
    assert answers == [reply.choices[0].message.content for reply in direct]
    assert all(answers)
    assert used == (
        sum(reply.usage.prompt_tokens for reply in direct),
        sum(reply.usage.completion_tokens for reply in direct),
    )


def test_answers_match_the_openapi_document(stack: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": NETWORK_QUESTION}]
    chat = stack["a"].chat.completions.with_raw_response.create(model="moe", messages=messages, max_tokens=4)
    assert_matches(response_schema("/v1/chat/completions", "post", 200), chat.http_response.json())
    text = stack["a"].completions.with_raw_response.create(model="networking", prompt="The VPN", max_tokens=4)
    assert_matches(response_schema("/v1/completions", "post", 200), text.http_response.json())
