"""Corpus pages: access per role and org, uploads (two-step and multipart) with every verdict, limits, removal,
CSV columns, ingest requests, the stall sweep, deletion and the chunk search."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from tests.webapp.conftest import Cast
from tests.webapp.corpora.conftest import put_bytes, stored_files, upload_bytes
from webapp.corpora import models as corpora_models
from webapp.corpora.models import Chunk, Corpus, CorpusFile, CorpusVersion, Document, Example, VersionFile
from webapp.corpora.services import receive_upload, start_upload, sweep_stalled_uploads
from webapp.tenants.models import AuditEvent

pytestmark = pytest.mark.django_db

REPO_ROOT = Path(__file__).resolve().parents[3]
TEXT = b"Employees get 25 days of paid leave per year.\n"
BINARY_REFUSAL = "Unsupported file type (binary data): upload .txt, .md, .html, .pdf, .docx, .jsonl, .csv or .zip."


def messages_of(response: Any) -> list[str]:
    """The flash messages a followed redirect rendered."""
    return [str(message) for message in response.context["messages"]]


def stored(corpus: Corpus, name: str, data: bytes = TEXT) -> CorpusFile:
    """A stored file of the corpus, made directly (for pages that only need one to exist)."""
    return CorpusFile.objects.create(
        organization=corpus.organization,
        corpus=corpus,
        name=name,
        declared_size=len(data),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        status=CorpusFile.Status.STORED,
        detected_type="text",
    )


def make_version(corpus: Corpus, texts: list[str], *, number: int = 1) -> CorpusVersion:
    """A ready version with one document holding `texts` as its chunks, made the corpus's current one."""
    version = CorpusVersion.objects.create(
        organization=corpus.organization,
        corpus=corpus,
        number=number,
        status=CorpusVersion.Status.READY,
        stats={"documents": 1, "chunks": len(texts), "tokens": 10 * len(texts)},
    )
    document = Document.objects.create(version=version, name="handbook/leave.md", kind="markdown")
    for position, text in enumerate(texts):
        Chunk.objects.create(version=version, document=document, position=position, text=text, tokens=10)
    Example.objects.create(
        version=version, document=document, kind="qa", prompt="How many days of leave?", response="25 days."
    )
    corpus.current_version = version
    corpus.status = Corpus.Status.READY
    corpus.save()
    return version


# ------------------------------------------------------------------ who sees what
@pytest.mark.parametrize("who", ["owner", "admin", "member"])
def test_it_shows_the_corpus_pages_to_every_role_of_the_org(cast: Cast, corpus: Corpus, who: str) -> None:
    client = cast.client_for(who)
    listing = client.get(reverse("corpora:list"))
    assert listing.status_code == 200
    assert reverse("corpora:detail", args=[corpus.pk]) in listing.content.decode()
    create = client.get(reverse("corpora:create"))
    assert create.status_code == 200
    assert 'name="name"' in create.content.decode()
    detail = client.get(reverse("corpora:detail", args=[corpus.pk]))
    assert detail.status_code == 200
    assert "<h1>Handbook</h1>" in detail.content.decode()


@pytest.mark.parametrize("who", ["owner", "member"])
def test_it_creates_a_corpus_in_the_current_org(cast: Cast, who: str) -> None:
    response = cast.client_for(who).post(reverse("corpora:create"), {"name": "Support tickets", "description": "2024"})
    corpus = Corpus.objects.get(name="Support tickets")
    assert response.status_code == 302
    assert response["Location"] == reverse("corpora:detail", args=[corpus.pk])
    assert corpus.organization == cast.org
    assert corpus.created_by == getattr(cast, who)
    assert corpus.status == Corpus.Status.UPLOADING


def test_it_lists_only_the_current_orgs_corpora(cast: Cast, corpus: Corpus) -> None:
    Corpus.objects.create(organization=cast.other_org, name="Globex secrets")
    page = cast.client_for("member").get(reverse("corpora:list")).content.decode()
    assert "Handbook" in page
    assert "Globex secrets" not in page
    outsider_page = cast.client_for("outsider").get(reverse("corpora:list")).content.decode()
    assert "Globex secrets" in outsider_page
    assert "Handbook" not in outsider_page


def test_it_keeps_the_list_page_query_count_flat(cast: Cast, django_assert_max_num_queries: Any) -> None:
    client = cast.client_for("owner")
    client.get(reverse("corpora:list"))
    for index in range(5):
        corpus = Corpus.objects.create(organization=cast.org, name=f"Corpus {index}")
        stored(corpus, "a.txt")
        make_version(corpus, ["text"])
    # session, user, membership, the corpora with counts and current version (one query), nav memberships.
    with django_assert_max_num_queries(8):
        page = client.get(reverse("corpora:list"))
    assert page.status_code == 200
    assert page.content.decode().count("Corpus ") == 5


