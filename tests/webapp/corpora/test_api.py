"""The corpora REST API: token auth, org scoping, create, uploads (multipart and record-then-PUT), ingest,
versions, deletion."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from tests.webapp.conftest import Cast
from tests.webapp.corpora.conftest import stored_files
from webapp.corpora import models as corpora_models
from webapp.corpora.models import Corpus, CorpusFile, CorpusVersion
from webapp.tenants.models import ApiToken

pytestmark = pytest.mark.django_db

TEXT = b"Employees get 25 days of paid leave per year.\n"


def bearer(plaintext: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {plaintext}"}


@pytest.fixture
def token(cast: Cast) -> str:
    return ApiToken.issue(organization=cast.org, name="A", created_by=cast.owner)[1]


@pytest.fixture
def outsider_token(cast: Cast) -> str:
    return ApiToken.issue(organization=cast.other_org, name="B", created_by=cast.outsider)[1]


class Api:
    """A client that sends one org's token with every request."""

    def __init__(self, plaintext: str) -> None:
        self.client, self.headers = Client(), bearer(plaintext)

    def get(self, url: str) -> Any:
        return self.client.get(url, headers=self.headers)

    def delete(self, url: str) -> Any:
        return self.client.delete(url, headers=self.headers)

    def post(self, url: str, data: Any = None, **extra: Any) -> Any:
        return self.client.post(url, data or {}, headers=self.headers, **extra)

    def post_json(self, url: str, data: dict[str, Any]) -> Any:
        return self.client.post(url, data, content_type="application/json", headers=self.headers)

    def put(self, url: str, data: bytes) -> Any:
        return self.client.put(url, data, content_type="application/octet-stream", headers=self.headers)


@pytest.fixture
def api(token: str) -> Api:
    return Api(token)


def make_file(corpus: Corpus, name: str = "a.txt") -> CorpusFile:
    return CorpusFile.objects.create(
        organization=corpus.organization,
        corpus=corpus,
        name=name,
        declared_size=len(TEXT),
        size=len(TEXT),
        sha256=hashlib.sha256(TEXT).hexdigest(),
        status=CorpusFile.Status.STORED,
    )


def endpoints(corpus: Corpus, file: CorpusFile) -> list[tuple[str, str]]:
    """(method, url) of every corpora endpoint."""
    c, f = corpus.pk, file.pk
    return [
        ("get", reverse("api:corpora")),
        ("post", reverse("api:corpora")),
        ("get", reverse("api:corpus", args=[c])),
        ("delete", reverse("api:corpus", args=[c])),
        ("get", reverse("api:corpus-files", args=[c])),
        ("post", reverse("api:corpus-files", args=[c])),
        ("get", reverse("api:corpus-file", args=[c, f])),
        ("delete", reverse("api:corpus-file", args=[c, f])),
        ("put", reverse("api:corpus-file-content", args=[c, f])),
        ("post", reverse("api:corpus-ingest", args=[c])),
        ("get", reverse("api:corpus-versions", args=[c])),
        ("get", reverse("api:corpus-version", args=[c, 1])),
    ]


def call(api: Api, method: str, url: str) -> Any:
    if method == "put":
        return api.put(url, TEXT)
    if method == "post" and url.endswith("/files"):
        return api.post(url, {"name": "x.txt", "size": 3})
    if method == "post" and url.endswith("/corpora"):
        return api.post(url, {"name": "New"})
    return getattr(api, method)(url)


# ------------------------------------------------------------------ authentication and scoping
@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Basic abc"}, "missing_api_key"),
        ({"Authorization": "Bearer dst_not-a-real-token"}, "invalid_api_key"),
    ],
)
def test_it_requires_a_valid_token_on_every_corpora_endpoint(
    cast: Cast, corpus: Corpus, headers: dict[str, str], code: str
) -> None:
    file = make_file(corpus)
    client = Client()
    for method, url in endpoints(corpus, file):
        response = getattr(client, method)(url, headers=headers)
        assert response.status_code == 401, (method, url)
        assert response.json()["error"]["code"] == code, (method, url)
    assert Corpus.objects.filter(pk=corpus.pk).exists()
    assert list(Corpus.objects.values_list("name", flat=True)) == ["Handbook"]


def test_it_ignores_a_browser_session_on_the_corpora_api(cast: Cast, corpus: Corpus) -> None:
    response = cast.client_for("owner").get(reverse("api:corpus", args=[corpus.pk]))
    assert response.status_code == 401


