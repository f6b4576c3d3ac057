"""The experts REST API: list, inspect, download, enable/disable and choose the version, each for the token's own
org only; another org's shared expert read-only and without its samples; any other id 404."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from tests.webapp.conftest import Cast
from tests.webapp.experts.conftest import make_expert
from tests.webapp.jobs.conftest import make_corpus, make_job
from webapp.experts import services
from webapp.experts.models import Expert
from webapp.jobs.models import JobStatus
from webapp.tenants.models import ApiToken, AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(cast: Cast) -> dict[str, Any]:
    """A client per org, each sending its org's token."""
    _, token_a = ApiToken.issue(organization=cast.org, name="A", created_by=cast.owner)
    _, token_b = ApiToken.issue(organization=cast.other_org, name="B", created_by=cast.outsider)
    return {
        "a": Client(headers={"Authorization": f"Bearer {token_a}"}),
        "b": Client(headers={"Authorization": f"Bearer {token_b}"}),
    }


def patch(client: Client, expert: Expert, body: Any) -> Any:
    url = reverse("api:expert", args=[expert.pk])
    return client.patch(url, json.dumps(body), content_type="application/json")


def unzip(response: Any) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))


def test_it_lists_the_orgs_experts_then_the_shared_ones_by_the_name_the_chat_api_takes(
    cast: Cast, api: dict[str, Any]
) -> None:
    own = make_expert(cast.org, "Leave policy")
    shared = make_expert(cast.other_org, "Travel rules")
    services.publish(shared, user=cast.outsider)
    make_expert(cast.other_org, "Globex secrets")  # not shared: never listed to org A

    listed = api["a"].get(reverse("api:experts")).json()["data"]

    assert [(item["id"], item["model"], item["own"]) for item in listed] == [
        (own.pk, "leave-policy", True),
        (shared.pk, "globex/travel-rules", False),
    ]
    assert listed[0]["active_version"] == 2
    assert listed[0]["gap_closed"] == 50.0
    assert [item["in_mixture"] for item in listed] == [True, False]
    services.include_shared(cast.org, shared)
    assert api["a"].get(reverse("api:experts")).json()["data"][1]["in_mixture"] is True
    # Org B sees its two experts and not org A's (which is not shared).
    assert [item["model"] for item in api["b"].get(reverse("api:experts")).json()["data"]] == [
        "globex-secrets",
        "travel-rules",
    ]


def test_it_shows_the_owner_every_version_with_its_metrics_and_job(cast: Cast, api: dict[str, Any]) -> None:
    expert = make_expert(cast.org)
    job = make_job(make_corpus(cast.org), JobStatus.SUCCEEDED, expert=expert)
    expert.versions.filter(number=2).update(job=job)

    detail = api["a"].get(reverse("api:expert", args=[expert.pk])).json()

    assert [(v["number"], v["active"], v["job"]) for v in detail["versions"]] == [(2, True, job.pk), (1, False, None)]
    assert detail["versions"][0]["metrics"]["qa"]["examples"][0]["question"] == "Question 0?"
    assert detail["versions"][0]["base"]["spec"] == "tiny:llama-2l"
    assert detail["samples_shared"] is True
    # The job names the expert and the version it made.
    job_json = api["a"].get(reverse("api:job", args=[job.pk])).json()
    assert job_json["expert"] == {"id": expert.pk, "model": "leave-policy", "version": 2}
    listed = api["a"].get(reverse("api:jobs")).json()["data"]
    assert listed[0]["expert"]["version"] == 2


def test_another_org_reads_a_shared_expert_s_active_version_without_its_samples(
    cast: Cast, api: dict[str, Any]
) -> None:
    expert = make_expert(cast.org)
    services.publish(expert, user=cast.owner)

    detail = api["b"].get(reverse("api:expert", args=[expert.pk])).json()

    assert detail["model"] == "acme/leave-policy"
    assert [v["number"] for v in detail["versions"]] == [2]
    assert "job" not in detail["versions"][0]
    assert detail["samples_shared"] is False
    assert detail["versions"][0]["metrics"]["qa"]["examples"] == []
    assert detail["versions"][0]["metrics"]["gap_closed"] == 0.5
    services.publish(expert, user=cast.owner, share_samples=True)
    detail = api["b"].get(reverse("api:expert", args=[expert.pk])).json()
    assert len(detail["versions"][0]["metrics"]["qa"]["examples"]) == 8


def test_it_downloads_the_active_or_a_chosen_version_as_a_peft_zip(cast: Cast, api: dict[str, Any]) -> None:
    expert = make_expert(cast.org)
    url = reverse("api:expert-download", args=[expert.pk])

    response = api["a"].get(url)
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="leave-policy-v2.zip"'
    names = unzip(response).namelist()
    assert "leave-policy-v2/adapter_model.safetensors" in names
    assert "leave-policy-v2/qa_data.jsonl" in names
    assert "leave-policy-v1/adapter_config.json" in unzip(api["a"].get(url + "?version=1")).namelist()
    for wanted in ("9", "x", "²"):
        missing = api["a"].get(url, {"version": wanted})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"


def test_another_org_downloads_a_shared_expert_s_active_version_only_without_samples(
    cast: Cast, api: dict[str, Any]
) -> None:
    expert = make_expert(cast.org)
    url = reverse("api:expert-download", args=[expert.pk])
    assert api["b"].get(url).status_code == 404  # not shared yet
    services.publish(expert, user=cast.owner)

    archive = unzip(api["b"].get(url))

    assert "leave-policy-v2/adapter_model.safetensors" in archive.namelist()
    assert "leave-policy-v2/qa_data.jsonl" not in archive.namelist()
    assert "SECRET-REFERENCE" not in archive.read("leave-policy-v2/README.md").decode()
    assert api["b"].get(url + "?version=1").status_code == 404