def test_it_pages_the_corpora_newest_first_with_the_pk_breaking_ties(
    cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("webapp.corpora.views.CORPORA_PER_PAGE", 2)
    oldest = Corpus.objects.create(organization=cast.org, name="Corpus oldest")
    tied = [Corpus.objects.create(organization=cast.org, name=f"Corpus tied {n}") for n in (1, 2)]
    Corpus.objects.filter(pk=oldest.pk).update(created_at=timezone.now() - timedelta(days=1))
    Corpus.objects.filter(pk__in=[c.pk for c in tied]).update(created_at=timezone.now())  # the same instant
    Corpus.objects.create(organization=cast.other_org, name="Globex secrets")
    client = cast.client_for("member")
    url = reverse("corpora:list")
    first = client.get(url).content.decode()
    assert "Corpus tied 2" in first
    assert "Corpus tied 1" in first
    assert first.index("Corpus tied 2") < first.index("Corpus tied 1")
    assert "Corpus oldest" not in first
    assert f'href="{url}?page=2">Older</a>' in first
    assert "Page 1 of 2 (3 corpora)" in first
    second = client.get(url, {"page": 2}).content.decode()
    assert "Corpus oldest" in second
    assert "Corpus tied" not in second
    assert f'href="{url}?page=1">Newer</a>' in second
    assert "Page 2 of 2 (3 corpora)" in second
    for page in (first, second):
        assert "Globex secrets" not in page
    for number in ("abc", "1.5"):
        fallback = client.get(url, {"page": number})
        assert fallback.status_code == 200
        assert "Corpus tied 2" in fallback.content.decode()
        assert "Corpus oldest" not in fallback.content.decode()
    past_the_end = client.get(url, {"page": 999})
    assert past_the_end.status_code == 200
    assert "Corpus oldest" in past_the_end.content.decode()


def test_it_shows_no_pager_when_the_corpora_fit_on_one_page(cast: Cast, corpus: Corpus) -> None:
    page = cast.client_for("member").get(reverse("corpora:list")).content.decode()
    assert "Handbook" in page
    assert 'class="pager"' not in page


def corpus_requests(corpus: Corpus, file: CorpusFile) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, url, form data) of every corpus page and action, with data that would succeed for a member."""
    c, f = corpus.pk, file.pk
    return [
        ("get", reverse("corpora:detail", args=[c]), {}),
        ("post", reverse("corpora:file-start", args=[c]), {"name": "x.txt", "size": 3}),
        ("put", reverse("corpora:file-content", args=[c, f]), {}),
        ("post", reverse("corpora:file-upload", args=[c]), {"files": [SimpleUploadedFile("x.txt", b"abc")]}),
        ("post", reverse("corpora:file-remove", args=[c, f]), {}),
        ("post", reverse("corpora:file-csv-column", args=[c, f]), {"column": "body"}),
        ("post", reverse("corpora:ingest", args=[c]), {}),
        ("get", reverse("corpora:chunks", args=[c]), {}),
        ("get", reverse("corpora:examples", args=[c]), {}),
        ("get", reverse("corpora:delete", args=[c]), {}),
        ("post", reverse("corpora:delete", args=[c]), {"confirm": corpus.name}),
    ]


def send(client: Any, method: str, url: str, data: dict[str, Any]) -> Any:
    if method == "put":
        return put_bytes(client, url, b"abc")
    return getattr(client, method)(url, data)


def test_it_answers_404_to_another_org_on_every_corpus_url(cast: Cast, corpus: Corpus) -> None:
    file = stored(corpus, "a.txt")
    client = cast.client_for("outsider")
    for method, url, data in corpus_requests(corpus, file):
        assert send(client, method, url, data).status_code == 404, (method, url)
    # Nothing changed: the corpus, its one file and its status are as they were.
    assert Corpus.objects.filter(pk=corpus.pk, status=Corpus.Status.UPLOADING).exists()
    assert list(corpus.files.values_list("name", "status")) == [("a.txt", "stored")]
    assert not CorpusVersion.objects.exists()


def test_it_answers_the_same_requests_for_a_member_of_the_org(
    cast: Cast, corpus: Corpus, django_capture_on_commit_callbacks: Any
) -> None:
    """The control for the 404 test above: the same requests reach the views for a member of the org."""
    file = stored(corpus, "a.txt")
    client = cast.client_for("member")
    with django_capture_on_commit_callbacks(execute=False):
        statuses = [send(client, method, url, data).status_code for method, url, data in corpus_requests(corpus, file)]
    # detail, start, content (a stored file takes no bytes: 409), form upload, remove, csv column, ingest,
    # chunks, examples, delete form, delete.
    assert statuses == [200, 201, 409, 302, 302, 302, 302, 200, 200, 200, 302]
    assert not Corpus.objects.filter(pk=corpus.pk).exists()


def test_it_answers_404_to_another_orgs_file_id_under_an_own_corpus(cast: Cast, corpus: Corpus) -> None:
    theirs = stored(Corpus.objects.create(organization=cast.other_org, name="Theirs"), "b.txt")
    client = cast.client_for("owner")
    assert client.post(reverse("corpora:file-remove", args=[corpus.pk, theirs.pk])).status_code == 404
    assert put_bytes(client, reverse("corpora:file-content", args=[corpus.pk, theirs.pk]), b"abc").status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == CorpusFile.Status.STORED


def test_it_sends_anonymous_visitors_to_login_from_every_corpus_url(cast: Cast, corpus: Corpus) -> None:
    file = stored(corpus, "a.txt")
    client = cast.client_for("anonymous")
    pages = [("get", reverse("corpora:list"), {}), ("get", reverse("corpora:create"), {})]
    for method, url, data in [*pages, *corpus_requests(corpus, file)]:
        response = send(client, method, url, data)
        assert response.status_code == 302, (method, url)
        assert response["Location"].startswith(reverse("accounts:login")), (method, url)
    assert Corpus.objects.filter(pk=corpus.pk).exists()
    assert corpus.files.count() == 1


# ------------------------------------------------------------------ the corpus page and its htmx panel
def test_it_renders_the_full_corpus_page_without_htmx(cast: Cast, corpus: Corpus) -> None:
    stored(corpus, "handbook/leave.md")
    page = cast.client_for("member").get(reverse("corpora:detail", args=[corpus.pk])).content.decode()
    assert page.startswith("<!doctype html>")
    assert "<h1>Handbook</h1>" in page
    assert '<div id="corpus-status">' in page
    assert "handbook/leave.md" in page
    assert "Files are ready to ingest." in page


def test_it_renders_only_the_status_panel_for_its_htmx_poll(cast: Cast, corpus: Corpus) -> None:
    stored(corpus, "handbook/leave.md")
    headers = {"HX-Request": "true", "HX-Target": "corpus-status"}
    response = cast.client_for("member").get(reverse("corpora:detail", args=[corpus.pk]), headers=headers)
    panel = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in panel
    assert "<h1>" not in panel
    assert "Status: " in panel
    assert "handbook/leave.md" in panel
    assert [t.name for t in response.templates] == ["corpora/_status.html"]


def test_it_renders_the_full_page_for_an_htmx_request_aimed_elsewhere(cast: Cast, corpus: Corpus) -> None:
    headers = {"HX-Request": "true", "HX-Target": "main"}
    page = cast.client_for("member").get(reverse("corpora:detail", args=[corpus.pk]), headers=headers)
    assert "<h1>Handbook</h1>" in page.content.decode()


def test_it_polls_the_status_panel_only_while_something_is_under_way(cast: Cast, corpus: Corpus) -> None:
    client = cast.client_for("owner")
    url = reverse("corpora:detail", args=[corpus.pk])
    stored(corpus, "a.txt")
    assert 'hx-trigger="every 2s"' not in client.get(url).content.decode()
    client.post(reverse("corpora:file-start", args=[corpus.pk]), {"name": "b.txt", "size": 10})
    assert 'hx-trigger="every 2s"' in client.get(url).content.decode()


def test_its_poll_asks_for_a_page_reload_once_the_work_it_watched_ended(cast: Cast, corpus: Corpus) -> None:
    client = cast.client_for("member")
    url = reverse("corpora:detail", args=[corpus.pk])
    headers = {"HX-Request": "true", "HX-Target": "corpus-status"}
    client.post(reverse("corpora:file-start", args=[corpus.pk]), {"name": "b.txt", "size": 10})
    assert f'hx-get="{url}?polling=1"' in client.get(url).content.decode()
    still_busy = client.get(url, {"polling": "1"}, headers=headers)
    assert "HX-Refresh" not in still_busy
    assert "Status: " in still_busy.content.decode()

    CorpusFile.objects.filter(corpus=corpus).update(status=CorpusFile.Status.FAILED)
    ended = client.get(url, {"polling": "1"}, headers=headers)

    # The whole page comes back with the new version's sections; a panel asked for without polling stays a panel.
    assert ended["HX-Refresh"] == "true"
    assert "Status: " in client.get(url, headers=headers).content.decode()


# ------------------------------------------------------------------ two-step upload
def test_it_stores_a_two_step_upload_under_the_orgs_and_corpus_path(
    cast: Cast, corpus: Corpus, media_root: Path
) -> None:
    client = cast.client_for("member")
    upload = upload_bytes(client, corpus, "handbook/leave policy.md", TEXT)
    assert upload.start.status_code == 201
    started = upload.start.json()
    file = upload.file
    assert started["status"] == "uploading"
    assert started["upload_url"] == reverse("corpora:file-content", args=[corpus.pk, file.pk])
    assert upload.content is not None
    assert upload.content.status_code == 200
    body = upload.content.json()
    assert body["status"] == "stored"
    assert body["sha256"] == hashlib.sha256(TEXT).hexdigest()
    assert body["size"] == len(TEXT)
    assert body["detected_type"] == "markdown"
    expected_path = f"corpora/org-{cast.org.pk}/corpus-{corpus.pk}/{file.pk}-leave_policy.md"
    assert file.storage_name == expected_path
    assert file.name == "handbook/leave policy.md"
    assert (file.status, file.size, file.declared_size, file.uploaded_by) == (
        "stored",
        len(TEXT),
        len(TEXT),
        cast.member,
    )
    assert stored_files(media_root) == {expected_path: TEXT}


def test_it_streams_a_file_larger_than_the_request_body_limit(
    cast: Cast, corpus: Corpus, settings: Any, media_root: Path
) -> None:
    """The PUT body is read in blocks, never as `request.body` (which DATA_UPLOAD_MAX_MEMORY_SIZE caps)."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    data = (b"line of text\n" * 250_000)[: 3 * 2**20 + 5]
    upload = upload_bytes(cast.client_for("owner"), corpus, "big.txt", data)
    assert upload.content is not None
    assert upload.content.json()["status"] == "stored"
    assert upload.file.sha256 == hashlib.sha256(data).hexdigest()
    assert stored_files(media_root) == {upload.file.storage_name: data}