def test_it_answers_404_to_another_orgs_token_for_the_corpus_and_its_files_and_versions(
    cast: Cast, corpus: Corpus, outsider_token: str, media_root: Path
) -> None:
    file = make_file(corpus)
    CorpusVersion.objects.create(organization=cast.org, corpus=corpus, number=1)
    outsider = Api(outsider_token)
    for method, url in endpoints(corpus, file):
        if url in (reverse("api:corpora"),):
            continue  # the list is the token's own org's (checked below)
        response = call(outsider, method, url)
        assert response.status_code == 404, (method, url)
        assert response.json()["error"]["code"] == "not_found", (method, url)
    assert Corpus.objects.filter(pk=corpus.pk).exists()
    file.refresh_from_db()
    assert file.status == CorpusFile.Status.STORED
    assert stored_files(media_root) == {}
    assert outsider.get(reverse("api:corpora")).json()["data"] == []


def test_it_lists_the_tokens_orgs_corpora(cast: Cast, corpus: Corpus, api: Api) -> None:
    Corpus.objects.create(organization=cast.other_org, name="Theirs")
    listed = api.get(reverse("api:corpora")).json()
    assert listed["object"] == "list"
    assert [(c["id"], c["name"], c["status"]) for c in listed["data"]] == [(corpus.pk, "Handbook", "uploading")]


# ------------------------------------------------------------------ create
def test_it_creates_a_corpus_from_form_fields(cast: Cast, api: Api) -> None:
    response = api.post(reverse("api:corpora"), {"name": "Handbook", "description": "HR"})
    assert response.status_code == 201
    body = response.json()
    corpus = Corpus.objects.get(pk=body["id"])
    assert (corpus.organization, corpus.created_by, corpus.description) == (cast.org, cast.owner, "HR")
    assert (body["object"], body["name"], body["status"], body["files"]) == ("corpus", "Handbook", "uploading", [])
    assert body["latest_version"] is None
    assert body["limits"]["corpus_bytes"] == 0


def test_it_creates_a_corpus_from_json(cast: Cast, api: Api) -> None:
    response = api.post_json(reverse("api:corpora"), {"name": "Tickets"})
    assert response.status_code == 201
    assert Corpus.objects.get(pk=response.json()["id"]).organization == cast.org


