"""The web process's client of the resident inference engine (`python -m workers.moe`, INFERENCE_URL).

The engine's internal HTTP API (workers/moe/server.py) takes ids and artifact locations; this module is where
the web app turns an org's mixture (read from the database) into them. The request never chooses candidates:
`route_candidates(org)` does. No torch here: plain HTTP with httpx.

Errors: `EngineUnavailable` (connection refused, timeout, engine 5xx — the API answers 503) and `EngineRejected`
(the engine refused the request: bad parameters, an expert it cannot load — the API answers 400).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from django.conf import settings

from webapp.experts.models import Mixture
from webapp.experts.services import mixture_for, route_candidates
from webapp.tenants.models import Organization


class EngineUnavailable(Exception):
    """The engine did not answer (down, restarting, overloaded)."""


class EngineRejected(Exception):
    """The engine answered with a 4xx: the message says why (shown to the caller)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _timeout() -> httpx.Timeout:
    seconds = float(settings.INFERENCE_TIMEOUT_SECONDS)
    return httpx.Timeout(seconds, connect=min(5.0, seconds))


def _url(path: str) -> str:
    return f"{settings.INFERENCE_URL.rstrip('/')}{path}"


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        message = str(response.json().get("error", {}).get("message") or response.text)
    except ValueError:
        message = response.text[:500]
    if response.status_code >= 500:
        raise EngineUnavailable(message or f"The inference engine answered {response.status_code}.")
    raise EngineRejected(message, response.status_code)


def route_payload(organization: Organization, query: str, mixture: Mixture | None = None) -> dict[str, Any]:
    mixture = mixture or mixture_for(organization)
    return {"query": query, "candidates": route_candidates(organization), "settings": mixture.router_settings()}


def health() -> dict[str, Any]:
    try:
        response = httpx.get(_url("/health"), timeout=httpx.Timeout(3.0))
    except httpx.HTTPError as error:
        raise EngineUnavailable(f"The inference engine is not answering ({error.__class__.__name__}).") from error
    _raise_for(response)
    return dict(response.json())


def route(organization: Organization, query: str, mixture: Mixture | None = None) -> dict[str, Any]:
    """The router's decision for `query` among the org's mixture (the mixture page's "try a query")."""
    return post("/route", route_payload(organization, query, mixture))


def post(path: str, payload: dict[str, Any]) -> dict[str, Any]:
    try:
        response = httpx.post(_url(path), json=payload, timeout=_timeout())
    except httpx.HTTPError as error:
        raise EngineUnavailable(f"The inference engine is not answering ({error.__class__.__name__}).") from error
    _raise_for(response)
    return dict(response.json())


async def apost(path: str, payload: dict[str, Any]) -> dict[str, Any]:
    try:
        async with httpx.AsyncClient(timeout=_timeout()) as client:
            response = await client.post(_url(path), json=payload)
    except httpx.HTTPError as error:
        raise EngineUnavailable(f"The inference engine is not answering ({error.__class__.__name__}).") from error
    _raise_for(response)
    return dict(response.json())


async def astream(payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """The engine's streamed events for a /generate payload: route?, delta*, then finished (or an error event).

    An error before the first event raises (EngineUnavailable / EngineRejected); one in the middle of a stream
    arrives as an event of type "error", since the caller has already started its own response.
    """
    try:
        async with (
            httpx.AsyncClient(timeout=_timeout()) as client,
            client.stream("POST", _url("/generate"), json={**payload, "stream": True}) as response,
        ):
            if response.status_code >= 400:
                await response.aread()
                _raise_for(response)
            async for line in response.aiter_lines():
                if line.strip():
                    yield json.loads(line)
    except httpx.HTTPError as error:
        raise EngineUnavailable(f"The inference engine stopped answering ({error.__class__.__name__}).") from error
