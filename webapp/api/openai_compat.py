"""The OpenAI-compatible API: `/v1/models`, `/v1/chat/completions`, `/v1/completions` (with `stream: true`).

Authenticated by the org's API tokens (`Authorization: Bearer dst_…`), so the official `openai` client works
unchanged with `base_url=https://<host>/v1`. `model` is:

    moe            routed within the org's mixture (its own active experts + the shared ones it included)
    base           the shared student base, no expert
    <slug>         one of the org's own experts;  <org-slug>/<slug>  a shared expert the org included

Anything else — including another org's expert — is a 404 `model_not_found`, never a hint that it exists.
Responses carry `usage` and an extra `routing` field: the chosen expert(s), weights and every candidate's score.
Errors use OpenAI's shape and codes: 401 bad token, 404 unknown model, 400 bad parameters, 429 over the org's
rate limit (with Retry-After), 503 engine down. Tokens in and out are metered per org and expert.
A reasoning expert's `<think>…</think>` comes apart from its answer in chat replies, as `reasoning_content`
(webapp/api/reasoning.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from webapp.api.auth import ApiRequest, api_error, api_token_required, authenticate_request
from webapp.api.reasoning import Part, ReasoningStream, split_reasoning
from webapp.experts import engine
from webapp.experts.models import Expert
from webapp.experts.services import (
    ResolvedModel,
    expert_by_engine_id,
    member_experts,
    mixture_for,
    record_usage,
    resolve_model,
)
from webapp.tenants.models import Organization

logger = logging.getLogger(__name__)
MAX_STOP_SEQUENCES = 4
MAX_MESSAGES = 256
MAX_PROMPT_CHARS = 200_000
ROLES = {"system", "user", "assistant"}


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _bad_request(error: BadRequest) -> JsonResponse:
    response = api_error(str(error), status=400, error_type="invalid_request_error", code="invalid_parameter")
    if error.param:
        body = json.loads(response.content)
        body["error"]["param"] = error.param
        response = JsonResponse(body, status=400)
    return response


def _model_not_found(name: str) -> JsonResponse:
    return api_error(
        f"The model '{name}' does not exist or you do not have access to it.",
        status=404,
        error_type="invalid_request_error",
        code="model_not_found",
    )


def _engine_down(error: Exception) -> JsonResponse:
    return api_error(
        f"The inference engine is unavailable; try again shortly. ({error})",
        status=503,
        error_type="server_error",
        code="engine_unavailable",
    )


# ---------------------------------------------------------------- /v1/models


def _model_json(name: str, created: int, owned_by: str, expert: Expert | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": owned_by}
    if expert is not None and expert.active_version is not None:
        entry["version"] = expert.active_version.number
    return entry


def _models(organization: Organization) -> list[dict[str, Any]]:
    created = int(organization.created_at.timestamp())
    entries = [
        _model_json("moe", created, "distillery"),
        _model_json("base", created, "distillery"),
    ]
    for expert in member_experts(organization):
        owner = expert.organization.slug
        entries.append(_model_json(expert.api_name(organization), int(expert.created_at.timestamp()), owner, expert))
    return entries


@require_GET
@api_token_required
def model_list(request: ApiRequest) -> JsonResponse:
    return JsonResponse({"object": "list", "data": _models(request.organization)})


@require_GET
@api_token_required
def model_detail(request: ApiRequest, model: str) -> JsonResponse:
    for entry in _models(request.organization):
        if entry["id"] == model:
            return JsonResponse(entry)
    return _model_not_found(model)


# ---------------------------------------------------------------- parameters


@dataclass
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop,
            "seed": self.seed,
        }


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    # An int is always finite, and math.isfinite(int) overflows past ~1e308: only a float can be NaN or infinite.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        raise BadRequest(f"'{name}' must be a number.", name)
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low:g} and {high:g}.", name)
    return float(value)


def _sampling(body: dict[str, Any], default_max_tokens: int) -> Sampling:
    limit = int(settings.API_MAX_TOKENS)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = min(default_max_tokens, limit)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("'max_tokens' must be a positive integer.", "max_tokens")
    if max_tokens > limit:
        raise BadRequest(f"'max_tokens' is at most {limit} here.", "max_tokens")
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        stops = list(stop)
    else:
        raise BadRequest("'stop' must be a string or a list of strings.", "stop")
    stops = [item for item in stops if item]
    if len(stops) > MAX_STOP_SEQUENCES:
        raise BadRequest(f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences.", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("'seed' must be an integer.", "seed")
    n = body.get("n", 1)
    if n != 1:
        raise BadRequest("Only n=1 is supported.", "n")
    return Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0) or 1.0,
        stop=stops,
        seed=seed,
    )


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of {role, content} objects.", "messages")
    if len(messages) > MAX_MESSAGES:
        raise BadRequest(f"At most {MAX_MESSAGES} messages per request.", "messages")
    cleaned = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{index}] must be an object.", "messages")
        role = message.get("role")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if not isinstance(role, str) or role not in ROLES:
            raise BadRequest(f"messages[{index}].role must be one of system, user, assistant.", "messages")
        content = message.get("content")
        if isinstance(content, list):  # the content-parts form: keep its text parts
            parts = [part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"]
            if not all(isinstance(part, str) for part in parts):
                raise BadRequest(f"messages[{index}].content: a text part's 'text' must be a string.", "messages")
            content = "".join(parts)
        if not isinstance(content, str):
            raise BadRequest(f"messages[{index}].content must be a string.", "messages")
        cleaned.append({"role": role, "content": content})
    if sum(len(message["content"]) for message in cleaned) > MAX_PROMPT_CHARS:
        raise BadRequest("The messages are too long.", "messages")
    return cleaned


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' must be a non-empty string.", "prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest("The prompt is too long.", "prompt")
    return prompt


def _json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"null")
    except RequestDataTooBig as error:  # over DATA_UPLOAD_MAX_MEMORY_SIZE: Django's HTML 400 otherwise
        raise BadRequest("The request body is too large.") from error
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest("The request body is not valid JSON.") from error
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


# ---------------------------------------------------------------- the call to the engine


@dataclass
class Call:
    """One completion request, resolved against the org's mixture, ready for the engine."""

    organization: Organization
    model: ResolvedModel
    payload: dict[str, Any]
    chat: bool
    include_usage: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def object_id(self) -> str:
        return f"{'chatcmpl' if self.chat else 'cmpl'}-{self.id}"


