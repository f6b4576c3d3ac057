"""The playground and the download against the real inference engine (tiny base, MiniLM router) in-process:
streamed tokens and routing scores in the playground, and a downloaded zip that reproduces the engine's logits
in plain peft."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from asgiref.sync import async_to_sync
from django.test import Client
from django.urls import reverse

from tests.webapp.api.live_stack import register_expert
from tests.webapp.conftest import Cast
from tests.webapp.experts.conftest import TinyAdapter, succeeded_job
from webapp.experts.models import Expert, UsageCounter
from webapp.experts.services import register_from_job

pytestmark = [pytest.mark.realmodel, pytest.mark.django_db]


@pytest.fixture
def experts(cast: Cast, live_engine: str, expert_dirs: dict[str, Any], engine_service: Any) -> dict[str, Expert]:
    base_hash = engine_service.backend.engine.base_identity["content_hash"]
    return {name: register_expert(cast.org, name, item.path, base_hash) for name, item in expert_dirs.items()}


def events(response: Any) -> list[tuple[str, dict[str, Any]]]:
    async def read() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    body = async_to_sync(read)().decode()
    parsed = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        parsed.append((lines["event"], json.loads(lines["data"])))
    return parsed


def ask(client: Client, model: str, message: str) -> Any:
    data = {"model": model, "message": message, "max_tokens": 6, "temperature": 0}
    return client.post(reverse("experts:playground-stream"), data)


def test_the_playground_streams_a_routed_answer_with_the_scores(cast: Cast, experts: dict[str, Expert]) -> None:
    response = ask(cast.client_for("member"), "moe", "How long should I knead bread dough?")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    stream = events(response)
    kinds = [kind for kind, _ in stream]
    assert kinds[0] == "routing"
    assert kinds[-1] == "done"
    assert kinds.count("delta") >= 2
    routing = stream[0][1]
    assert [chosen["model"] for chosen in routing["experts"]] == ["cooking"]
    assert {entry["model"] for entry in routing["scores"]} == {"cooking", "networking"}
    assert "".join(data["text"] for kind, data in stream if kind == "delta")
    done = stream[-1][1]
    assert done["completion_tokens"] == 6 or done["finish_reason"] == "stop"
    assert UsageCounter.objects.get(organization=cast.org, bucket=f"expert:{experts['cooking'].pk}").requests == 1


def test_compare_mode_asks_the_base_the_same_question(cast: Cast, experts: dict[str, Expert]) -> None:
    client = cast.client_for("member")
    expert_answer = events(ask(client, "cooking", "Give me a tip."))
    base_answer = events(ask(client, "base", "Give me a tip."))
    assert expert_answer[0][1]["mode"] == "expert"
    assert base_answer[0][1]["mode"] == "base"

    def text(stream: list[tuple[str, dict[str, Any]]]) -> str:
        return "".join(data["text"] for kind, data in stream if kind == "delta")

    assert text(expert_answer) != text(base_answer)


def test_the_playground_answers_without_javascript_too(cast: Cast, experts: dict[str, Expert]) -> None:
    data = {"model": "networking", "message": "My VPN drops.", "max_tokens": 5, "temperature": 0}
    response = cast.client_for("member").post(reverse("experts:playground"), data)
    assert response.status_code == 200
    assert response.context["answer"]
    assert response.context["routing"]["mode"] == "expert"
    assert b"Answered by" in response.content


# What a reasoning expert writes (recipe qa with reasoning), in the pieces the engine streams it in.
REASONED = ["<think>\nDough", " needs time.\n</thi", "nk>\n\nKnead it", " ten minutes."]


def test_the_playground_shows_a_reasoning_experts_thinking_apart_from_its_answer(
    cast: Cast, experts: dict[str, Expert], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streamed as `reasoning` events then `delta`s, and parted the same way without JavaScript. The engine here
    answers with a reasoning expert's text: the tiny experts of these tests never reason."""
    from webapp.experts import engine

    finished = {"finish_reason": "stop", "prompt_tokens": 6, "completion_tokens": 9}

    async def stream(payload: dict[str, Any]) -> Any:
        for piece in REASONED:
            yield {"type": "delta", "text": piece}
        yield {"type": "finished", **finished}

    monkeypatch.setattr(engine, "astream", stream)
    monkeypatch.setattr(engine, "post", lambda path, payload: {"text": "".join(REASONED), **finished})
    client = cast.client_for("member")
    streamed = events(ask(client, "cooking", "How long do I knead?"))
    kinds = [kind for kind, _ in streamed]
    assert kinds[0] == "routing"
    assert kinds[-1] == "done"
    assert kinds.index("delta") > max(index for index, kind in enumerate(kinds) if kind == "reasoning")
    assert "".join(data["text"] for kind, data in streamed if kind == "reasoning") == "Dough needs time."
    assert "".join(data["text"] for kind, data in streamed if kind == "delta") == "Knead it ten minutes."
    data = {"model": "cooking", "message": "How long do I knead?", "max_tokens": 5, "temperature": 0}
    page = client.post(reverse("experts:playground"), data)
    assert (page.context["reasoning"], page.context["answer"]) == ("Dough needs time.", "Knead it ten minutes.")
    shown = '<pre class="answer-text reasoning-text" data-role="reasoning">Dough needs time.</pre>'
    assert shown in page.content.decode()


