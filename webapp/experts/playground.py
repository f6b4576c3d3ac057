"""The playground: ask the org's mixture (Auto), one expert, or the base, and watch the answer stream in.

`playground` renders the page and, without JavaScript, answers a posted question in full (one round trip to
the engine). With JavaScript (static/js/playground.js) the page posts to `playground_stream`, which relays the
engine's tokens as server-sent events: `routing` (which expert answers, every candidate's score), `reasoning`
(a reasoning expert's `<think>` part, shown apart) and `delta`s of the answer, then `done` (usage) or `error`.
Compare mode sends the same question twice — to the base and to the chosen model — and shows the answers side
by side. Tokens are metered like API calls.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django import forms
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods, require_POST

from webapp.api.openai_compat import Sampling, build_payload, meter, routing_json
from webapp.api.reasoning import ReasoningStream, split_reasoning
from webapp.experts import engine
from webapp.experts.services import ResolvedModel, member_experts, resolve_model
from webapp.tenants.current import OrgRequest, org_member_required
from webapp.tenants.models import Organization
from webapp.tenants.permissions import Perm


class AskForm(forms.Form):
    model = forms.CharField(max_length=200, initial="moe")
    message = forms.CharField(max_length=8000, widget=forms.Textarea(attrs={"rows": 3}))
    max_tokens = forms.IntegerField(min_value=1, max_value=1024, initial=200, required=False)
    temperature = forms.FloatField(min_value=0.0, max_value=2.0, initial=0.3, required=False)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        # Left empty: the initial values (a question is all a user has to type).
        for name in ("max_tokens", "temperature"):
            if data.get(name) is None:
                data[name] = self.fields[name].initial
        return data


def model_choices(organization: Organization) -> list[tuple[str, str]]:
    choices = [("moe", "Auto (router)"), ("base", "Base model")]
    choices += [(expert.api_name(organization), f"Expert: {expert.name}") for expert in member_experts(organization)]
    return choices


def _payload(organization: Organization, model: ResolvedModel, data: dict[str, Any]) -> dict[str, Any]:
    sampling = Sampling(max_tokens=data["max_tokens"], temperature=data["temperature"], top_p=1.0)
    messages = [{"role": "user", "content": data["message"]}]
    return build_payload(organization, model, sampling, messages=messages)


@org_member_required(Perm.USE_PLAYGROUND)
@require_http_methods(["GET", "POST"])
def playground(request: OrgRequest) -> HttpResponse:
    organization = request.organization
    form = AskForm(request.POST or None, initial={"model": request.GET.get("model", "moe")})
    context: dict[str, Any] = {"form": form, "choices": model_choices(organization)}
    if request.method == "POST" and form.is_valid():
        model = resolve_model(organization, form.cleaned_data["model"])
        if model is None:
            form.add_error("model", "Choose one of the listed models.")
        else:
            try:
                result = engine.post("/generate", {**_payload(organization, model, form.cleaned_data), "stream": False})
            except (engine.EngineUnavailable, engine.EngineRejected) as error:
                context["engine_error"] = str(error)
            else:
                decision = result.get("route")
                meter(organization, model, decision, int(result["prompt_tokens"]), int(result["completion_tokens"]))
                routing = routing_json(organization, model, decision)
                reasoning, answer = split_reasoning(result["text"])
                context.update(answer=answer, reasoning=reasoning, routing=routing, usage=result)
    return render(request, "experts/playground.html", context, status=200)


EVENT_OF_PART = {"reasoning": "reasoning", "content": "delta"}  # the answer's pieces keep their `delta` name


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _relay(organization: Organization, model: ResolvedModel, payload: dict[str, Any]) -> AsyncIterator[bytes]:
    routing = decision = None
    reasoning = ReasoningStream()
    try:
        async for event in engine.astream(payload):
            kind = event.get("type")
            if kind == "route" or (kind == "delta" and routing is None):
                decision = event.get("decision") if kind == "route" else None
                routing = await sync_to_async(routing_json)(organization, model, decision)
                yield _event("routing", routing)
                if kind == "route":
                    continue
            if kind == "delta":
                for part, text in reasoning.feed(event.get("text", "")):
                    yield _event(EVENT_OF_PART[part], {"text": text})
            elif kind == "finished":
                for part, text in reasoning.close():
                    yield _event(EVENT_OF_PART[part], {"text": text})
                tokens = int(event.get("prompt_tokens", 0)), int(event.get("completion_tokens", 0))
                await sync_to_async(meter)(organization, model, decision, *tokens)
                yield _event(
                    "done", {key: event.get(key) for key in ("finish_reason", "prompt_tokens", "completion_tokens")}
                )
            elif kind == "error":
                yield _event("error", {"message": event.get("message", "Generation failed.")})
    except (engine.EngineUnavailable, engine.EngineRejected) as error:
        yield _event("error", {"message": str(error)})


@org_member_required(Perm.USE_PLAYGROUND)
@require_POST
def playground_stream(request: OrgRequest) -> HttpResponse | StreamingHttpResponse:
    """Server-sent events of one answer (the page's JavaScript reads them with fetch)."""
    form = AskForm(request.POST)
    if not form.is_valid():
        return HttpResponse(json.dumps({"errors": form.errors}), status=400, content_type="application/json")
    model = resolve_model(request.organization, form.cleaned_data["model"])
    if model is None:
        return HttpResponse(
            json.dumps({"errors": {"model": ["Unknown model."]}}), status=404, content_type="application/json"
        )
    payload = {**_payload(request.organization, model, form.cleaned_data), "stream": True}
    # The generator starts on the server's event loop when the response is sent (not in this thread).
    response = StreamingHttpResponse(_relay(request.organization, model, payload), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
