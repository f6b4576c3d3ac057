"""Forwarding generation to a vLLM server (`--enable-lora`), tested against a local server speaking its protocol:
OpenAI's streamed completions and chat completions, plus vLLM's `/v1/load_lora_adapter` for run-time adapters."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.workers.moe.servers import serve
from workers.moe.service import InferenceService, NotReady, RequestError, ServiceConfig, VllmBackend

BASE_NAME = "smollm2-base"


class FakeVllm:
    """Records what it was asked; answers each request with the words of a fixed reply, one chunk per word."""

    def __init__(self) -> None:
        self.adapters: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []

    def app(self) -> Starlette:
        async def load(request: Request) -> Response:
            body = await request.json()
            if body["lora_name"] in self.adapters:
                return PlainTextResponse(f"The lora adapter '{body['lora_name']}' has already been loaded.", 400)
            self.adapters[body["lora_name"]] = body["lora_path"]
            return PlainTextResponse(f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

        async def completions(request: Request) -> Response:
            return await self._answer(request, chat=False)

        async def chat(request: Request) -> Response:
            return await self._answer(request, chat=True)

        return Starlette(
            routes=[
                Route("/v1/load_lora_adapter", load, methods=["POST"]),
                Route("/v1/completions", completions, methods=["POST"]),
                Route("/v1/chat/completions", chat, methods=["POST"]),
            ]
        )

    async def _answer(self, request: Request, chat: bool) -> Response:
        body = await request.json()
        self.requests.append(body)
        model = body["model"]
        if model != BASE_NAME and model not in self.adapters:
            return JSONResponse({"error": {"message": f"The model `{model}` does not exist.", "code": 404}}, 404)
        words = [f"answer from {model}", " with", " three", " words"][: 1 + body.get("max_tokens", 3)]

        async def chunks() -> AsyncIterator[bytes]:
            for index, word in enumerate(words):
                last = index == len(words) - 1
                choice: dict[str, Any] = {"index": 0, "finish_reason": "length" if last else None}
                if chat:
                    choice["delta"] = {"content": word}
                else:
                    choice["text"] = word
                chunk = {"id": "x", "object": "chunk", "created": 0, "model": model, "choices": [choice]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            usage = {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 7 + len(words)}
            usage_chunk = {"id": "x", "object": "chunk", "created": 0, "model": model, "choices": [], "usage": usage}
            yield f"data: {json.dumps(usage_chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")


@pytest.fixture
def vllm() -> Any:
    fake = FakeVllm()
    with serve(fake.app()) as url:
        fake.url = f"{url}/v1"  # type: ignore[attr-defined]
        yield fake


def backend_for(fake: Any) -> VllmBackend:
    return VllmBackend(ServiceConfig(backend="vllm", vllm_url=fake.url, vllm_model=BASE_NAME))


def test_it_loads_the_expert_into_vllm_once_and_names_it_as_the_model(vllm: Any) -> None:
    backend = backend_for(vllm)
    expert = {"id": "ev12", "location": "/data/media/experts/org-1/expert-3/v1", "weight": 1.0}
    first = list(backend.open({"prompt": "Hello", "max_tokens": 3, "temperature": 0.0}, [expert]))
    second = list(backend.open({"prompt": "Again", "max_tokens": 3}, [expert]))

    assert vllm.adapters == {"ev12": "/data/media/experts/org-1/expert-3/v1"}
    assert [request["model"] for request in vllm.requests] == ["ev12", "ev12"]
    deltas = "".join(event["text"] for event in first if event["type"] == "delta")
    assert deltas == "answer from ev12 with three words"
    assert first[-1] == {
        "type": "finished",
        "text": deltas,
        "finish_reason": "length",
        "prompt_tokens": 7,
        "completion_tokens": 4,
    }
    assert second[-1]["type"] == "finished"


def test_it_passes_sampling_settings_and_asks_for_usage(vllm: Any) -> None:
    payload = {"prompt": "Hi", "max_tokens": 2, "temperature": 0.3, "top_p": 0.9, "stop": ["\n"], "seed": 7}
    list(backend_for(vllm).open(payload, []))
    sent = vllm.requests[-1]
    assert sent["model"] == BASE_NAME
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["stop"], sent["seed"]) == (
        2,
        0.3,
        0.9,
        ["\n"],
        7,
    )
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


def test_it_forwards_chat_messages_to_the_chat_endpoint(vllm: Any) -> None:
    messages = [{"role": "user", "content": "What is our VPN?"}]
    events = list(backend_for(vllm).open({"messages": messages, "max_tokens": 1}, []))
    assert vllm.requests[-1]["messages"] == messages
    assert (
        "".join(event.get("text", "") for event in events if event["type"] == "delta")
        == "answer from smollm2-base with"
    )


def test_top_k_falls_back_to_the_router_s_best_expert(vllm: Any) -> None:
    experts = [
        {"id": "ev1", "location": "/a", "weight": 0.3},
        {"id": "ev2", "location": "/b", "weight": 0.7},
    ]
    list(backend_for(vllm).open({"prompt": "Hi", "max_tokens": 1}, experts))
    assert vllm.requests[-1]["model"] == "ev2"
    assert set(vllm.adapters) == {"ev2"}


def test_an_adapter_another_engine_loaded_first_is_used_as_is(vllm: Any) -> None:
    vllm.adapters["ev5"] = "/shared/ev5"
    events = list(backend_for(vllm).open({"prompt": "Hi", "max_tokens": 1}, [{"id": "ev5", "location": "/x"}]))
    assert events[-1]["type"] == "finished"
    assert vllm.adapters["ev5"] == "/shared/ev5"


def test_a_vllm_that_is_down_is_reported_as_not_ready() -> None:
    backend = VllmBackend(ServiceConfig(backend="vllm", vllm_url="http://127.0.0.1:9/v1", vllm_model=BASE_NAME))
    with pytest.raises(NotReady):
        list(backend.open({"prompt": "Hi", "max_tokens": 1}, []))


def test_a_refused_request_is_a_request_error(vllm: Any) -> None:
    backend = backend_for(vllm)
    backend._loaded.add("ghost")  # vLLM lost the adapter (restarted): it answers 404 for the model
    with pytest.raises(RequestError, match="does not exist"):
        list(backend.open({"prompt": "Hi", "max_tokens": 1}, [{"id": "ghost", "location": "/x"}]))


def test_the_backend_needs_a_url_and_a_model_name() -> None:
    with pytest.raises(ValueError, match="VLLM_URL"):
        VllmBackend(ServiceConfig(backend="vllm"))


def test_the_service_routes_then_forwards_without_an_engine_of_its_own(vllm: Any) -> None:
    class OneChoiceRouting:
        def route(self, body: dict[str, Any]) -> dict[str, Any]:
            return {"experts": [["ev9", 1.0]], "scores": [["ev9", 0.8]], "fallback": False}

    service = InferenceService(None, backend_for(vllm))
    service.route = OneChoiceRouting().route  # type: ignore[method-assign]
    body = {"prompt": "Hi", "max_tokens": 1, "route": {"query": "Hi", "candidates": [{"id": "ev9", "location": "/e9"}]}}
    decision, events = service.open(body)
    assert decision is not None
    assert decision["experts"] == [["ev9", 1.0]]
    assert list(events)[-1]["type"] == "finished"
    assert vllm.adapters == {"ev9": "/e9"}
