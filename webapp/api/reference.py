"""The API reference page: the OpenAPI document (`webapp/api/openapi.py`) as a server-rendered page.

No Swagger UI or ReDoc: they load scripts a self-hosted install would have to vendor, and this page needs none.
Public like the document it renders (it holds no data).
"""

from __future__ import annotations

import re
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET

from webapp.api import openapi

Schema = dict[str, Any]
METHODS = ("get", "post", "put", "patch", "delete")


def type_label(schema: Schema) -> str:
    """A schema in a few words: `integer`, `string or null`, `one of kd, qa`, `list of Expert`."""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "const" in schema:
        return repr(schema["const"]).replace("True", "true").replace("'", '"')
    if "anyOf" in schema:
        return " or ".join(type_label(option) for option in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(str(value) for value in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        items = schema.get("items")
        return f"list of {type_label(items)}" if items else "list"
    if kind == "object" and {"object", "data"} <= schema.get("properties", {}).keys():
        return f"list of {type_label(schema['properties']['data'].get('items', {}))}"
    if isinstance(kind, list):
        return " or ".join(kind)
    return {"string": "binary" if schema.get("contentEncoding") else "string"}.get(kind, kind)


def inline_code(text: str) -> SafeString:
    """Text with its `backticked` words as <code>, the rest escaped (the document's descriptions are Markdown)."""
    return mark_safe(re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text)))  # noqa: S308 - escaped just before


def _ref_name(schema: Schema) -> str:
    """The object a schema names (itself, or the items of a list of it), linked on the page; "" for none."""
    if "$ref" not in schema and schema.get("type") == "object":
        schema = schema.get("properties", {}).get("data", {}).get("items", {})
    elif "$ref" not in schema and schema.get("type") == "array":
        schema = schema.get("items", {})
    return str(schema["$ref"]).rsplit("/", 1)[-1] if "$ref" in schema else ""


def _bounds(schema: Schema) -> str:
    parts = []
    for key, word in (("minimum", "min"), ("maximum", "max"), ("maxLength", "max length"), ("default", "default")):
        for option in (schema, *schema.get("anyOf", [])):
            if key in option:
                value = option[key]
                parts.append(
                    f"{word} {'null' if value is None else str(value).lower() if isinstance(value, bool) else value}"
                )
                break
    return ", ".join(parts)


def _inline_object(schema: Schema) -> Schema | None:
    """The object schema written in place (not a reference) that a property holds, alone, in a list or nullable."""
    for option in (schema, *schema.get("anyOf", [])):
        if option.get("type") == "array" and isinstance(option.get("items"), dict):
            option = option["items"]
        if option.get("type") == "object" and option.get("properties") and "$ref" not in option:
            return option
    return None


def fields(schema: Schema, prefix: str = "") -> list[dict[str, Any]]:
    """An object schema's properties as table rows; an object written in place adds its own as `name.field`
    (`name[].field` in a list)."""
    required = set(schema.get("required", []))
    rows: list[dict[str, Any]] = []
    for name, prop in schema.get("properties", {}).items():
        rows.append(
            {
                "name": prefix + name,
                "type": type_label(prop),
                "ref": _ref_name(prop),
                "required": name in required,
                "notes": _bounds(prop),
                "description": inline_code(prop.get("description", "")),
            }
        )
        inner = _inline_object(prop)
        if inner is not None and not {"object", "data"} <= inner["properties"].keys():
            in_list = prop.get("type") == "array" or any(o.get("type") == "array" for o in prop.get("anyOf", []))
            rows += fields(inner, f"{prefix}{name}{'[]' if in_list else ''}.")
    return rows


def _body(operation: Schema) -> list[dict[str, Any]]:
    content = (operation.get("requestBody") or {}).get("content", {})
    return [
        {
            "media_type": media,
            "type": type_label(entry["schema"]),
            "ref": entry["schema"]["$ref"].rsplit("/", 1)[-1] if "$ref" in entry["schema"] else "",
            "fields": [] if "$ref" in entry["schema"] else fields(entry["schema"]),
        }
        for media, entry in content.items()
    ]


def _responses(operation: Schema) -> list[dict[str, Any]]:
    rows = []
    for status, response in operation["responses"].items():
        bodies = [
            {
                "type": type_label(entry["schema"]),
                "ref": _ref_name(entry["schema"]),
                "media_type": "" if media == "application/json" else media,
            }
            for media, entry in response.get("content", {}).items()
        ]
        rows.append({"status": status, "description": inline_code(response["description"]), "bodies": bodies})
    return rows


def sections(document: Schema) -> list[dict[str, Any]]:
    """Operations grouped by tag, in the document's tag order."""
    by_tag: dict[str, list[dict[str, Any]]] = {tag["name"]: [] for tag in document["tags"]}
    # Webhooks are requests Distillery sends to the org's endpoint, named by their event.
    sent = {f"{event} → your endpoint": item for event, item in document.get("webhooks", {}).items()}
    for path, item in {**document["paths"], **sent}.items():
        for method in METHODS:
            if method not in item:
                continue
            operation = item[method]
            by_tag[operation["tags"][0]].append(
                {
                    "id": operation["operationId"],
                    "method": method.upper(),
                    "path": path,
                    "summary": operation["summary"],
                    "description": inline_code(operation.get("description", "")),
                    "public": operation.get("security") == [],
                    "parameters": [
                        {
                            **parameter,
                            "type": type_label(parameter["schema"]),
                            "description": inline_code(parameter.get("description", "")),
                        }
                        for parameter in operation.get("parameters", [])
                    ],
                    "body": _body(operation),
                    "responses": _responses(operation),
                }
            )
    return [{"tag": tag, "operations": operations} for tag, operations in by_tag.items() if operations]


@require_GET
def api_reference(request: HttpRequest) -> HttpResponse:
    document = openapi.document(request.build_absolute_uri("/").rstrip("/"))
    schemas = [
        {"name": name, "description": inline_code(schema.get("description", "")), "fields": fields(schema)}
        for name, schema in document["components"]["schemas"].items()
    ]
    context = {
        "server": document["servers"][0]["url"],
        "sections": sections(document),
        "schemas": schemas,
        "openapi_url": reverse("api:openapi"),
    }
    return render(request, "api/reference.html", context)