def test_it_cleans_the_name_a_client_sends(cast: Cast, corpus: Corpus, media_root: Path) -> None:
    upload = upload_bytes(cast.client_for("owner"), corpus, "../..\\etc/./pass\x07wd.txt", TEXT)
    file = upload.file
    assert file.name == "etc/passwd.txt"
    assert file.storage_name == f"corpora/org-{cast.org.pk}/corpus-{corpus.pk}/{file.pk}-passwd.txt"
    assert list(stored_files(media_root)) == [file.storage_name]


def test_it_refuses_a_start_without_a_valid_size(cast: Cast, corpus: Corpus) -> None:
    response = cast.client_for("owner").post(
        reverse("corpora:file-start", args=[corpus.pk]), {"name": "a.txt", "size": -1}
    )
    assert response.status_code == 400
    assert response.json()["error"]["size"][0]["code"] == "min_value"
    assert not CorpusFile.objects.exists()


def test_it_refuses_a_start_with_a_size_past_the_bigint_column(cast: Cast, corpus: Corpus) -> None:
    # Was a 500: the form took any integer and the INSERT failed with "bigint out of range".
    response = cast.client_for("owner").post(
        reverse("corpora:file-start", args=[corpus.pk]), {"name": "a.txt", "size": str(2**63)}
    )
    assert response.status_code == 400
    assert response.json()["error"]["size"][0]["code"] == "max_value"
    assert not CorpusFile.objects.exists()