def test_it_explains_an_invalid_create(api: Api) -> None:
    response = api.post_json(reverse("api:corpora"), {"description": "no name"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "name: This field is required."
    assert not Corpus.objects.exists()


# ------------------------------------------------------------------ uploads
def test_it_uploads_several_files_in_one_multipart_post(
    cast: Cast, corpus: Corpus, api: Api, settings: Any, media_root: Path
) -> None:
    settings.CORPUS_MAX_FILE_BYTES = 100
    files = [
        SimpleUploadedFile("leave.md", TEXT),
        SimpleUploadedFile("huge.txt", b"x" * 101),
        SimpleUploadedFile("empty.txt", b""),
    ]
    response = api.post(reverse("api:corpus-files", args=[corpus.pk]), {"files": files})
    assert response.status_code == 201
    results = {item["name"]: item for item in response.json()["data"]}
    assert list(results) == ["leave.md", "huge.txt", "empty.txt"]
    assert results["leave.md"]["status"] == "stored"
    assert results["leave.md"]["sha256"] == hashlib.sha256(TEXT).hexdigest()
    assert results["huge.txt"]["status"] == "refused"
    assert results["huge.txt"]["message"] == "101\xa0bytes is over the 100\xa0bytes limit per file."
    assert (results["empty.txt"]["status"], results["empty.txt"]["message"]) == ("failed", "The file is empty.")
    stored = CorpusFile.objects.get(pk=results["leave.md"]["id"])
    assert stored.uploaded_by == cast.owner
    assert stored_files(media_root) == {stored.storage_name: TEXT}
    listed = api.get(reverse("api:corpus-files", args=[corpus.pk])).json()["data"]
    assert [(f["name"], f["status"]) for f in listed] == [
        ("empty.txt", "failed"),
        ("huge.txt", "refused"),
        ("leave.md", "stored"),
    ]


def test_it_records_a_file_then_takes_its_bytes_by_put(corpus: Corpus, api: Api, media_root: Path) -> None:
    started = api.post_json(reverse("api:corpus-files", args=[corpus.pk]), {"name": "docs/leave.md", "size": len(TEXT)})
    assert started.status_code == 201
    body = started.json()
    assert body["status"] == "uploading"
    content_path = reverse("api:corpus-file-content", args=[corpus.pk, body["id"]])
    assert body["upload_url"] == f"http://testserver{content_path}"
    sent = api.put(body["upload_url"], TEXT)
    assert sent.status_code == 200
    assert (sent.json()["status"], sent.json()["size"], sent.json()["detected_type"]) == (
        "stored",
        len(TEXT),
        "markdown",
    )
    file = CorpusFile.objects.get(pk=body["id"])
    assert file.name == "docs/leave.md"
    assert stored_files(media_root) == {file.storage_name: TEXT}
    assert file.storage_name.startswith(f"corpora/org-{corpus.organization_id}/corpus-{corpus.pk}/")


def test_it_refuses_a_recorded_file_over_a_limit(corpus: Corpus, api: Api, settings: Any) -> None:
    settings.CORPUS_MAX_FILE_BYTES = 10
    response = api.post_json(reverse("api:corpus-files", args=[corpus.pk]), {"name": "big.txt", "size": 11})
    assert response.status_code == 413
    assert response.json()["error"]["message"] == "11\xa0bytes is over the 10\xa0bytes limit per file."
    assert CorpusFile.objects.get().status == CorpusFile.Status.REFUSED


def test_it_explains_a_record_without_a_size(corpus: Corpus, api: Api) -> None:
    response = api.post_json(reverse("api:corpus-files", args=[corpus.pk]), {"name": "a.txt"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "size: This field is required."


@pytest.mark.parametrize("size", [2**63, 10**400], ids=["2**63", "10**400"])
def test_it_refuses_a_record_with_a_size_past_the_bigint_column(corpus: Corpus, api: Api, size: int) -> None:
    # Was a 500: "bigint out of range" from the INSERT of the file's record, or before it (10**400) an
    # OverflowError in filesizeformat, writing the over-the-limit message.
    response = api.post_json(reverse("api:corpus-files", args=[corpus.pk]), {"name": "a.txt", "size": size})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("size: Ensure this value is less than or equal to")
    assert not CorpusFile.objects.exists()


@pytest.mark.parametrize("route", ["api:corpora", "api:corpus-files"])
def test_it_answers_json_to_a_multipart_body_without_its_boundary(corpus: Corpus, api: Api, route: str) -> None:
    # Was Django's HTML "Bad Request (400)" page: the API's clients expect OpenAI's JSON error shape.
    url = reverse(route, args=[corpus.pk] if route == "api:corpus-files" else [])
    response = api.client.generic("POST", url, b"--x\r\nnot a part", "multipart/form-data", headers=api.headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_body"
    assert not CorpusFile.objects.exists()
    assert list(Corpus.objects.all()) == [corpus]


def test_it_fails_a_short_put_and_accepts_it_sent_again(corpus: Corpus, api: Api, media_root: Path) -> None:
    body = api.post_json(reverse("api:corpus-files", args=[corpus.pk]), {"name": "a.txt", "size": len(TEXT)}).json()
    short = api.put(body["upload_url"], TEXT[:10])
    assert short.status_code == 400
    assert short.json()["error"]["code"] == "upload_failed"
    assert short.json()["error"]["message"] == "The upload was cut off after 10\xa0bytes of 46\xa0bytes; send it again."
    assert stored_files(media_root) == {}
    again = api.put(body["upload_url"], TEXT)
    assert again.status_code == 200
    assert again.json()["status"] == "stored"
    # A stored file does not take other bytes.
    third = api.put(body["upload_url"], TEXT)
    assert third.status_code == 409
    assert third.json()["error"]["code"] == "not_uploading"


def test_it_removes_a_file(corpus: Corpus, api: Api, media_root: Path) -> None:
    body = api.post(reverse("api:corpus-files", args=[corpus.pk]), {"files": [SimpleUploadedFile("a.txt", TEXT)]})
    file_id = body.json()["data"][0]["id"]
    assert api.get(reverse("api:corpus-file", args=[corpus.pk, file_id])).json()["status"] == "stored"
    removed = api.delete(reverse("api:corpus-file", args=[corpus.pk, file_id]))
    assert removed.status_code == 200
    assert removed.json()["status"] == "removed"
    assert stored_files(media_root) == {}
    assert api.get(reverse("api:corpus-files", args=[corpus.pk])).json()["data"] == []
    # Removing it again is a no-op: a ready corpus stays ready.
    Corpus.objects.filter(pk=corpus.pk).update(status=Corpus.Status.READY)
    again = api.delete(reverse("api:corpus-file", args=[corpus.pk, file_id]))
    assert (again.status_code, again.json()["status"]) == (200, "removed")
    corpus.refresh_from_db()
    assert corpus.status == Corpus.Status.READY


# ------------------------------------------------------------------ ingest and versions
def test_it_queues_an_ingest_and_reports_the_version(
    corpus: Corpus, api: Api, django_capture_on_commit_callbacks: Any
) -> None:
    api.post(reverse("api:corpus-files", args=[corpus.pk]), {"files": [SimpleUploadedFile("a.txt", TEXT)]})
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api.post(reverse("api:corpus-ingest", args=[corpus.pk]))
    assert response.status_code == 202
    body = response.json()
    assert (body["object"], body["number"], body["status"], body["files_total"]) == ("corpus.version", 1, "queued", 1)
    assert [(f["name"], f["verdict"]) for f in body["files"]] == [("a.txt", "pending")]
    assert len(callbacks) == 1
    corpus.refresh_from_db()
    assert corpus.status == Corpus.Status.QUEUED

    again = api.post(reverse("api:corpus-ingest", args=[corpus.pk]))
    assert again.status_code == 409
    assert again.json()["error"]["message"] == "An ingest of this corpus is already under way; wait for it to finish."

    version = api.get(reverse("api:corpus-version", args=[corpus.pk, 1]))
    assert version.status_code == 200
    assert version.json()["number"] == 1
    # Unix seconds, like every other object of the API (it once gave ISO strings here alone).
    created = corpus.versions.get(number=1).created_at
    assert (version.json()["created_at"], version.json()["finished_at"]) == (int(created.timestamp()), None)
    versions = api.get(reverse("api:corpus-versions", args=[corpus.pk])).json()["data"]
    assert [(v["object"], v["number"], v["status"]) for v in versions] == [("corpus.version", 1, "queued")]
    detail = api.get(reverse("api:corpus", args=[corpus.pk])).json()
    assert detail["latest_version"]["number"] == 1
    assert detail["current_version"] is None


def test_it_refuses_an_ingest_of_an_empty_corpus(corpus: Corpus, api: Api) -> None:
    response = api.post(reverse("api:corpus-ingest", args=[corpus.pk]))
    assert response.status_code == 409
    assert response.json()["error"]["message"] == "The corpus has no stored files to ingest: upload some first."


def test_it_answers_404_for_an_unknown_version(corpus: Corpus, api: Api) -> None:
    response = api.get(reverse("api:corpus-version", args=[corpus.pk, 3]))
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "No such corpus version."


def test_it_answers_404_for_an_unknown_corpus(api: Api) -> None:
    assert api.get(reverse("api:corpus", args=[999_999])).status_code == 404
    assert api.get(reverse("api:corpus-version", args=[999_999, 1])).status_code == 404


# ------------------------------------------------------------------ delete
def test_it_deletes_a_corpus_and_its_files(corpus: Corpus, api: Api, media_root: Path) -> None:
    api.post(reverse("api:corpus-files", args=[corpus.pk]), {"files": [SimpleUploadedFile("a.txt", TEXT)]})
    assert len(stored_files(media_root)) == 1
    response = api.delete(reverse("api:corpus", args=[corpus.pk]))
    assert response.status_code == 200
    assert response.json() == {"object": "corpus", "id": corpus.pk, "deleted": True}
    assert not Corpus.objects.exists()
    assert not CorpusFile.objects.exists()
    assert stored_files(media_root) == {}
    assert api.get(reverse("api:corpus", args=[corpus.pk])).status_code == 404


def test_it_refuses_to_delete_a_corpus_a_job_uses(corpus: Corpus, api: Api) -> None:
    def describe(corpus: Corpus) -> list[str]:
        return ["job 7"]

    corpora_models.CORPUS_USERS.append(describe)
    try:
        response = api.delete(reverse("api:corpus", args=[corpus.pk]))
    finally:
        corpora_models.CORPUS_USERS.remove(describe)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "corpus_in_use"
    assert response.json()["error"]["message"] == (
        "This corpus is used by a queued or running job (job 7): cancel it or wait for it to finish."
    )
    assert Corpus.objects.filter(pk=corpus.pk).exists()
