"""Who reaches what: every jobs and teachers URL and API endpoint for owner, admin, member, outsider, anonymous."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from tests.webapp.conftest import Cast
from tests.webapp.jobs.conftest import Api, make_corpus, make_job
from webapp.corpora.models import Corpus
from webapp.jobs.models import DistillationJob, JobStatus, Teacher

pytestmark = pytest.mark.django_db

CATALOG_FORM = {"name": "Gemma", "kind": "catalog", "spec": "packaged:gemma3-270m"}


@pytest.fixture
def teacher(cast: Cast) -> Teacher:
    return Teacher.objects.create(
        organization=cast.org, name="Local gemma", kind=Teacher.Kind.CATALOG, spec="packaged:gemma3-270m"
    )


def job_requests(job: DistillationJob, other: DistillationJob) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, url, data) of every page and action of one job; `other` is a second (failed) job to retry."""
    return [
        ("get", reverse("jobs:detail", args=[job.pk]), {}),
        ("get", reverse("jobs:create") + f"?clone={job.pk}", {}),
        ("post", reverse("jobs:cancel", args=[job.pk]), {}),
        ("post", reverse("jobs:retry", args=[other.pk]), {}),
    ]


def teacher_requests(teacher: Teacher) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, url, data) of every management page and action of one teacher, with data that would succeed."""
    t = teacher.pk
    return [
        ("get", reverse("jobs:teacher-edit", args=[t]), {}),
        ("post", reverse("jobs:teacher-edit", args=[t]), {**CATALOG_FORM, "name": "Renamed"}),
        ("post", reverse("jobs:teacher-test", args=[t]), {}),
        ("get", reverse("jobs:teacher-delete", args=[t]), {}),
        ("post", reverse("jobs:teacher-delete", args=[t]), {}),
    ]


def org_pages() -> list[tuple[str, str, dict[str, Any]]]:
    """Pages of the current org with no object id in the URL."""
    return [
        ("get", reverse("jobs:list"), {}),
        ("get", reverse("jobs:list") + "?status=failed", {}),
        ("get", reverse("jobs:create"), {}),
        ("get", reverse("jobs:estimate"), {}),
        ("get", reverse("jobs:notifications"), {}),
        ("get", reverse("jobs:teachers"), {}),
    ]


def send(client: Any, method: str, url: str, data: dict[str, Any]) -> int:
    return getattr(client, method)(url, data).status_code


@pytest.mark.parametrize("who", ["owner", "admin", "member"])
def test_it_opens_every_jobs_page_and_action_to_every_role_of_the_org(
    cast: Cast, corpus: Corpus, who: str, django_capture_on_commit_callbacks: Any
) -> None:
    job = make_job(corpus, JobStatus.QUEUED)
    failed = make_job(corpus, JobStatus.FAILED, name="Failed one")
    client = cast.client_for(who)
    assert [send(client, *request) for request in org_pages()] == [200] * 6
    with django_capture_on_commit_callbacks(execute=False):
        statuses = [send(client, *request) for request in job_requests(job, failed)]
    # detail, clone form, cancel and retry (both redirect back to the job).
    assert statuses == [200, 200, 302, 302]
    job.refresh_from_db()
    failed.refresh_from_db()
    assert (job.status, failed.status) == (JobStatus.CANCELLED, JobStatus.QUEUED)


@pytest.mark.parametrize("who", ["owner", "admin"])
def test_it_opens_teacher_management_to_owners_and_admins(cast: Cast, teacher: Teacher, who: str) -> None:
    client = cast.client_for(who)
    assert client.get(reverse("jobs:teacher-create")).status_code == 200
    assert client.post(reverse("jobs:teacher-create"), {**CATALOG_FORM, "name": "Another"}).status_code == 302
    statuses = [send(client, *request) for request in teacher_requests(teacher)]
    # edit form, save, test (no JavaScript: back to the edit page), delete form, delete.
    assert statuses == [200, 302, 302, 200, 302]
    assert list(Teacher.objects.for_org(cast.org).values_list("name", flat=True)) == ["Another"]


def test_it_refuses_teacher_management_to_a_member_with_403(cast: Cast, teacher: Teacher) -> None:
    client = cast.client_for("member")
    assert client.get(reverse("jobs:teachers")).status_code == 200
    assert client.get(reverse("jobs:teacher-create")).status_code == 403
    assert client.post(reverse("jobs:teacher-create"), CATALOG_FORM).status_code == 403
    for method, url, data in teacher_requests(teacher):
        assert send(client, method, url, data) == 403, (method, url)
    teacher.refresh_from_db()
    assert (teacher.name, Teacher.objects.count()) == ("Local gemma", 1)
    page = client.get(reverse("jobs:teachers")).content.decode()
    assert "Local gemma" in page
    assert reverse("jobs:teacher-edit", args=[teacher.pk]) not in page
    assert "Add a teacher" not in page


def test_it_answers_404_to_another_org_on_every_job_and_teacher_url(
    cast: Cast, corpus: Corpus, teacher: Teacher
) -> None:
    job = make_job(corpus, JobStatus.TRAINING)
    failed = make_job(corpus, JobStatus.FAILED, name="Failed one")
    client = cast.client_for("outsider")
    for method, url, data in [*job_requests(job, failed), *teacher_requests(teacher)]:
        assert send(client, method, url, data) == 404, (method, url)
    job.refresh_from_db()
    failed.refresh_from_db()
    teacher.refresh_from_db()
    assert (job.status, job.cancel_requested, failed.status) == (JobStatus.TRAINING, False, JobStatus.FAILED)
    assert teacher.name == "Local gemma"
    # The outsider's own pages show nothing of org A.
    for _, url, _ in org_pages():
        page = client.get(url).content.decode()
        assert "Leave expert" not in page, url
        assert "Local gemma" not in page, url
        assert "Handbook" not in page, url


def test_it_sends_anonymous_visitors_to_login_from_every_jobs_url(cast: Cast, corpus: Corpus, teacher: Teacher) -> None:
    job = make_job(corpus, JobStatus.QUEUED)
    client = cast.client_for("anonymous")
    pages = [*org_pages(), ("get", reverse("jobs:teacher-create"), {})]
    for method, url, data in [*pages, *job_requests(job, job), *teacher_requests(teacher)]:
        response = getattr(client, method)(url, data)
        assert response.status_code == 302, (method, url)
        assert response["Location"].startswith(reverse("accounts:login")), (method, url)
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED


# ------------------------------------------------------------------ the API
def api_endpoints(job: DistillationJob) -> list[tuple[str, str]]:
    return [
        ("get", reverse("api:jobs")),
        ("get", reverse("api:job", args=[job.pk])),
        ("post", reverse("api:job-cancel", args=[job.pk])),
        ("post", reverse("api:job-retry", args=[job.pk])),
        ("get", reverse("api:teachers")),
    ]


def test_it_answers_404_to_another_orgs_token_on_every_job_endpoint(
    cast: Cast, corpus: Corpus, outsider_api: Api
) -> None:
    job = make_job(corpus, JobStatus.FAILED)
    for method, url in api_endpoints(job)[1:4]:
        response = getattr(outsider_api, method)(url)
        assert response.status_code == 404, (method, url)
        assert response.json()["error"]["code"] == "not_found"
    assert outsider_api.get(reverse("api:jobs")).json()["data"] == []
    make_corpus(cast.other_org, "Theirs")
    refused = outsider_api.post_json(
        reverse("api:jobs"), {"name": "x", "corpus": corpus.pk, "teacher": "global:0", "recipe": "kd"}
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["message"].startswith("corpus: Select a valid choice")
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert DistillationJob.objects.count() == 1


def test_it_answers_the_same_endpoints_for_the_orgs_token(
    cast: Cast, corpus: Corpus, api: Api, django_capture_on_commit_callbacks: Any
) -> None:
    job = make_job(corpus, JobStatus.FAILED)
    with django_capture_on_commit_callbacks(execute=False):
        statuses = [getattr(api, method)(url).status_code for method, url in api_endpoints(job)]
    # list, detail, cancel (the job already ended: 409), retry, teachers.
    assert statuses == [200, 200, 409, 200, 200]


def test_it_asks_for_a_token_on_every_job_endpoint(cast: Cast, corpus: Corpus) -> None:
    job = make_job(corpus, JobStatus.QUEUED)
    client = cast.client_for("owner")  # a browser session is not an API credential
    for method, url in api_endpoints(job):
        response = getattr(client, method)(url)
        assert response.status_code == 401, (method, url)
        assert response.json()["error"]["type"] == "authentication_error"
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