def test_it_refuses_a_file_over_the_per_file_limit_before_any_byte(
    cast: Cast, corpus: Corpus, settings: Any, media_root: Path
) -> None:
    settings.CORPUS_MAX_FILE_BYTES = 10
    client = cast.client_for("owner")
    upload = upload_bytes(client, corpus, "big.txt", b"x" * 11)
    assert upload.start.status_code == 413
    assert upload.content is None
    body = upload.start.json()
    assert body["status"] == "refused"
    assert body["message"] == "11\xa0bytes is over the 10\xa0bytes limit per file."
    assert upload.file.status == CorpusFile.Status.REFUSED
    # Sending the bytes anyway is refused too; nothing reaches storage.
    sent = put_bytes(client, body["upload_url"], b"x" * 11)
    assert sent.status_code == 409
    assert sent.json()["message"] == "This file is refused: start a new upload to send it again."
    assert stored_files(media_root) == {}
    page = client.get(reverse("corpora:detail", args=[corpus.pk])).content.decode()
    assert "11\xa0bytes is over the 10\xa0bytes limit per file." in page


def test_it_refuses_a_file_that_would_take_the_corpus_over_its_size_limit(
    cast: Cast, corpus: Corpus, settings: Any
) -> None:
    settings.CORPUS_MAX_BYTES = 20
    client = cast.client_for("owner")
    assert upload_bytes(client, corpus, "a.txt", b"a" * 15).content.json()["status"] == "stored"
    refused = upload_bytes(client, corpus, "b.txt", b"b" * 10)
    assert refused.start.status_code == 413
    assert refused.start.json()["message"] == (
        "Adding 10\xa0bytes would take the corpus over its 20\xa0bytes limit (15\xa0bytes used)."
    )
    assert upload_bytes(client, corpus, "c.txt", b"c" * 5).content.json()["status"] == "stored"


def test_it_refuses_a_file_past_the_files_per_corpus_limit(cast: Cast, corpus: Corpus, settings: Any) -> None:
    settings.CORPUS_MAX_FILES = 2
    client = cast.client_for("owner")
    assert upload_bytes(client, corpus, "a.txt", b"a").content.json()["status"] == "stored"
    assert upload_bytes(client, corpus, "b.txt", b"b").content.json()["status"] == "stored"
    refused = upload_bytes(client, corpus, "c.txt", b"c")
    assert refused.start.status_code == 413
    assert refused.start.json()["message"] == "The corpus already has 2 files, the most allowed."
    # Another corpus of the org has its own count.
    other = Corpus.objects.create(organization=cast.org, name="Other")
    assert upload_bytes(client, other, "c.txt", b"c").content.json()["status"] == "stored"


def test_it_refuses_a_file_over_the_orgs_own_storage_quota(cast: Cast, corpus: Corpus, settings: Any) -> None:
    settings.ORG_STORAGE_QUOTA_BYTES = 10_000
    cast.org.storage_quota_bytes = 20
    cast.org.save()
    client = cast.client_for("owner")
    # The quota counts every corpus of the org.
    other = Corpus.objects.create(organization=cast.org, name="Other")
    assert upload_bytes(client, other, "a.txt", b"a" * 15).content.json()["status"] == "stored"
    refused = upload_bytes(client, corpus, "b.txt", b"b" * 10)
    assert refused.start.status_code == 413
    assert refused.start.json()["message"] == (
        "Adding 10\xa0bytes would take your organization over its 20\xa0bytes storage limit (15\xa0bytes used)."
    )
    # Another org's usage does not count against this one.
    theirs = Corpus.objects.create(organization=cast.other_org, name="Theirs")
    assert upload_bytes(cast.client_for("outsider"), theirs, "b.txt", b"b" * 10).content.json()["status"] == "stored"


def test_it_refuses_a_file_over_the_default_org_quota(cast: Cast, corpus: Corpus, settings: Any) -> None:
    settings.ORG_STORAGE_QUOTA_BYTES = 12
    assert cast.org.storage_quota_bytes is None
    client = cast.client_for("owner")
    assert upload_bytes(client, corpus, "a.txt", b"a" * 8).content.json()["status"] == "stored"
    refused = upload_bytes(client, corpus, "b.txt", b"b" * 5)
    assert refused.start.status_code == 413
    assert refused.start.json()["message"] == (
        "Adding 5\xa0bytes would take your organization over its 12\xa0bytes storage limit (8\xa0bytes used)."
    )


def test_it_counts_an_upload_in_flight_against_the_limits(cast: Cast, corpus: Corpus, settings: Any) -> None:
    settings.CORPUS_MAX_BYTES = 20
    client = cast.client_for("owner")
    in_flight = client.post(reverse("corpora:file-start", args=[corpus.pk]), {"name": "a.txt", "size": 15})
    assert in_flight.status_code == 201
    refused = upload_bytes(client, corpus, "b.txt", b"b" * 10)
    assert refused.start.json()["message"] == (
        "Adding 10\xa0bytes would take the corpus over its 20\xa0bytes limit (15\xa0bytes used)."
    )


