"""The API reference page: the OpenAPI document as a page anyone can read, every operation and object on it."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.webapp.api.openapi_schema import spec
from tests.webapp.conftest import Cast
from webapp.api.reference import fields, inline_code, type_label

pytestmark = pytest.mark.django_db


def test_it_lists_every_operation_and_object_of_the_document(cast: Cast) -> None:
    page = Client().get(reverse("api-reference")).content.decode()
    for path, item in spec()["paths"].items():
        for method, operation in item.items():
            assert f'id="{operation["operationId"]}"' in page
            assert f"<code>{method.upper()} {path}</code>" in page
    for name in spec()["components"]["schemas"]:
        assert f'id="schema-{name}"' in page
    assert 'href="/api/v1/openapi.json"' in page
    # The job options, written in place in JobCreate, get a row each with their bounds and defaults.
    assert "<code>options.lora_rank</code>" in page
    assert "one of 4, 8, 16, 32, 64" in page
    assert "min 0.1, max 20, default 1.0" in page
    # Links to objects lead somewhere on the page.
    assert 'href="#schema-JobCreate"' in page


def test_it_is_linked_from_the_api_tokens_page(cast: Cast) -> None:
    page = cast.client_for("owner").get(reverse("tenants:tokens")).content.decode()
    assert f'href="{reverse("api-reference")}"' in page
    assert cast.client_for("member").get(reverse("api-reference")).status_code == 200


@pytest.mark.parametrize(
    ("schema", "label"),
    [
        ({"type": "integer"}, "integer"),
        ({"anyOf": [{"type": "string"}, {"type": "null"}]}, "string or null"),
        ({"enum": ["kd", "qa"], "type": "string"}, "one of kd, qa"),
        ({"type": "array", "items": {"$ref": "#/components/schemas/Expert"}}, "list of Expert"),
        ({"const": True}, "true"),
        ({"const": "list"}, '"list"'),
        ({"type": "string", "contentEncoding": "binary"}, "binary"),
    ],
)
def test_it_names_a_schema_s_type_in_a_few_words(schema: dict[str, object], label: str) -> None:
    assert type_label(schema) == label


def test_it_flattens_objects_written_in_place_into_dotted_rows() -> None:
    schema = {
        "type": "object",
        "properties": {
            "files": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
            "usage": {"type": "object", "properties": {"tokens": {"type": "integer"}}, "required": ["tokens"]},
        },
        "required": ["files"],
    }
    rows = [(row["name"], row["type"], row["required"]) for row in fields(schema)]
    assert rows == [
        ("files", "list of object", True),
        ("files[].name", "string", False),
        ("usage", "object", False),
        ("usage.tokens", "integer", True),
    ]


def test_it_shows_backticked_words_as_code_and_escapes_the_rest() -> None:
    assert inline_code("the `id` of <b>") == "the <code>id</code> of &lt;b&gt;"
    assert inline_code("`<script>`") == "<code>&lt;script&gt;</code>"