def build_payload(
    organization: Organization,
    model: ResolvedModel,
    sampling: Sampling,
    *,
    messages: list[dict[str, str]] | None = None,
    prompt: str | None = None,
) -> dict[str, Any]:
    """The engine's /generate payload: experts named by the database, never by the request."""
    payload: dict[str, Any] = {**sampling.to_json(), "experts": []}
    if messages is not None:
        payload["messages"] = messages
    else:
        payload["prompt"] = prompt
    if model.kind == "expert" and model.version is not None:
        payload["experts"] = [model.version.engine_ref()]
    elif model.kind == "moe":
        query = _routing_query(messages, prompt)
        payload["route"] = engine.route_payload(organization, query, mixture_for(organization))
    return payload


def _routing_query(messages: list[dict[str, str]] | None, prompt: str | None) -> str:
    """What the router embeds: the latest user turn (the question being asked), else the prompt."""
    if messages:
        for message in reversed(messages):
            if message["role"] == "user" and message["content"].strip():
                return message["content"]
        return messages[-1]["content"]
    return prompt or ""


def routing_json(organization: Organization, model: ResolvedModel, decision: dict[str, Any] | None) -> dict[str, Any]:
    """The `routing` field: which expert(s) answered and why, named as the org's clients name them."""
    if model.kind != "moe" or decision is None:
        chosen = [{"model": model.name, "weight": 1.0}] if model.kind == "expert" else []
        return {"mode": model.kind, "experts": chosen, "scores": [], "fallback": model.kind == "base"}
    ids = [engine_id for engine_id, _ in decision.get("scores", [])]
    experts = expert_by_engine_id(organization, ids + [engine_id for engine_id, _ in decision.get("experts", [])])

    def name(engine_id: str) -> str:
        expert = experts.get(engine_id)
        return expert.api_name(organization) if expert else engine_id

    return {
        "mode": "moe",
        "experts": [
            {"model": name(engine_id), "weight": round(weight, 4)} for engine_id, weight in decision["experts"]
        ],
        "scores": [{"model": name(engine_id), "score": round(score, 4)} for engine_id, score in decision["scores"]],
        "fallback": bool(decision.get("fallback")),
        "best_score": decision.get("best_score"),
        "threshold": decision.get("threshold"),
    }


