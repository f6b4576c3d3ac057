"""The OpenAPI description: a valid document, every route with exactly its methods, and real answers that match."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from openapi_spec_validator import validate

from tests.webapp.api.openapi_schema import assert_documented, spec
from tests.webapp.conftest import Cast
from tests.webapp.experts.conftest import make_expert
from tests.webapp.jobs.conftest import make_corpus, make_job
from webapp.corpora.models import CorpusFile
from webapp.experts import services as expert_services
from webapp.jobs.models import JobStatus
from webapp.jobs.presenters import job_json
from webapp.tenants.models import ApiToken
from webapp.webhooks import services as webhook_services
from webapp.webhooks.models import WebhookEndpoint

API_NAMESPACES = {"api": "/api/v1/", "openai": "/v1/"}
METHODS = ("get", "post", "put", "patch", "delete")


def api_routes() -> dict[str, str]:
    """OpenAPI path template → a concrete URL, for every route of the two API namespaces."""
    routes: dict[str, str] = {}
    for entry in get_resolver().url_patterns:
        if not isinstance(entry, URLResolver) or entry.namespace not in API_NAMESPACES:
            continue
        for pattern in entry.url_patterns:
            assert isinstance(pattern, URLPattern)
            route = str(pattern.pattern)
            template = API_NAMESPACES[entry.namespace] + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
            routes[template] = API_NAMESPACES[entry.namespace] + re.sub(
                r"<int:\w+>", "1", re.sub(r"<path:\w+>", "x", route)
            )
    return routes


def test_it_serves_a_valid_openapi_31_document_without_a_token(db: None) -> None:
    response = Client().get(reverse("api:openapi"))
    assert response.status_code == 200
    document = response.json()
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": "http://testserver"}]
    assert document["paths"]["/api/v1/openapi.json"]["get"]["security"] == []


def test_it_describes_every_route_with_exactly_the_methods_its_view_takes(db: None) -> None:
    routes = api_routes()
    assert set(spec()["paths"]) == set(routes)
    for template, url in routes.items():
        # A method no view takes: the decorator answers 405 with the methods it does take, before anything else.
        allowed = Client().generic("PROPFIND", url)
        assert allowed.status_code == 405, url
        taken = {method.strip().lower() for method in allowed["Allow"].split(",")} - {"head", "options"}
        documented = {method for method in spec()["paths"][template] if method in METHODS}
        assert documented == taken, template


def test_it_reads_the_job_options_off_the_job_form(db: None) -> None:
    options = spec()["components"]["schemas"]["JobCreate"]["properties"]["options"]["properties"]
    assert options["lora_rank"]["enum"] == [4, 8, 16, 32, 64]
    assert (options["alpha"]["minimum"], options["alpha"]["maximum"], options["alpha"]["default"]) == (0.0, 1.0, 0.5)
    assert options["pairs_per_chunk"]["type"] == "integer"
    assert options["reasoning"] == {
        "type": "boolean",
        "default": False,
        "description": options["reasoning"]["description"],
    }
    assert "R1-style" in options["reasoning"]["description"]
    assert options["self_reward"]["anyOf"] == [{"type": "string", "enum": ["auto", "on", "off"]}, {"type": "boolean"}]
    assert options["self_reward"]["default"] == "auto"
    assert "true and false (before auto) mean on and off" in options["self_reward"]["description"]


@pytest.fixture
def world(cast: Cast, settings: Any, tmp_path: Path, public_dns: None) -> dict[str, Any]:
    """One of each object for org A (and a shared expert of org B), and A's token."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.STORAGE_BACKEND = "filesystem"
    settings.INFERENCE_URL = "http://127.0.0.1:9"  # closed: the chat API answers its documented 503
    settings.INFERENCE_TIMEOUT_SECONDS = 2.0
    settings.GLOBAL_TEACHERS = ["SmolLM2 (packaged)=packaged:smollm2-135m-instruct"]
    corpus = make_corpus(cast.org)
    file = CorpusFile.objects.create(
        organization=cast.org, corpus=corpus, name="a.txt", declared_size=5, status=CorpusFile.Status.UPLOADING
    )
    expert = make_expert(cast.org)
    job = make_job(corpus, JobStatus.SUCCEEDED, expert=expert)
    expert.versions.filter(number=2).update(job=job)
    theirs = make_expert(cast.other_org, "Travel rules")
    expert_services.publish(theirs, user=cast.outsider)
    token, plaintext = ApiToken.issue(organization=cast.org, name="A", created_by=cast.owner)
    hook, _ = WebhookEndpoint.create(
        organization=cast.org, url="https://ci.example.com/h", description="", events=["job.failed"], created_by=None
    )
    delivery = webhook_services.emit(cast.org, "job.failed", job_json(job))[0]
    return {
        "ids": {
            "corpus_id": corpus.pk,
            "file_id": file.pk,
            "number": 1,
            "job_id": job.pk,
            "expert_id": expert.pk,
            "token_id": token.pk,
            "model": expert.slug,
            "endpoint_id": hook.pk,
            "delivery_id": delivery.pk,
        },
        "theirs": theirs,
        "client": Client(headers={"Authorization": f"Bearer {plaintext}"}),
    }


