"""Checking an API answer against the OpenAPI document's schema for it (jsonschema, draft 2020-12 as OAS 3.1)."""

from __future__ import annotations

from functools import cache
from typing import Any

from jsonschema import Draft202012Validator

from webapp.api.openapi import document


@cache
def spec() -> dict[str, Any]:
    return document("http://testserver")


def response_schema(path: str, method: str, status: int, media_type: str = "application/json") -> dict[str, Any]:
    """The schema the document gives for this answer; a KeyError when it documents no such answer."""
    responses = spec()["paths"][path][method.lower()]["responses"]
    return responses[str(status)]["content"][media_type]["schema"]


def assert_matches(schema: dict[str, Any], instance: Any) -> None:
    """Validate with the document's components in scope, so `#/components/schemas/…` references resolve."""
    Draft202012Validator({**schema, "components": spec()["components"]}).validate(instance)


def assert_documented(path: str, method: str, response: Any) -> None:
    """The answer's status is documented for the operation, and its JSON body matches the schema there."""
    assert_matches(response_schema(path, method, response.status_code), response.json())
