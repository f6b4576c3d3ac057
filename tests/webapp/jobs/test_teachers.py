"""Teachers: the form (catalog specs, endpoints behind the allow-list), the write-only API key, audit events,
"Test connection" against a local OpenAI-compatible stub, shared teachers, deletion."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse

from tests.webapp.conftest import Cast
from tests.webapp.jobs.conftest import SECRET_KEY, Api, make_endpoint_teacher, make_job
from tests.workers.ml.distill.openai_stub import OpenAIStub
from webapp.corpora.models import Corpus
from webapp.jobs.models import JobStatus, Notification, Teacher
from webapp.tenants.models import AuditEvent

pytestmark = pytest.mark.django_db

ENDPOINT_FORM = {
    "name": "Big model",
    "kind": "endpoint",
    "base_url": "https://api.example.com/v1",
    "model_name": "big-model",
    "api_key": SECRET_KEY,
    "price_input_per_million": "0.50",
    "price_output_per_million": "",
}


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(api_key=SECRET_KEY, models=["stub-model"]) as server:
        yield server


def errors_of(response: Any) -> dict[str, list[str]]:
    return {name: list(errors) for name, errors in response.context["form"].errors.items()}


# ------------------------------------------------------------------ the form
def test_it_adds_a_catalog_teacher(cast: Cast) -> None:
    response = cast.client_for("admin").post(
        reverse("jobs:teacher-create"), {"name": "Gemma", "kind": "catalog", "spec": "packaged:gemma3-270m"}
    )
    assert response.status_code == 302
    teacher = Teacher.objects.get(name="Gemma")
    assert (teacher.organization, teacher.kind, teacher.spec) == (cast.org, "catalog", "packaged:gemma3-270m")
    assert (teacher.created_by, teacher.api_key_encrypted, teacher.base_url) == (cast.admin, "", "")
    event = AuditEvent.objects.get(action=AuditEvent.Action.ORG_UPDATED, organization=cast.org)
    assert event.target == "teacher “Gemma”"
    assert event.detail["event"] == "created"
    assert not AuditEvent.objects.filter(action=AuditEvent.Action.SECRET_CHANGED).exists()


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("", "A catalog teacher needs a model spec."),
        ("gemma3-270m", "The spec must start with packaged: or hf: (e.g. packaged:gemma3-270m)."),
        ("tiny:smollm2", "The spec must start with packaged: or hf: (e.g. packaged:gemma3-270m)."),
        ("hf:", "The spec must start with packaged: or hf: (e.g. packaged:gemma3-270m)."),
    ],
)
def test_it_refuses_a_catalog_spec_without_a_known_prefix(cast: Cast, spec: str, error: str) -> None:
    response = cast.client_for("owner").post(
        reverse("jobs:teacher-create"), {"name": "X", "kind": "catalog", "spec": spec}
    )
    assert response.status_code == 200
    assert errors_of(response) == {"spec": [error]}
    assert not Teacher.objects.exists()


def test_it_takes_local_models_only_from_the_operators_model_roots(cast: Cast, settings: Any, tmp_path: Path) -> None:
    settings.MODEL_ROOTS = [tmp_path / "models"]
    client = cast.client_for("owner")
    url = reverse("jobs:teacher-create")

    outside = client.post(url, {"name": "Etc", "kind": "catalog", "spec": "hf:/etc/secrets"})
    escape = client.post(url, {"name": "Up", "kind": "catalog", "spec": f"hf:{tmp_path}/models/../other"})
    inside = client.post(url, {"name": "Ok", "kind": "catalog", "spec": f"hf:{tmp_path}/models/llama"})

    refusal = f"A local model must be under a directory the operator allows ({tmp_path / 'models'})."
    assert errors_of(outside) == {"spec": [refusal]}
    assert errors_of(escape) == {"spec": [refusal]}
    assert inside.status_code == 302
    assert list(Teacher.objects.values_list("name", flat=True)) == ["Ok"]


def test_it_needs_a_base_url_and_model_for_an_endpoint_teacher(cast: Cast) -> None:
    response = cast.client_for("owner").post(reverse("jobs:teacher-create"), {"name": "X", "kind": "endpoint"})
    assert errors_of(response) == {
        "base_url": ["An endpoint teacher needs the base URL of its API."],
        "model_name": ["An endpoint teacher needs the model name the endpoint serves."],
    }


def test_it_refuses_a_negative_price(cast: Cast) -> None:
    response = cast.client_for("owner").post(
        reverse("jobs:teacher-create"), {**ENDPOINT_FORM, "price_input_per_million": "-1"}
    )
    assert errors_of(response) == {"price_input_per_million": ["Ensure this value is greater than or equal to 0."]}


def test_it_refuses_a_second_teacher_of_the_same_name(cast: Cast) -> None:
    make_endpoint_teacher(cast.org, name="Big model")
    response = cast.client_for("owner").post(reverse("jobs:teacher-create"), {**ENDPOINT_FORM, "name": "big MODEL"})
    assert errors_of(response) == {"name": ["Your organization already has a teacher with this name."]}


@pytest.mark.parametrize(
    ("base_url", "error"),
    [
        ("http://169.254.169.254/v1", "Cloud metadata addresses cannot be teachers."),
        ("http://169.254.10.10:8000/v1", "169.254.10.10 resolves to 169.254.10.10, a link-local or reserved address"),
        ("http://[fe80::1]:8000/v1", "fe80::1 resolves to fe80::1, a link-local or reserved address: refused."),
        ("http://127.0.0.1:8000/v1", "127.0.0.1 resolves to the private address 127.0.0.1: the operator must allow"),
        ("http://10.1.2.3/v1", "10.1.2.3 resolves to the private address 10.1.2.3"),
        ("ftp://api.example.com/v1", "The endpoint must be an http(s) URL with a host."),
        ("not a url", "Enter a valid URL."),
    ],
)
def test_it_refuses_endpoints_outside_the_allow_list(cast: Cast, base_url: str, error: str) -> None:
    response = cast.client_for("owner").post(reverse("jobs:teacher-create"), {**ENDPOINT_FORM, "base_url": base_url})
    assert response.status_code == 200
    [message] = errors_of(response)["base_url"]
    assert message.startswith(error), message
    assert not Teacher.objects.exists()


def test_it_allows_a_private_endpoint_when_the_operator_does(cast: Cast, settings: Any) -> None:
    settings.TEACHER_ENDPOINT_ALLOW_PRIVATE = True
    client = cast.client_for("owner")
    response = client.post(reverse("jobs:teacher-create"), {**ENDPOINT_FORM, "base_url": "http://127.0.0.1:8000/v1"})
    assert response.status_code == 302
    assert Teacher.objects.get().base_url == "http://127.0.0.1:8000/v1"
    # Metadata and link-local addresses stay refused whatever the operator allows.
    refused = client.post(
        reverse("jobs:teacher-create"), {**ENDPOINT_FORM, "name": "Meta", "base_url": "http://169.254.169.254/"}
    )
    assert errors_of(refused) == {"base_url": ["Cloud metadata addresses cannot be teachers."]}
    mapped = client.post(
        reverse("jobs:teacher-create"),
        {**ENDPOINT_FORM, "name": "Mapped", "base_url": "http://[::ffff:169.254.169.254]/v1"},
    )
    assert errors_of(mapped) == {
        "base_url": ["::ffff:169.254.169.254 resolves to 169.254.169.254, a link-local or reserved address: refused."]
    }
    assert Teacher.objects.count() == 1


def test_it_refuses_hosts_missing_from_the_operators_host_list(cast: Cast, settings: Any) -> None:
    settings.TEACHER_ENDPOINT_ALLOWED_HOSTS = ["vllm.example.com"]
    client = cast.client_for("owner")
    refused = client.post(reverse("jobs:teacher-create"), ENDPOINT_FORM)
    assert errors_of(refused) == {
        "base_url": ["api.example.com is not on this server's list of allowed teacher hosts."]
    }
    allowed = client.post(reverse("jobs:teacher-create"), {**ENDPOINT_FORM, "base_url": "https://vllm.example.com/v1"})
    assert allowed.status_code == 302


# ------------------------------------------------------------------ the API key is write-only
def test_it_stores_the_api_key_encrypted_and_records_the_change(cast: Cast) -> None:
    response = cast.client_for("owner").post(reverse("jobs:teacher-create"), ENDPOINT_FORM)
    assert response.status_code == 302
    teacher = Teacher.objects.get()
    assert teacher.api_key_encrypted
    assert teacher.api_key_encrypted != SECRET_KEY
    assert SECRET_KEY not in teacher.api_key_encrypted
    assert teacher.api_key_last4 == "9876"
    assert teacher.api_key() == SECRET_KEY
    assert str(teacher.price_input_per_million) == "0.5000"
    events = AuditEvent.objects.filter(organization=cast.org, target="teacher “Big model”")
    assert sorted(events.values_list("action", flat=True)) == ["org.updated", "secret.changed"]
    assert events.get(action=AuditEvent.Action.SECRET_CHANGED).detail["event"] == "api key set"
    for event in events:
        assert "SECRET" not in str(event.detail)


def test_it_never_shows_the_api_key_on_any_page_or_api_answer(
    cast: Cast, corpus: Corpus, api: Api, settings: Any
) -> None:
    owner = cast.client_for("owner")
    owner.post(reverse("jobs:teacher-create"), ENDPOINT_FORM)
    teacher = Teacher.objects.get()
    job = make_job(corpus, JobStatus.FAILED, teacher=teacher, teacher_snapshot=teacher.snapshot(), error="HTTP 401")
    Notification.objects.create(organization=cast.org, recipient=cast.owner, message="Job failed.", url="/jobs/")
    pages = [
        reverse("jobs:teachers"),
        reverse("jobs:teacher-edit", args=[teacher.pk]),
        reverse("jobs:teacher-delete", args=[teacher.pk]),
        reverse("jobs:list"),
        reverse("jobs:create"),
        reverse("jobs:create") + f"?clone={job.pk}",
        reverse("jobs:estimate") + f"?corpus={corpus.pk}&teacher=org:{teacher.pk}&recipe=qa",
        reverse("jobs:detail", args=[job.pk]),
        reverse("jobs:notifications"),
    ]
    bodies = {url: owner.get(url).content.decode() for url in pages}
    bodies[reverse("jobs:detail", args=[job.pk]) + " (htmx)"] = owner.get(
        reverse("jobs:detail", args=[job.pk]), headers={"HX-Request": "true", "HX-Target": "job-status"}
    ).content.decode()
    for url in (reverse("api:teachers"), reverse("api:jobs"), reverse("api:job", args=[job.pk])):
        bodies[url] = api.get(url).content.decode()
    for url, body in bodies.items():
        assert SECRET_KEY not in body, url
        assert "SECRET" not in body, url
    for url in (reverse("jobs:teachers"), reverse("jobs:teacher-edit", args=[teacher.pk]), reverse("api:teachers")):
        assert "9876" in bodies[url], url
    # The password box of the edit form comes back empty.
    assert 'type="password" name="api_key" autocomplete="new-password"' in bodies[pages[1]]
    assert 'name="api_key" value=' not in bodies[pages[1]]
    assert api.get(reverse("api:teachers")).json()["data"][-1]["api_key_last4"] == "9876"


def test_it_keeps_the_saved_key_when_the_edit_leaves_it_empty(cast: Cast) -> None:
    teacher = make_endpoint_teacher(cast.org)
    encrypted = teacher.api_key_encrypted
    response = cast.client_for("admin").post(
        reverse("jobs:teacher-edit", args=[teacher.pk]),
        {**ENDPOINT_FORM, "api_key": "", "model_name": "bigger", "price_input_per_million": "0.5"},
    )
    assert response.status_code == 302
    teacher.refresh_from_db()
    assert (teacher.model_name, teacher.api_key_encrypted, teacher.api_key()) == ("bigger", encrypted, SECRET_KEY)
    event = AuditEvent.objects.get(organization=cast.org, action=AuditEvent.Action.ORG_UPDATED, target__contains="Big")
    assert event.detail["fields"] == ["model_name", "price_input_per_million"]
    assert not AuditEvent.objects.filter(action=AuditEvent.Action.SECRET_CHANGED).exists()


def test_it_replaces_and_clears_the_key(cast: Cast) -> None:
    teacher = make_endpoint_teacher(cast.org)
    client = cast.client_for("owner")
    url = reverse("jobs:teacher-edit", args=[teacher.pk])
    client.post(url, {**ENDPOINT_FORM, "api_key": "sk-new-key-1234"})
    teacher.refresh_from_db()
    assert (teacher.api_key(), teacher.api_key_last4) == ("sk-new-key-1234", "1234")
    client.post(url, {**ENDPOINT_FORM, "api_key": "", "clear_key": "on"})
    teacher.refresh_from_db()
    assert (teacher.api_key_encrypted, teacher.api_key_last4, teacher.api_key()) == ("", "", "")
    secret_events = AuditEvent.objects.filter(action=AuditEvent.Action.SECRET_CHANGED).order_by("created_at", "id")
    assert [event.detail["event"] for event in secret_events] == ["api key set", "api key cleared"]
    # Nothing saved: the "clear the key" box is not offered.
    assert 'name="clear_key"' not in client.get(url).content.decode()


def test_it_drops_the_key_when_an_endpoint_teacher_becomes_a_catalog_one(cast: Cast) -> None:
    teacher = make_endpoint_teacher(cast.org)
    cast.client_for("owner").post(
        reverse("jobs:teacher-edit", args=[teacher.pk]),
        {**ENDPOINT_FORM, "kind": "catalog", "spec": "packaged:gemma3-270m"},
    )
    teacher.refresh_from_db()
    assert (teacher.kind, teacher.spec, teacher.base_url, teacher.model_name) == (
        "catalog",
        "packaged:gemma3-270m",
        "",
        "",
    )
    assert (teacher.api_key_encrypted, teacher.price_input_per_million) == ("", None)
    assert AuditEvent.objects.get(action=AuditEvent.Action.SECRET_CHANGED).detail["event"] == "api key cleared"


# ------------------------------------------------------------------ test connection
def test_it_tests_an_endpoint_with_one_token(cast: Cast, settings: Any, stub: OpenAIStub) -> None:
    settings.TEACHER_ENDPOINT_ALLOW_PRIVATE = True
    teacher = make_endpoint_teacher(cast.org, base_url=stub.base_url, model_name="stub-model")
    response = cast.client_for("admin").post(
        reverse("jobs:teacher-test", args=[teacher.pk]), headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    assert [t.name for t in response.templates] == ["jobs/_connection.html"]
    assert "OK" in response.content.decode()
    assert "stub-model answered" in response.content.decode()
    [request] = stub.requests
    assert request.body["messages"] == [{"role": "user", "content": "ping"}]
    assert request.body["max_tokens"] == 1
    assert request.headers["authorization"] == f"Bearer {SECRET_KEY}"


def test_it_shows_an_endpoints_error_without_the_key(cast: Cast, settings: Any) -> None:
    settings.TEACHER_ENDPOINT_ALLOW_PRIVATE = True
    # The stub expects another key and echoes the one presented in its 401 message, as some servers do.
    with OpenAIStub(api_key="the-right-key") as stub:
        teacher = make_endpoint_teacher(cast.org, base_url=stub.base_url, model_name="stub-model")
        client = cast.client_for("owner")
        body = client.post(
            reverse("jobs:teacher-test", args=[teacher.pk]), headers={"HX-Request": "true"}
        ).content.decode()
        # Without JavaScript the answer comes back as a message on the edit page.
        page = client.post(reverse("jobs:teacher-test", args=[teacher.pk]), follow=True).content.decode()
        assert len(stub.requests) == 2
        assert SECRET_KEY in str(stub.requests[0].headers)
    assert "Failed" in body
    assert "HTTP 401" in body
    assert "Incorrect API key provided" in body
    assert SECRET_KEY not in body
    assert "SECRET" not in body
    assert "Big model: HTTP 401: Incorrect API key provided" in page
    assert "SECRET" not in page


def test_it_reports_an_unknown_model_and_an_unreachable_endpoint(cast: Cast, settings: Any) -> None:
    settings.TEACHER_ENDPOINT_ALLOW_PRIVATE = True
    client = cast.client_for("owner")
    with OpenAIStub(api_key=SECRET_KEY, models=["stub-model"]) as stub:
        teacher = make_endpoint_teacher(cast.org, base_url=stub.base_url, model_name="no-such-model")
        url = reverse("jobs:teacher-test", args=[teacher.pk])
        missing = client.post(url, headers={"HX-Request": "true"}).content.decode()
    assert "HTTP 404" in missing
    assert "The model `no-such-model` does not exist." in missing
    # The stub is gone: nothing listens on its port any more.
    gone = client.post(url, headers={"HX-Request": "true"}).content.decode()
    assert "Failed" in gone
    assert "Connection error" in gone


def test_it_checks_the_address_again_before_testing(cast: Cast, settings: Any, stub: OpenAIStub) -> None:
    teacher = make_endpoint_teacher(cast.org, base_url=stub.base_url, model_name="stub-model")
    body = (
        cast.client_for("owner")
        .post(reverse("jobs:teacher-test", args=[teacher.pk]), headers={"HX-Request": "true"})
        .content.decode()
    )
    assert "resolves to the private address 127.0.0.1" in body
    assert stub.requests == []


def test_it_knows_the_packaged_models_by_the_catalogs_own_specs() -> None:
    """The web process keeps its own table (it never imports torch); a spec the catalog does not know would pass
    "Test connection" and fail when the job starts."""
    from webapp.jobs import services
    from workers.ml import packaged
    from workers.ml.distill.qa_judge import JUDGE_MIN_PARAMETERS

    catalog = {model.spec: model for model in packaged.PACKAGED_MODELS.values()}
    assert set(services.TOKENIZER_FAMILIES) == set(catalog)
    assert set(services.PACKAGED_PARAMETERS) == set(catalog)
    assert services.QA_TEACHER_MIN_PARAMETERS == JUDGE_MIN_PARAMETERS  # the web warns where the engine draws the line


@pytest.mark.parametrize(
    ("spec", "ok", "message"),
    [
        ("packaged:gemma3-270m", True, "packaged:gemma3-270m is a packaged model of this server (gemma3"),
        ("packaged:llama-9000", False, "packaged:llama-9000 is not a packaged model of this server (known: "),
        ("hf:org/model-1.5b", True, "hf:org/model-1.5b is a valid hf: spec"),
        ("hf:../../etc", False, "hf:../../etc is not a spec this server understands"),
    ],
)
def test_it_says_whether_a_catalog_spec_is_known(cast: Cast, spec: str, ok: bool, message: str) -> None:
    teacher = Teacher.objects.create(organization=cast.org, name="Local", kind=Teacher.Kind.CATALOG, spec=spec)
    response = cast.client_for("owner").post(
        reverse("jobs:teacher-test", args=[teacher.pk]), headers={"HX-Request": "true"}
    )
    body = response.content.decode()
    assert ("OK:" if ok else "Failed:") in body
    assert message in body


# ------------------------------------------------------------------ list, shared teachers, deletion
def test_it_lists_the_orgs_teachers_and_the_shared_ones_read_only(cast: Cast) -> None:
    teacher = make_endpoint_teacher(cast.org, name="Big model")
    make_endpoint_teacher(cast.other_org, name="Globex model")
    page = cast.client_for("owner").get(reverse("jobs:teachers")).content.decode()
    assert "Big model" in page
    assert "•••• 9876" in page
    assert "Globex model" not in page
    assert "SmolLM2 (packaged)" in page
    assert "Gemma 3 270M (packaged)" in page
    assert "packaged:gemma3-270m is a packaged model of this server" in page
    # Shared teachers have no edit, test or delete links: only the org's own teacher has them.
    assert set(re.findall(r"/jobs/teachers/(\d+)/", page)) == {str(teacher.pk)}


def test_it_deletes_a_teacher_but_not_while_a_job_needs_it(cast: Cast, corpus: Corpus) -> None:
    teacher = make_endpoint_teacher(cast.org)
    job = make_job(corpus, JobStatus.TRAINING, teacher=teacher, teacher_snapshot=teacher.snapshot())
    client = cast.client_for("owner")
    url = reverse("jobs:teacher-delete", args=[teacher.pk])
    refused = client.post(url)
    assert refused.status_code == 200
    assert "Queued or running jobs use this teacher (Leave expert)" in refused.content.decode()
    assert Teacher.objects.filter(pk=teacher.pk).exists()
    job.status = JobStatus.SUCCEEDED
    job.save()
    assert client.post(url).status_code == 302
    assert not Teacher.objects.filter(pk=teacher.pk).exists()
    job.refresh_from_db()
    assert (job.teacher, job.teacher_snapshot["name"]) == (None, "Big model")
    assert AuditEvent.objects.filter(action=AuditEvent.Action.DELETED, target="teacher “Big model”").exists()


def test_rotate_secrets_re_encrypts_keys_so_the_old_key_can_go(cast: Cast, settings: Any) -> None:
    from cryptography.fernet import Fernet
    from django.core.management import call_command

    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    teacher = make_endpoint_teacher(cast.org)
    stored_before = Teacher.objects.get(pk=teacher.pk).api_key_encrypted

    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    call_command("rotate_secrets", stdout=io.StringIO())
    settings.FIELD_ENCRYPTION_KEYS = [new_key]  # the old key is gone

    rotated = Teacher.objects.get(pk=teacher.pk)
    assert rotated.api_key_encrypted != stored_before
    assert rotated.api_key() == SECRET_KEY