def fill(template: str, ids: dict[str, Any]) -> str:
    return re.sub(r"\{(\w+)\}", lambda match: str(ids[match.group(1)]), template)


@pytest.mark.django_db
def test_every_read_answers_what_the_document_says(world: dict[str, Any]) -> None:
    client = world["client"]
    checked = []
    for template, operations in spec()["paths"].items():
        if "get" not in operations or template.endswith("/download"):
            continue
        response = client.get(fill(template, world["ids"]))
        assert response.status_code == 200, (template, response.content[:300])
        assert_documented(template, "get", response)
        missing = client.get(fill(template, {key: 999_999 for key in world["ids"]}))
        if "{" in template:
            assert missing.status_code == 404, template
            assert_documented(template, "get", missing)
        checked.append(template)
    assert len(checked) >= 16
    # Another org's shared expert, and the download's zip.
    assert_documented("/api/v1/experts/{expert_id}", "get", client.get(f"/api/v1/experts/{world['theirs'].pk}"))
    download = client.get(fill("/api/v1/experts/{expert_id}/download", world["ids"]))
    assert (
        download["Content-Type"]
        in spec()["paths"]["/api/v1/experts/{expert_id}/download"]["get"]["responses"]["200"]["content"]
    )


@pytest.mark.django_db
def test_changes_and_refusals_answer_what_the_document_says(world: dict[str, Any]) -> None:
    client, ids = world["client"], world["ids"]

    def send(method: str, template: str, body: Any) -> Any:
        url = fill(template, ids)
        return client.generic(method.upper(), url, json.dumps(body), content_type="application/json")

    cases = [
        ("post", "/api/v1/corpora", {"name": "Policies"}, 201),
        ("post", "/api/v1/corpora", {"name": ""}, 400),
        ("post", "/api/v1/corpora/{corpus_id}/files", {"name": "big.txt", "size": 10}, 201),
        ("post", "/api/v1/corpora/{corpus_id}/files", {"name": "big.txt"}, 400),
        ("delete", "/api/v1/corpora/{corpus_id}/files/{file_id}", None, 200),
        ("post", "/api/v1/jobs", {"name": "x", "corpus": ids["corpus_id"], "options": {"lora_rank": 5}}, 400),
        ("post", "/api/v1/jobs/{job_id}/cancel", None, 409),
        ("patch", "/api/v1/experts/{expert_id}", {"status": "disabled", "active_version": 1}, 200),
        ("patch", "/api/v1/experts/{expert_id}", {"status": "paused"}, 400),
        ("post", "/api/v1/webhooks", {"url": "https://deploy.example.com/h", "events": ["job.succeeded"]}, 201),
        ("post", "/api/v1/webhooks", {"url": "ftp://deploy.example.com/h", "events": ["job.succeeded"]}, 400),
        ("post", "/api/v1/webhooks/{endpoint_id}/roll-secret", None, 200),
        ("post", "/api/v1/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver", None, 409),  # still pending
        ("post", "/api/v1/webhooks/{endpoint_id}/test", None, 202),
        ("patch", "/api/v1/webhooks/{endpoint_id}", {"enabled": False}, 200),
        ("post", "/api/v1/webhooks/{endpoint_id}/test", None, 409),
        ("delete", "/api/v1/webhooks/{endpoint_id}", None, 200),
        ("post", "/v1/chat/completions", {"model": "moe"}, 400),
        ("post", "/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "Hi"}]}, 404),
        ("post", "/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "Hi"}]}, 503),
        ("post", "/v1/completions", {"model": "base", "prompt": ""}, 400),
    ]
    for method, template, body, status in cases:
        response = send(method, template, body)
        assert response.status_code == status, (method, template, response.content[:300])
        assert_documented(template, method, response)
    unauthenticated = Client().get("/api/v1/jobs")
    assert_documented("/api/v1/jobs", "get", unauthenticated)
