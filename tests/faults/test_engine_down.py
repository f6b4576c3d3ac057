"""Stop the inference engine: the OpenAI-compatible API answers 503 with an OpenAI-style error, and answers again
once the engine is back.

The engine is the real process (`python -m workers.moe`, tiny base) on a port of its own; the web app is the
served ASGI app (tests/webapp/api/live_stack.py `web_url`); the client is the official `openai` package with
an API token. (tests/webapp/api/test_openai.py checks the same answers by pointing INFERENCE_URL elsewhere.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.faults.conftest import EngineProcess
from tests.webapp.conftest import Cast
from webapp.tenants.models import ApiToken

pytestmark = [pytest.mark.faults, pytest.mark.realmodel, pytest.mark.django_db(transaction=True)]

MESSAGES = [{"role": "user", "content": "How do I configure the VPN client?"}]


def assert_engine_unavailable(error: openai.APIStatusError) -> None:
    assert error.status_code == 503
    body = error.response.json()
    assert body["error"]["type"] == "server_error"
    assert body["error"]["code"] == "engine_unavailable"
    assert body["error"]["message"].startswith("The inference engine is unavailable; try again shortly.")


def test_the_api_answers_503_while_the_engine_is_down_and_recovers_when_it_returns(
    cast: Cast, web_url: str, engine_factory: Callable[[], EngineProcess], settings: Any
) -> None:
    engine = engine_factory()
    settings.INFERENCE_URL = engine.url
    _, token = ApiToken.issue(organization=cast.org, name="Faults", created_by=cast.owner)
    client = openai.OpenAI(base_url=f"{web_url}/v1", api_key=token, max_retries=0, timeout=60)
    assert client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=2).choices

    engine.kill()

    with pytest.raises(openai.APIStatusError) as answer:
        client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=2)
    assert_engine_unavailable(answer.value)
    with pytest.raises(openai.APIStatusError) as streamed:
        list(client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=2, stream=True))
    assert_engine_unavailable(streamed.value)
    # The model list does not need the engine.
    assert [model.id for model in client.models.list()][:2] == ["moe", "base"]

    # Back on the same port. While it loads its models it answers 503 itself: the API says "unavailable" then
    # too, never a 500, and answers as soon as the engine can.
    engine.start(wait=False)
    deadline = time.monotonic() + 120
    while True:
        try:
            reply = client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=2)
            break
        except openai.APIStatusError as error:
            assert_engine_unavailable(error)
        assert engine.running(), engine.log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the API did not recover once the engine was back"
        time.sleep(0.2)
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=2, stream=True))
    assert any(chunk.choices and chunk.choices[0].delta.content for chunk in chunks)