# ------------------------------------------------------------------ upload verdicts
def test_it_fails_a_cut_off_upload_and_accepts_it_sent_again(cast: Cast, corpus: Corpus, media_root: Path) -> None:
    client = cast.client_for("owner")
    data = b"0123456789" * 10
    upload = upload_bytes(client, corpus, "a.txt", data[:40], declared=100)
    assert upload.content is not None
    assert upload.content.status_code == 400
    body = upload.content.json()
    assert body["status"] == "failed"
    assert body["message"] == "The upload was cut off after 40\xa0bytes of 100\xa0bytes; send it again."
    assert (upload.file.status, upload.file.storage_name) == ("failed", "")
    assert stored_files(media_root) == {}

    again = put_bytes(client, upload.start.json()["upload_url"], data)
    assert again.status_code == 200
    assert again.json()["status"] == "stored"
    assert again.json()["message"] == ""
    file = upload.file
    assert (file.size, file.sha256) == (100, hashlib.sha256(data).hexdigest())
    assert stored_files(media_root) == {file.storage_name: data}


def test_it_fails_an_upload_sending_more_than_announced(cast: Cast, corpus: Corpus, media_root: Path) -> None:
    client = cast.client_for("owner")
    upload = upload_bytes(client, corpus, "a.txt", b"x" * 20, declared=10)
    assert upload.content is not None
    assert upload.content.status_code == 400
    assert upload.content.json()["status"] == "failed"
    assert upload.content.json()["message"] == "More bytes arrived than the 10 announced; upload it again."
    assert stored_files(media_root) == {}
    # Sent again with the announced size, it is stored under the file's own name (no orphan left behind).
    again = put_bytes(client, upload.start.json()["upload_url"], b"x" * 10)
    assert again.json()["status"] == "stored"
    assert stored_files(media_root) == {upload.file.storage_name: b"x" * 10}
    assert upload.file.storage_name == f"corpora/org-{cast.org.pk}/corpus-{corpus.pk}/{upload.file.pk}-a.txt"


def test_it_fails_an_upload_whose_stream_breaks_and_leaves_nothing_stored(
    cast: Cast, corpus: Corpus, media_root: Path
) -> None:
    class Broken:
        """Hands out some bytes, then the connection resets."""

        def __init__(self) -> None:
            self.sent = False

        def read(self, size: int = -1) -> bytes:
            if self.sent:
                raise OSError("connection reset by peer")
            self.sent = True
            return b"x" * 10

    file = start_upload(corpus, name="a.txt", size=100, user=cast.owner)
    file = receive_upload(file, Broken())
    assert file.status == CorpusFile.Status.FAILED
    assert file.message == "The upload was cut off before the whole file arrived; send it again."
    assert stored_files(media_root) == {}
    file = receive_upload(file, BytesIO(b"y" * 100))
    assert file.status == CorpusFile.Status.STORED
    assert stored_files(media_root) == {file.storage_name: b"y" * 100}


def test_it_fails_an_empty_file(cast: Cast, corpus: Corpus, media_root: Path) -> None:
    upload = upload_bytes(cast.client_for("owner"), corpus, "empty.txt", b"")
    assert upload.content is not None
    assert upload.content.json()["status"] == "failed"
    assert upload.content.json()["message"] == "The file is empty."
    assert upload.content.json()["detected_type"] == "empty"
    assert stored_files(media_root) == {}