def test_the_playground_offers_only_the_org_s_own_models(cast: Cast, experts: dict[str, Expert]) -> None:
    mine = cast.client_for("member").get(reverse("experts:playground"))
    assert b"Expert: cooking" in mine.content
    theirs = cast.client_for("outsider").get(reverse("experts:playground"))
    assert theirs.status_code == 200
    assert b"cooking" not in theirs.content
    refused = ask(cast.client_for("outsider"), "cooking", "Hi")
    assert refused.status_code == 404


def test_the_playground_needs_a_member(cast: Cast) -> None:
    response = Client().post(reverse("experts:playground-stream"), {"model": "moe", "message": "Hi"})
    assert response.status_code == 302


def test_the_playground_says_when_the_engine_is_down(cast: Cast, settings: Any) -> None:
    settings.INFERENCE_URL = "http://127.0.0.1:9"
    stream = events(ask(cast.client_for("member"), "base", "Hi"))
    assert stream[-1][0] == "error"
    page = cast.client_for("member").post(reverse("experts:playground"), {"model": "base", "message": "Hi"})
    assert page.status_code == 200
    assert "engine_error" in page.context


def test_a_downloaded_zip_reproduces_the_engine_s_logits_in_plain_peft(
    cast: Cast, tiny_adapter: TinyAdapter, tmp_path: Path, engine_service: Any, model_cache_dir: Path
) -> None:
    from peft import PeftModel

    from workers.ml.catalog import CatalogConfig, load_model
    from workers.moe.adapters import ExpertRef

    version = register_from_job(succeeded_job(cast.org, tiny_adapter, tmp_path))
    response = cast.client_for("member").get(reverse("experts:download", args=[version.expert_id]))
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    archive.extractall(tmp_path / "unzipped")
    folder = tmp_path / "unzipped" / f"{version.expert.slug}-v1"

    base = load_model("tiny:llama-2l", CatalogConfig(cache_dir=model_cache_dir, device="cpu"), progress=lambda _: None)
    plain = PeftModel.from_pretrained(base.model, folder).eval()
    ids = [1, 5, 9, 13, 17, 21]
    with torch.no_grad():
        expected = plain(input_ids=torch.tensor([ids])).logits[0, -1]
    engine = engine_service.backend.engine
    served = engine.logits([ids], [[ExpertRef(version.engine_id, version.artifact_location)]])
    served_last = served[0, -1] if served.dim() == 3 else served[0]
    assert torch.allclose(served_last, expected, atol=1e-4)


def test_the_mixture_page_tries_a_query_on_the_real_router(cast: Cast, experts: dict[str, Expert]) -> None:
    client = cast.client_for("member")
    url = reverse("experts:mixture-try")
    partial = client.post(url, {"query": "How do I set up the office VPN?"}, headers={"HX-Request": "true"})
    assert partial.status_code == 200
    decision = partial.context["decision"]
    assert [pick["name"] for pick in decision["chosen"]] == ["networking"]
    assert [row["name"] for row in decision["scores"]] == ["networking", "cooking"]
    assert b'class="score-bar"' in partial.content
    assert b"<html" not in partial.content
    page = client.post(url, {"query": "Who won the 1966 world cup?"})
    assert page.status_code == 200
    assert page.context["decision"]["fallback"] is True
    assert b"Falls back to the base model" in page.content
