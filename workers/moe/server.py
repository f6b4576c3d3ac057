"""The inference engine's small internal HTTP API (Starlette under uvicorn), spoken by the web app only.

    GET  /health     200 {"status": "ok", base, experts_loaded, stats} | 503 while the base model loads
    POST /route      {query, candidates: [{id, location}], settings: {top_k, temperature, threshold,
                     fallback_to_base}} → the decision: {experts: [[id, weight]], fallback, best_score,
                     scores: [[id, cosine]] best first, embed_ms, score_ms, unknown, unusable, threshold}
    POST /generate   {prompt | messages, experts: [{id, location, weight}] | route: {<as /route>}, max_tokens,
                     temperature, top_p, stop, seed, stream}
                     stream=false → {route, text, finish_reason, prompt_tokens, completion_tokens}
                     stream=true  → NDJSON lines: {"type": "route", "decision"}?, {"type": "delta", "text"}*,
                                    then {"type": "finished", …} or {"type": "error", "message"}
    POST /experts/load {id, location} → loads (and checks) an expert ahead of its first query

Errors: 400 {"error": {"message"}} for a request that cannot be served as asked, 503 while loading or when the
backend is unreachable. Bind it to a private address: it trusts its caller to have authorised the ids.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from workers.moe.service import Event, InferenceService, NotReady, RequestError

logger = logging.getLogger(__name__)
_DONE = object()


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError("The body is not valid JSON.") from error
    if not isinstance(body, dict):
        raise RequestError("The body must be a JSON object.")
    return body


def _next(iterator: Iterator[Event]) -> Any:
    return next(iterator, _DONE)


def create_app(service: InferenceService) -> Starlette:
    async def health(request: Request) -> Response:
        report = service.health()
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    async def route(request: Request) -> Response:
        try:
            body = await _body(request)
            # Embedding the query is CPU work: off the event loop, so other requests keep flowing.
            decision = await anyio.to_thread.run_sync(service.route, body)
        except RequestError as error:
            return _error(str(error), 400)
        except NotReady as error:
            return _error(str(error), 503)
        return JSONResponse(decision)

    async def generate(request: Request) -> Response:
        try:
            body = await _body(request)
            decision, events = await anyio.to_thread.run_sync(service.open, body)
        except RequestError as error:
            return _error(str(error), 400)
        except NotReady as error:
            return _error(str(error), 503)
        if not body.get("stream"):
            try:
                finished = await anyio.to_thread.run_sync(_last, events)
            except Exception as error:
                logger.exception("generation failed")
                return _error(f"Generation failed: {error}", 500)
            return JSONResponse({"route": decision, **{k: v for k, v in finished.items() if k != "type"}})
        return StreamingResponse(_ndjson(decision, events), media_type="application/x-ndjson")

    async def load_expert(request: Request) -> Response:
        try:
            body = await _body(request)
            info = await anyio.to_thread.run_sync(_load, service, body)
        except RequestError as error:
            return _error(str(error), 400)
        except NotReady as error:
            return _error(str(error), 503)
        return JSONResponse(info)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/route", route, methods=["POST"]),
            Route("/generate", generate, methods=["POST"]),
            Route("/experts/load", load_expert, methods=["POST"]),
        ]
    )


def _last(events: Iterator[Event]) -> Event:
    last: Event = {}
    for event in events:
        last = event
    if last.get("type") != "finished":
        raise RuntimeError("the generation ended without a result")
    return last


def _load(service: InferenceService, body: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    from workers.moe.adapters import ExpertRef, ExpertRefused, ExpertUnavailable

    engine = getattr(service.backend, "engine", None)
    if engine is None:
        raise NotReady("The local engine is not loaded (or the backend is not local).")
    try:
        info = engine.load_expert(ExpertRef(id=str(body["id"]), location=str(body["location"])))
    except (KeyError, ExpertRefused, ExpertUnavailable) as error:
        raise RequestError(str(error)) from error
    return asdict(info) if is_dataclass(info) and not isinstance(info, type) else {"id": str(body["id"])}


async def _ndjson(decision: dict[str, Any] | None, events: Iterator[Event]) -> AsyncIterator[bytes]:
    """One JSON object per line; the blocking iterator is read in a worker thread, one event at a time."""
    if decision is not None:
        yield _line({"type": "route", "decision": decision})
    try:
        while (event := await anyio.to_thread.run_sync(_next, events)) is not _DONE:
            yield _line(event)
    except Exception as error:  # mid-stream: the status line has gone out already, so say it in the stream
        logger.exception("generation failed mid-stream")
        yield _line({"type": "error", "message": f"Generation failed: {error}"})
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            await anyio.to_thread.run_sync(close)  # frees the engine row when the client disconnected


def _line(event: Event) -> bytes:
    return (json.dumps(event, separators=(",", ":")) + "\n").encode()