def test_it_fails_binary_content_whatever_its_name(cast: Cast, corpus: Corpus, media_root: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01" + bytes(range(256))
    upload = upload_bytes(cast.client_for("owner"), corpus, "notes.txt", png)
    assert upload.content is not None
    assert upload.content.json()["status"] == "failed"
    assert upload.content.json()["message"] == BINARY_REFUSAL
    assert upload.content.json()["detected_type"] == "binary"
    assert stored_files(media_root) == {}


def test_it_keeps_duplicate_content_once(cast: Cast, corpus: Corpus, media_root: Path) -> None:
    client = cast.client_for("owner")
    first = upload_bytes(client, corpus, "handbook/leave.md", TEXT)
    second = upload_bytes(client, corpus, "copy/leave-copy.md", TEXT)
    assert second.content is not None
    assert second.content.status_code == 200
    assert second.content.json()["status"] == "duplicate"
    assert second.content.json()["message"] == "Same content as handbook/leave.md: kept once."
    assert second.file.duplicate_of == first.file
    assert second.file.storage_name == ""
    assert stored_files(media_root) == {first.file.storage_name: TEXT}
    # Only the original counts against the limits.
    page = cast.client_for("owner").get(reverse("corpora:detail", args=[corpus.pk])).content.decode()
    assert "this corpus: 46\xa0bytes in 1 files" in page


def test_it_refuses_sending_a_stored_file_again(cast: Cast, corpus: Corpus, media_root: Path) -> None:
    client = cast.client_for("owner")
    upload = upload_bytes(client, corpus, "a.txt", TEXT)
    again = put_bytes(client, upload.start.json()["upload_url"], b"other bytes!" * 4)
    assert again.status_code == 409
    assert again.json()["message"] == "This file is stored: start a new upload to send it again."
    assert stored_files(media_root) == {upload.file.storage_name: TEXT}


# ------------------------------------------------------------------ the no-JavaScript form
def test_it_stores_several_files_from_the_multipart_form(cast: Cast, corpus: Corpus, media_root: Path) -> None:
    client = cast.client_for("member")
    files = [
        SimpleUploadedFile("a.txt", b"Alpha text.\n"),
        SimpleUploadedFile("b.md", b"# Beta\n\nText.\n"),
        SimpleUploadedFile("empty.txt", b""),
    ]
    response = client.post(reverse("corpora:file-upload", args=[corpus.pk]), {"files": files}, follow=True)
    assert response.redirect_chain == [(reverse("corpora:detail", args=[corpus.pk]), 302)]
    assert messages_of(response) == ["a.txt: stored.", "b.md: stored.", "empty.txt: The file is empty."]
    rows = {f.name: f for f in corpus.files.all()}
    assert {name: f.status for name, f in rows.items()} == {"a.txt": "stored", "b.md": "stored", "empty.txt": "failed"}
    assert stored_files(media_root) == {
        rows["a.txt"].storage_name: b"Alpha text.\n",
        rows["b.md"].storage_name: b"# Beta\n\nText.\n",
    }
    assert not CorpusVersion.objects.exists()


def test_it_asks_for_files_when_the_form_has_none(cast: Cast, corpus: Corpus) -> None:
    response = cast.client_for("member").post(reverse("corpora:file-upload", args=[corpus.pk]), {}, follow=True)
    assert messages_of(response) == ["Choose one or more files to upload."]


def test_it_refuses_an_oversized_file_in_the_form_and_keeps_the_others(
    cast: Cast, corpus: Corpus, settings: Any, media_root: Path
) -> None:
    settings.CORPUS_MAX_FILE_BYTES = 10
    files = [SimpleUploadedFile("big.txt", b"x" * 11), SimpleUploadedFile("ok.txt", b"small")]
    response = cast.client_for("member").post(
        reverse("corpora:file-upload", args=[corpus.pk]), {"files": files}, follow=True
    )
    assert messages_of(response) == ["big.txt: 11\xa0bytes is over the 10\xa0bytes limit per file.", "ok.txt: stored."]
    assert list(stored_files(media_root).values()) == [b"small"]


def test_it_queues_an_ingest_after_the_form_when_asked(
    cast: Cast, corpus: Corpus, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        cast.client_for("member").post(
            reverse("corpora:file-upload", args=[corpus.pk]),
            {"files": [SimpleUploadedFile("a.txt", TEXT)], "ingest": "1"},
        )
    version = CorpusVersion.objects.get(corpus=corpus)
    assert version.number == 1
    assert [f.name for f in version.files.all()] == ["a.txt"]
    assert len(callbacks) == 1


# ------------------------------------------------------------------ removing files, CSV columns
def test_it_removes_a_file_and_frees_its_storage(cast: Cast, corpus: Corpus, media_root: Path) -> None:
    client = cast.client_for("member")
    keep = upload_bytes(client, corpus, "keep.txt", b"keep me")
    drop = upload_bytes(client, corpus, "drop.txt", b"drop me")
    assert len(stored_files(media_root)) == 2
    response = client.post(reverse("corpora:file-remove", args=[corpus.pk, drop.file.pk]), follow=True)
    assert messages_of(response) == ["Removed drop.txt. Ingest again to make a version without it."]
    assert (drop.file.status, drop.file.storage_name, drop.file.message) == ("removed", "", "Removed.")
    assert stored_files(media_root) == {keep.file.storage_name: b"keep me"}
    page = response.content.decode()
    assert "keep.txt" in page
    assert "drop.txt</td>" not in page
    assert "this corpus: 7\xa0bytes in 1 files" in page


def test_it_answers_a_remove_from_htmx_with_the_status_panel(cast: Cast, corpus: Corpus) -> None:
    file = stored(corpus, "a.txt")
    response = cast.client_for("member").post(
        reverse("corpora:file-remove", args=[corpus.pk, file.pk]), headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    assert [t.name for t in response.templates] == ["corpora/_status.html"]
    assert "No files yet." in response.content.decode()


CSV = b"id,body\n1,Employees get twenty-five days of paid leave per year.\n2,Expenses are reimbursed monthly.\n"


def test_it_records_a_csvs_columns_and_proposes_the_text_column(cast: Cast, corpus: Corpus) -> None:
    upload = upload_bytes(cast.client_for("member"), corpus, "faq.csv", CSV)
    assert upload.content is not None
    body = upload.content.json()
    assert (body["status"], body["detected_type"]) == ("stored", "csv")
    assert body["csv_columns"] == ["id", "body"]
    assert body["csv_text_column"] == "body"
    assert upload.file.facts == {"columns": ["id", "body"], "proposed_text_column": "body"}
    page = cast.client_for("member").get(reverse("corpora:detail", args=[corpus.pk])).content.decode()
    assert "<option selected>body</option>" in page


def test_it_saves_an_existing_csv_column_and_refuses_an_unknown_one(cast: Cast, corpus: Corpus) -> None:
    client = cast.client_for("member")
    file = upload_bytes(client, corpus, "faq.csv", CSV).file
    url = reverse("corpora:file-csv-column", args=[corpus.pk, file.pk])

    wrong = client.post(url, {"column": "nope"}, follow=True)
    assert messages_of(wrong) == ["The CSV has no column named 'nope' (columns: id, body)."]
    file.refresh_from_db()
    assert file.options == {}

    right = client.post(url, {"column": "id"}, follow=True)
    assert messages_of(right) == ["faq.csv: the text comes from column “id”."]
    file.refresh_from_db()
    assert file.options == {"csv_text_column": "id"}
    assert "<option selected>id</option>" in right.content.decode()


# ------------------------------------------------------------------ ingest requests
def test_it_makes_version_one_of_the_stored_files_and_queues_it(
    cast: Cast, corpus: Corpus, django_capture_on_commit_callbacks: Any
) -> None:
    client = cast.client_for("member")
    a = upload_bytes(client, corpus, "a.txt", b"Alpha.").file
    b = upload_bytes(client, corpus, "b.txt", b"Beta.").file
    upload_bytes(client, corpus, "empty.txt", b"")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(reverse("corpora:ingest", args=[corpus.pk]), follow=True)
    assert messages_of(response) == ["Version 1 is queued for ingest."]
    assert len(callbacks) == 1
    version = CorpusVersion.objects.get(corpus=corpus)
    assert (version.number, version.status, version.files_total) == (1, "queued", 2)
    assert set(version.files.all()) == {a, b}
    assert set(VersionFile.objects.filter(version=version).values_list("verdict", flat=True)) == {"pending"}
    assert version.created_by == cast.member
    assert version.config["chunk_tokens"] > 0
    corpus.refresh_from_db()
    assert corpus.status == Corpus.Status.QUEUED

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        again = client.post(reverse("corpora:ingest", args=[corpus.pk]), follow=True)
    assert messages_of(again) == ["An ingest of this corpus is already under way; wait for it to finish."]
    assert callbacks == []
    assert CorpusVersion.objects.filter(corpus=corpus).count() == 1


def test_it_refuses_an_ingest_without_stored_files(cast: Cast, corpus: Corpus) -> None:
    client = cast.client_for("member")
    upload_bytes(client, corpus, "empty.txt", b"")
    response = client.post(reverse("corpora:ingest", args=[corpus.pk]), follow=True)
    assert messages_of(response) == ["The corpus has no stored files to ingest: upload some first."]
    assert not CorpusVersion.objects.exists()
    corpus.refresh_from_db()
    assert corpus.status == Corpus.Status.UPLOADING


def test_it_refuses_an_ingest_while_a_file_is_still_uploading(cast: Cast, corpus: Corpus) -> None:
    client = cast.client_for("member")
    stored(corpus, "a.txt")
    client.post(reverse("corpora:file-start", args=[corpus.pk]), {"name": "b.txt", "size": 10})
    response = client.post(reverse("corpora:ingest", args=[corpus.pk]), follow=True)
    assert messages_of(response) == ["Some files are still uploading; ingest when they have arrived."]
    assert not CorpusVersion.objects.exists()


def test_it_answers_an_htmx_ingest_with_the_status_panel(
    cast: Cast, corpus: Corpus, django_capture_on_commit_callbacks: Any
) -> None:
    stored(corpus, "a.txt")
    with django_capture_on_commit_callbacks(execute=False):
        response = cast.client_for("member").post(
            reverse("corpora:ingest", args=[corpus.pk]), headers={"HX-Request": "true"}
        )
    panel = response.content.decode()
    assert [t.name for t in response.templates] == ["corpora/_status.html"]
    assert "Version 1: queued, 0 of 1 files." in panel
    assert 'hx-trigger="every 2s"' in panel


def test_it_makes_version_two_of_the_changed_working_set(
    cast: Cast, corpus: Corpus, django_capture_on_commit_callbacks: Any
) -> None:
    client = cast.client_for("member")
    a = upload_bytes(client, corpus, "a.txt", b"Alpha.").file
    make_version(corpus, ["Alpha."])
    CorpusVersion.objects.filter(corpus=corpus).get().version_files.create(file=a, verdict="ok")
    page = client.get(reverse("corpora:detail", args=[corpus.pk])).content.decode()
    assert "Ingest a new version" not in page
    b = upload_bytes(client, corpus, "b.txt", b"Beta.").file
    page = client.get(reverse("corpora:detail", args=[corpus.pk])).content.decode()
    assert "The files changed since version 1." in page
    with django_capture_on_commit_callbacks(execute=False):
        client.post(reverse("corpora:ingest", args=[corpus.pk]))
    second = corpus.versions.get(number=2)
    assert set(second.files.all()) == {a, b}
    assert list(corpus.versions.get(number=1).files.all()) == [a]


# ------------------------------------------------------------------ the stall sweep
def test_it_sweeps_a_stalled_upload_to_failed(cast: Cast, corpus: Corpus, settings: Any) -> None:
    client = cast.client_for("member")
    old = client.post(reverse("corpora:file-start", args=[corpus.pk]), {"name": "old.txt", "size": 10}).json()
    fresh = client.post(reverse("corpora:file-start", args=[corpus.pk]), {"name": "fresh.txt", "size": 10}).json()
    long_ago = timezone.now() - timedelta(seconds=settings.UPLOAD_STALL_SECONDS + 60)
    CorpusFile.objects.filter(pk=old["id"]).update(updated_at=long_ago)
    page = client.get(reverse("corpora:detail", args=[corpus.pk])).content.decode()
    assert "The upload stopped before the whole file arrived; send it again." in page

    assert sweep_stalled_uploads() == 1
    swept, live = CorpusFile.objects.get(pk=old["id"]), CorpusFile.objects.get(pk=fresh["id"])
    assert swept.status == CorpusFile.Status.FAILED
    assert swept.message == (
        "The upload stopped before the whole file arrived (browser closed or server restarted); send it again."
    )
    assert live.status == CorpusFile.Status.UPLOADING
    assert sweep_stalled_uploads() == 0
    # The swept file can be sent again.
    assert put_bytes(client, old["upload_url"], b"0123456789").json()["status"] == "stored"


# ------------------------------------------------------------------ deletion
@pytest.fixture
def blocking_job() -> Iterator[None]:
    def describe(corpus: Corpus) -> list[str]:
        return [f"job 7 distilling from {corpus.name}"]

    corpora_models.CORPUS_USERS.append(describe)
    yield
    corpora_models.CORPUS_USERS.remove(describe)


def test_it_asks_for_the_corpus_name_before_deleting(cast: Cast, corpus: Corpus) -> None:
    client = cast.client_for("member")
    url = reverse("corpora:delete", args=[corpus.pk])
    form = client.get(url).content.decode()
    assert 'name="confirm"' in form
    assert "Type the corpus name to confirm." in form
    wrong = client.post(url, {"confirm": "handbook"})
    assert wrong.status_code == 200
    assert "The name does not match." in wrong.content.decode()
    assert Corpus.objects.filter(pk=corpus.pk).exists()


def test_it_deletes_the_corpus_its_rows_and_its_stored_files(cast: Cast, corpus: Corpus, media_root: Path) -> None:
    client = cast.client_for("member")
    upload_bytes(client, corpus, "a.txt", b"Alpha.")
    upload_bytes(client, corpus, "b.txt", b"Beta.")
    upload_bytes(client, corpus, "b-copy.txt", b"Beta.")
    make_version(corpus, ["Alpha.", "Beta."])
    other = Corpus.objects.create(organization=cast.org, name="Other")
    kept = upload_bytes(client, other, "c.txt", b"Gamma.")
    assert len(stored_files(media_root)) == 3

    response = client.post(reverse("corpora:delete", args=[corpus.pk]), {"confirm": "Handbook"}, follow=True)
    assert response.redirect_chain == [(reverse("corpora:list"), 302)]
    assert messages_of(response) == ["Deleted “Handbook”, its versions and its files."]
    assert not Corpus.objects.filter(pk=corpus.pk).exists()
    assert list(CorpusFile.objects.values_list("name", flat=True)) == ["c.txt"]
    assert not CorpusVersion.objects.exists()
    assert not Document.objects.exists()
    assert not Chunk.objects.exists()
    assert not Example.objects.exists()
    assert stored_files(media_root) == {kept.file.storage_name: b"Gamma."}
    event = AuditEvent.objects.get(action=AuditEvent.Action.DELETED)
    assert (event.organization, event.target) == (cast.org, "corpus Handbook")


@pytest.mark.usefixtures("blocking_job")
def test_it_refuses_to_delete_a_corpus_a_job_uses(cast: Cast, corpus: Corpus, media_root: Path) -> None:
    client = cast.client_for("owner")
    upload_bytes(client, corpus, "a.txt", b"Alpha.")
    url = reverse("corpora:delete", args=[corpus.pk])
    notice = (
        "This corpus is used by a queued or running job (job 7 distilling from Handbook): "
        "cancel it or wait for it to finish."
    )
    page = client.get(url).content.decode()
    assert notice in page
    assert 'name="confirm"' not in page
    response = client.post(url, {"confirm": "Handbook"}, follow=True)
    assert response.redirect_chain == [(reverse("corpora:detail", args=[corpus.pk]), 302)]
    assert messages_of(response) == [notice]
    assert Corpus.objects.filter(pk=corpus.pk).exists()
    assert len(stored_files(media_root)) == 1


# ------------------------------------------------------------------ chunks and examples
def test_it_filters_the_chunks_by_text(cast: Cast, corpus: Corpus) -> None:
    make_version(corpus, ["Paid leave is 25 days.", "Expenses are paid monthly.", "Sick LEAVE needs a note."])
    client = cast.client_for("member")
    url = reverse("corpora:chunks", args=[corpus.pk])
    page = client.get(url, {"q": "leave"}).content.decode()
    assert page.startswith("<!doctype html>")
    assert "2 chunks containing “leave”." in page
    assert "Paid leave is 25 days." in page
    assert "Sick LEAVE needs a note." in page
    assert "Expenses are paid monthly." not in page

    partial = client.get(url, {"q": "expenses", "version": "1"}, headers={"HX-Request": "true"})
    assert [t.name for t in partial.templates] == ["corpora/_chunks.html"]
    text = partial.content.decode()
    assert "<html" not in text
    assert "1 chunk containing “expenses”." in text
    assert "Expenses are paid monthly." in text
    assert "Paid leave" not in text

    everything = client.get(url).content.decode()
    assert "3 chunks." in everything


def test_it_shows_no_chunks_for_a_version_that_does_not_exist(cast: Cast, corpus: Corpus) -> None:
    make_version(corpus, ["Paid leave is 25 days."])
    page = cast.client_for("member").get(reverse("corpora:chunks", args=[corpus.pk]), {"version": "9"})
    assert page.status_code == 200
    assert "0 chunks." in page.content.decode()


@pytest.mark.parametrize("route", ["corpora:detail", "corpora:chunks", "corpora:examples"])
@pytest.mark.parametrize("version", ["²", "9" * 5000], ids=["superscript-2", "5000-digits"])
def test_it_shows_the_current_version_for_a_version_that_is_not_a_number(
    cast: Cast, corpus: Corpus, route: str, version: str
) -> None:
    # Was a 500: "²".isdigit() is true but int("²") raises; so does int() of over 4300 digits.
    make_version(corpus, ["Paid leave is 25 days."])
    page = cast.client_for("member").get(reverse(route, args=[corpus.pk]), {"version": version})
    assert page.status_code == 200


def test_it_shows_the_versions_examples_and_a_chunk_sample_on_the_corpus_page(cast: Cast, corpus: Corpus) -> None:
    make_version(corpus, ["Paid leave is 25 days."])
    client = cast.client_for("member")
    examples = client.get(reverse("corpora:examples", args=[corpus.pk])).content.decode()
    assert "How many days of leave?" in examples
    assert "25 days." in examples
    page = client.get(reverse("corpora:detail", args=[corpus.pk])).content.decode()
    assert "Paid leave is 25 days." in page
    assert "v1</a> (current)" in page


# ------------------------------------------------------------------ the web process stays light
def test_the_web_process_imports_neither_torch_nor_transformers() -> None:
    script = (
        "import sys, django\n"
        "django.setup()\n"
        "import webapp.urls, webapp.corpora.views, webapp.api.corpora, webapp.corpora.services\n"
        "import workers.ml.ingest.sniff  # run on every upload, in the web process\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "heavy: []" in result.stdout