def test_it_disables_enables_and_rolls_back_with_an_audit_trail(cast: Cast, api: dict[str, Any]) -> None:
    expert = make_expert(cast.org)

    response = patch(api["a"], expert, {"status": "disabled", "active_version": 1})

    assert response.status_code == 200
    assert (response.json()["status"], response.json()["active_version"]) == ("disabled", 1)
    assert response.json()["in_mixture"] is False
    assert expert not in services.member_experts(cast.org)
    assert patch(api["a"], expert, {"status": "active"}).json()["in_mixture"] is True
    expert.refresh_from_db()
    assert (expert.status, expert.active_version.number) == ("active", 1)
    changes = AuditEvent.objects.filter(organization=cast.org, action=AuditEvent.Action.EXPERT_CHANGED)
    assert changes.count() == 3  # disabled, rolled back, enabled


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"status": "paused"}, "status: must be active or disabled."),
        ({"active_version": 9}, "active_version: this expert has no version 9."),
        ({"active_version": "1"}, "active_version: must be a version number."),
        ({"status": "disabled", "active_version": 9}, "active_version: this expert has no version 9."),
        ({"name": "New"}, "unknown field(s) name; changeable: active_version, share_samples, shared, status."),
        ({}, "The body must be a JSON object with any of active_version, share_samples, shared, status."),
        ([], "The body must be a JSON object with any of active_version, share_samples, shared, status."),
        ({"shared": "yes"}, "shared: must be true or false."),
        ({"share_samples": True}, 'share_samples: only a shared expert shares its samples (set "shared": true too).'),
        ({"status": "disabled", "share_samples": True}, "share_samples: only a shared expert shares its samples"),
    ],
)
def test_it_refuses_a_bad_change_with_a_clear_error_and_changes_nothing(
    cast: Cast, api: dict[str, Any], body: Any, message: str
) -> None:
    expert = make_expert(cast.org)
    response = patch(api["a"], expert, body)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(message)
    expert.refresh_from_db()
    assert (expert.status, expert.active_version.number, expert.shared) == ("active", 2, False)


def test_it_answers_404_for_another_orgs_experts_and_their_changes(cast: Cast, api: dict[str, Any]) -> None:
    private = make_expert(cast.org, "Private")
    shared = make_expert(cast.org, "Shared")
    services.publish(shared, user=cast.owner)
    requests = [
        ("get", reverse("api:expert", args=[private.pk])),
        ("get", reverse("api:expert-download", args=[private.pk])),
        ("patch", reverse("api:expert", args=[private.pk])),
        ("patch", reverse("api:expert", args=[shared.pk])),  # shared is read-only to others
        ("get", reverse("api:expert", args=[999_999])),
    ]
    for method, url in requests:
        if method == "patch":
            response = api["b"].patch(url, json.dumps({"status": "disabled"}), content_type="application/json")
        else:
            response = api["b"].get(url)
        assert response.status_code == 404, (method, url)
        assert response.json()["error"]["code"] == "not_found"
    assert Expert.objects.filter(status="disabled").count() == 0
    assert Client().get(reverse("api:experts")).status_code == 401


def test_it_shares_an_expert_with_or_without_its_samples_and_withdraws_it(cast: Cast, api: dict[str, Any]) -> None:
    expert = make_expert(cast.org)

    shared = patch(api["a"], expert, {"shared": True}).json()

    assert (shared["shared"], shared["samples_shared"]) == (True, True)  # the owner always sees its samples
    seen = api["b"].get(reverse("api:expert", args=[expert.pk])).json()
    assert seen["samples_shared"] is False
    assert patch(api["a"], expert, {"share_samples": True}).status_code == 200
    assert api["b"].get(reverse("api:expert", args=[expert.pk])).json()["samples_shared"] is True
    services.include_shared(cast.other_org, expert)
    patch(api["a"], expert, {"shared": False})
    assert api["b"].get(reverse("api:expert", args=[expert.pk])).status_code == 404
    assert expert not in services.member_experts(cast.other_org)  # withdrawn from the other org's mixture too
    actions = AuditEvent.objects.filter(organization=cast.org).values_list("action", flat=True)
    assert AuditEvent.Action.EXPERT_PUBLISHED in actions
    assert AuditEvent.Action.EXPERT_WITHDRAWN in actions


def test_it_refuses_to_share_an_expert_without_a_version(cast: Cast, api: dict[str, Any]) -> None:
    expert = make_expert(cast.org, versions=0)
    response = patch(api["a"], expert, {"shared": True})
    assert response.json()["error"]["message"] == "shared: this expert has no version to share."
    expert.refresh_from_db()
    assert not expert.shared


def test_it_deletes_an_expert_only_once_it_is_withdrawn(cast: Cast, api: dict[str, Any]) -> None:
    expert = make_expert(cast.org)
    services.publish(expert, user=cast.owner)
    url = reverse("api:expert", args=[expert.pk])
    assert api["b"].delete(url).status_code == 404  # another org never deletes it

    refused = api["a"].delete(url)

    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "expert_shared"
    patch(api["a"], expert, {"shared": False})
    assert api["a"].delete(url).json() == {"object": "expert", "id": expert.pk, "deleted": True}
    assert not Expert.objects.filter(pk=expert.pk).exists()
    assert api["a"].get(url).status_code == 404