def _answered_by(organization: Organization, model: ResolvedModel, decision: dict[str, Any] | None) -> list[Expert]:
    if model.kind == "expert" and model.expert is not None:
        return [model.expert]
    if model.kind == "moe" and decision:
        chosen = [engine_id for engine_id, _ in decision.get("experts", [])]
        experts = expert_by_engine_id(organization, chosen)
        return [experts[engine_id] for engine_id in chosen if engine_id in experts]
    return []


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def meter(
    organization: Organization,
    model: ResolvedModel,
    decision: dict[str, Any] | None,
    prompt_tokens: int,
    completion_tokens: int,
) -> None:
    """Count one answer's tokens for the org and every expert that answered it (the base when none did)."""
    record_usage(
        organization,
        _answered_by(organization, model, decision) or [None],
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def _choice(call: Call, text: str, finish_reason: str) -> dict[str, Any]:
    if call.chat:
        # A reasoning expert's <think>…</think> goes beside the answer, as reasoning models' APIs return it.
        reasoning, answer = split_reasoning(text)
        message: dict[str, Any] = {"role": "assistant", "content": answer}
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        return {"index": 0, "message": message, "finish_reason": finish_reason}
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}


async def complete(call: Call) -> JsonResponse:
    try:
        result = await engine.apost("/generate", {**call.payload, "stream": False})
    except engine.EngineUnavailable as error:
        return _engine_down(error)
    except engine.EngineRejected as error:
        return api_error(str(error), status=400, error_type="invalid_request_error", code="engine_rejected")
    decision = result.get("route")
    prompt_tokens, completion_tokens = int(result["prompt_tokens"]), int(result["completion_tokens"])
    await sync_to_async(meter)(call.organization, call.model, decision, prompt_tokens, completion_tokens)
    routing = await sync_to_async(routing_json)(call.organization, call.model, decision)
    return JsonResponse(
        {
            "id": call.object_id,
            "object": "chat.completion" if call.chat else "text_completion",
            "created": call.created,
            "model": call.model.name,
            "choices": [_choice(call, result["text"], result["finish_reason"])],
            "usage": _usage(prompt_tokens, completion_tokens),
            "routing": routing,
        }
    )


def _sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def _chunk(
    call: Call, delta_text: str | None, finish_reason: str | None, part: Part = "content", **extra: Any
) -> dict[str, Any]:
    if call.chat:
        key = "reasoning_content" if part == "reasoning" else "content"
        delta: dict[str, Any] = {} if delta_text is None else {key: delta_text}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": delta_text or "", "logprobs": None, "finish_reason": finish_reason}
    return {
        "id": call.object_id,
        "object": "chat.completion.chunk" if call.chat else "text_completion",
        "created": call.created,
        "model": call.model.name,
        "choices": [choice],
        **extra,
    }


async def stream_events(
    call: Call, first: dict[str, Any] | None, events: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[bytes]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    decision = None
    started = False
    pending = [first] if first is not None else []
    reasoning = ReasoningStream()  # chat only: a reasoning expert's <think> part streams as reasoning_content

    async def next_event() -> dict[str, Any] | None:
        if pending:
            return pending.pop()
        try:
            return await events.__anext__()
        except StopAsyncIteration:
            return None

    try:
        while (event := await next_event()) is not None:
            kind = event.get("type")
            if kind == "route":
                decision = event.get("decision")
                continue
            if not started:
                routing = await sync_to_async(routing_json)(call.organization, call.model, decision)
                opening = _chunk(call, None, None, routing=routing)
                if call.chat:
                    opening["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                yield _sse(opening)
                started = True
            if kind == "delta":
                text = event.get("text", "")
                parts: list[tuple[Part, str]] = reasoning.feed(text) if call.chat else [("content", text)]
                for part, piece in parts:
                    yield _sse(_chunk(call, piece, None, part))
            elif kind == "finished":
                for part, piece in reasoning.close() if call.chat else []:
                    yield _sse(_chunk(call, piece, None, part))
                prompt_tokens = int(event.get("prompt_tokens", 0))
                completion_tokens = int(event.get("completion_tokens", 0))
                await sync_to_async(meter)(call.organization, call.model, decision, prompt_tokens, completion_tokens)
                yield _sse(_chunk(call, None, event.get("finish_reason", "stop")))
                if call.include_usage:
                    usage_chunk = _chunk(call, None, None, usage=_usage(prompt_tokens, completion_tokens))
                    usage_chunk["choices"] = []
                    yield _sse(usage_chunk)
                break
            elif kind == "error":
                yield _sse({"error": {"message": event.get("message", "Generation failed."), "type": "server_error"}})
                break
    except engine.EngineUnavailable as error:
        yield _sse({"error": {"message": str(error), "type": "server_error", "code": "engine_unavailable"}})
    yield _sse("[DONE]")


async def _open_stream(call: Call) -> HttpResponseBase:
    """Open the engine's stream first, so a refused request still gets a proper status code, not a 200 stream."""
    events = engine.astream(call.payload)
    try:
        first = await events.__anext__()
    except StopAsyncIteration:
        first = None
    except engine.EngineUnavailable as error:
        return _engine_down(error)
    except engine.EngineRejected as error:
        return api_error(str(error), status=400, error_type="invalid_request_error", code="engine_rejected")
    response = StreamingHttpResponse(stream_events(call, first, events), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass tokens through as they come
    return response


def _prepare(request: ApiRequest, chat: bool) -> Call | JsonResponse:
    """Authenticate, rate-limit, validate and resolve (the database part, run in a thread by the async views)."""
    refused = authenticate_request(request)  # the rate limit included
    if refused is not None:
        return refused
    try:
        body = _json_body(request)
        name = body.get("model")
        if not isinstance(name, str) or not name.strip():
            raise BadRequest("'model' is required: 'moe', 'base' or an expert's name (see /v1/models).", "model")
        messages = _messages(body) if chat else None
        prompt = None if chat else _prompt(body)
        sampling = _sampling(body, default_max_tokens=512 if chat else 16)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("'stream' must be true or false.", "stream")
        stream_options = body.get("stream_options") or {}
        if not isinstance(stream_options, dict):
            raise BadRequest("'stream_options' must be an object.", "stream_options")
    except BadRequest as error:
        return _bad_request(error)
    model = resolve_model(request.organization, name)
    if model is None:
        return _model_not_found(name)
    payload = build_payload(request.organization, model, sampling, messages=messages, prompt=prompt)
    payload["stream"] = stream
    return Call(
        request.organization, model, payload, chat=chat, include_usage=bool(stream_options.get("include_usage"))
    )


async def _respond(request: HttpRequest, chat: bool) -> HttpResponseBase:
    # The views are async so that a streamed answer is relayed token by token on the server's event loop, with
    # the engine's stream opened and read on that same loop; the database work runs in a thread.
    call = await sync_to_async(_prepare)(request, chat)  # type: ignore[arg-type]
    if isinstance(call, JsonResponse):
        return call
    if call.payload.get("stream"):
        return await _open_stream(call)
    return await complete(call)


@csrf_exempt
@require_POST
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    return await _respond(request, chat=True)


@csrf_exempt
@require_POST
async def completions(request: HttpRequest) -> HttpResponseBase:
    return await _respond(request, chat=False)
