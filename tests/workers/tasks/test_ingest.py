"""The ingest task on the real PostgreSQL: verdicts, versions, idempotent re-runs, fenced claims, a real worker."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from tests.conftest import worker_on_test_database
from tests.webapp.api.openapi_schema import assert_matches
from tests.webapp.conftest import Cast
from tests.workers.ml.ingest.files import pdf_bytes, zip_bytes
from webapp.corpora import services
from webapp.corpora.models import Chunk, Corpus, CorpusFile, CorpusVersion, Document, Example, VersionFile
from webapp.webhooks.models import WebhookEndpoint
from workers.tasks.ingest import LostClaim, ingest_corpus_version, run_ingest

PARAGRAPH = (
    "The leave policy gives every employee twenty-five days of paid leave per year, and unused days carry over "
    "until the end of March of the following year."
)


def document(topic: str, paragraphs: int = 12) -> bytes:
    return "\n\n".join(f"{topic} section {n}. {PARAGRAPH} Rule {n} of {topic}." for n in range(paragraphs)).encode()


@pytest.fixture(autouse=True)
def media_root(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def corpus(cast: Cast) -> Corpus:
    return Corpus.objects.create(organization=cast.org, name="Handbook", created_by=cast.owner)


def add(corpus: Corpus, name: str, data: bytes) -> CorpusFile:
    return services.upload_file_object(corpus, name=name, fileobj=io.BytesIO(data), size=len(data), user=None)


def queue_ingest(corpus: Corpus, capture: Any) -> CorpusVersion:
    with capture(execute=False):  # the test runs the task itself
        return services.request_ingest(corpus, user=None)


def verdicts(version: CorpusVersion) -> dict[str, tuple[str, str]]:
    return {entry.file.name: (entry.verdict, entry.message) for entry in version.version_files.select_related("file")}


def test_it_holds_out_about_the_fraction_of_chunks_even_with_a_few_uneven_files(
    corpus: Corpus, django_capture_on_commit_callbacks: Any
) -> None:
    # Most of the text, and first in the split's hash order: the old rule (one document in ten, at least one) held
    # out exactly this file.
    add(corpus, "manual.md", document("Manual", paragraphs=60))
    for topic in ("Leave", "Travel", "Expenses", "Security"):
        add(corpus, f"{topic.lower()}.txt", document(topic, paragraphs=3))
    version = queue_ingest(corpus, django_capture_on_commit_callbacks)

    ingest_corpus_version(version.pk)

    version.refresh_from_db()
    assert version.status == CorpusVersion.Status.READY, version.error
    heldout = set(Document.objects.filter(version=version, split="heldout").values_list("name", flat=True))
    assert len(heldout) == 1
    assert "manual.md" not in heldout  # one small file, not most of the corpus
    assert 0 < version.stats["heldout_share"] <= version.config["heldout_fraction"]
    assert version.stats["heldout_chunks"] == Chunk.objects.filter(version=version, split="heldout").count()


def test_it_ingests_mixed_files_into_a_ready_version_with_per_file_verdicts(
    corpus: Corpus, django_capture_on_commit_callbacks: Any
) -> None:
    add(corpus, "policies/leave.md", document("Leave"))
    add(corpus, "policies/travel.txt", document("Travel"))
    faq = b'{"question": "How many days?", "answer": "25."}\nnot json\n{"question": "Q2", "answer": "A2"}\n'
    add(corpus, "faq.jsonl", faq)
    add(corpus, "scan.pdf", pdf_bytes([None, None]))
    add(corpus, "bundle.zip", zip_bytes({"inner/expenses.txt": document("Expenses"), "../evil.txt": b"escape"}))
    version = queue_ingest(corpus, django_capture_on_commit_callbacks)

    ingest_corpus_version(version.pk)

    version.refresh_from_db()
    corpus.refresh_from_db()
    assert version.status == CorpusVersion.Status.READY, version.error
    assert corpus.status == Corpus.Status.READY
    assert corpus.current_version == version
    assert version.files_done == version.files_total == 5
    found = verdicts(version)
    assert found["policies/leave.md"][0] == "ok"
    assert found["faq.jsonl"] == ("partial", "Skipped 1 broken line (2); kept 2 records (question/answer pairs).")
    assert found["scan.pdf"] == (
        "failed",
        "The PDF has no text layer (scanned pages?): it needs OCR before upload.",
    )
    assert found["bundle.zip"][0] == "partial"
    bundle = VersionFile.objects.get(version=version, file__name="bundle.zip")
    members = {member["name"]: member for member in bundle.members}
    assert members["bundle.zip/../evil.txt"]["message"] == "Refused: the path leads outside the archive ('..')."
    # The good parts are kept: three documents from text files, one from the zip, one from the JSONL.
    names = set(Document.objects.filter(version=version).values_list("name", flat=True))
    assert {"policies/leave.md", "policies/travel.txt", "bundle.zip/inner/expenses.txt", "faq.jsonl"} <= names
    assert Example.objects.filter(version=version).count() == 2
    chunks = Chunk.objects.filter(version=version)
    assert chunks.exists()
    assert all(0 < chunk.tokens <= version.config["chunk_tokens"] for chunk in chunks)
    # Held out by whole document, at least one.
    heldout = Document.objects.filter(version=version, split="heldout")
    assert heldout.count() >= 1
    assert not Chunk.objects.filter(document__in=heldout, split="train").exists()
    stats = version.stats
    assert stats["documents"] == Document.objects.filter(version=version).count()
    assert stats["chunks"] == chunks.count()
    assert stats["tokens"] == sum(chunk.tokens for chunk in chunks)
    assert sum(count for _, _, count in stats["chunk_length_histogram"]) == stats["chunks"]
    assert stats["languages"].get("en", 0) > 0.5


def test_it_does_not_duplicate_chunks_when_the_task_runs_again(
    corpus: Corpus, django_capture_on_commit_callbacks: Any
) -> None:
    add(corpus, "a.txt", document("Alpha"))
    add(corpus, "b.txt", document("Beta"))
    version = queue_ingest(corpus, django_capture_on_commit_callbacks)
    ingest_corpus_version(version.pk)
    first = sorted(Chunk.objects.filter(version=version).values_list("text", flat=True))

    # A worker died mid-ingest: the row says ingesting with an expired lease, and the message comes again.
    CorpusVersion.objects.filter(pk=version.pk).update(
        status=CorpusVersion.Status.INGESTING, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    ingest_corpus_version(version.pk)

    version.refresh_from_db()
    assert version.status == CorpusVersion.Status.READY
    assert version.attempt == 2
    assert sorted(Chunk.objects.filter(version=version).values_list("text", flat=True)) == first


def test_it_leaves_a_version_alone_while_another_worker_holds_its_lease(
    corpus: Corpus, django_capture_on_commit_callbacks: Any
) -> None:
    add(corpus, "a.txt", document("Alpha"))
    version = queue_ingest(corpus, django_capture_on_commit_callbacks)
    assert CorpusVersion.claim(version.pk, lease_seconds=600) == 1

    ingest_corpus_version(version.pk)  # a duplicate delivery of the message

    version.refresh_from_db()
    assert (version.status, version.attempt) == (CorpusVersion.Status.INGESTING, 1)
    assert not Chunk.objects.filter(version=version).exists()


def test_a_worker_that_lost_its_claim_writes_nothing(corpus: Corpus, django_capture_on_commit_callbacks: Any) -> None:
    add(corpus, "a.txt", document("Alpha"))
    version = queue_ingest(corpus, django_capture_on_commit_callbacks)
    attempt = CorpusVersion.claim(version.pk, lease_seconds=600)
    assert attempt is not None
    CorpusVersion.objects.filter(pk=version.pk).update(attempt=attempt + 1)  # another worker took over

    with pytest.raises(LostClaim):
        run_ingest(CorpusVersion.objects.get(pk=version.pk), attempt)

    assert not Document.objects.filter(version=version).exists()


def test_a_new_version_leaves_the_old_one_intact(corpus: Corpus, django_capture_on_commit_callbacks: Any) -> None:
    old_file = add(corpus, "a.txt", document("Alpha"))
    add(corpus, "b.txt", document("Beta"))
    first = queue_ingest(corpus, django_capture_on_commit_callbacks)
    ingest_corpus_version(first.pk)
    first_chunks = list(Chunk.objects.filter(version=first).values_list("pk", "text"))

    services.remove_file(old_file, user=None)
    add(corpus, "c.txt", document("Gamma"))
    second = queue_ingest(corpus, django_capture_on_commit_callbacks)
    ingest_corpus_version(second.pk)

    assert second.number == first.number + 1
    assert list(Chunk.objects.filter(version=first).values_list("pk", "text")) == first_chunks
    assert any("Alpha" in text for _, text in first_chunks)
    second_texts = list(Chunk.objects.filter(version=second).values_list("text", flat=True))
    assert not any("Alpha" in text for text in second_texts)
    assert any("Gamma" in text for text in second_texts)
    corpus.refresh_from_db()
    assert corpus.current_version_id == second.pk


def test_it_fails_the_version_with_a_message_when_no_file_gives_text(
    corpus: Corpus, django_capture_on_commit_callbacks: Any
) -> None:
    add(corpus, "scan.pdf", pdf_bytes([None]))
    version = queue_ingest(corpus, django_capture_on_commit_callbacks)

    ingest_corpus_version(version.pk)

    version.refresh_from_db()
    corpus.refresh_from_db()
    assert version.status == CorpusVersion.Status.FAILED
    assert version.error == "No file gave any usable text: see each file's verdict."
    assert corpus.status == Corpus.Status.FAILED
    assert corpus.current_version is None


def test_it_tells_the_orgs_webhooks_when_an_ingest_ends(
    cast: Cast, corpus: Corpus, public_dns: None, django_capture_on_commit_callbacks: Any
) -> None:
    hook, _ = WebhookEndpoint.create(
        organization=cast.org, url="https://ci.example.com/h", description="", events=["corpus.ready"], created_by=None
    )
    add(corpus, "leave.md", document("Leave"))
    version = queue_ingest(corpus, django_capture_on_commit_callbacks)

    with django_capture_on_commit_callbacks(execute=False) as sent:  # the deliveries go out once this commits
        ingest_corpus_version(version.pk)

    [delivery] = hook.deliveries.all()
    assert len(sent) == 1
    assert delivery.event_type == "corpus.ready"
    assert delivery.payload["data"]["corpus"] == {"id": corpus.pk, "name": "Handbook"}
    assert delivery.payload["data"]["version"]["status"] == "ready"
    assert delivery.payload["data"]["version"]["files"][0]["verdict"] == "ok"
    assert_matches({"$ref": "#/components/schemas/CorpusEvent"}, delivery.payload)

    hook.events = ["corpus.failed"]
    hook.save()
    add(corpus, "scan.pdf", pdf_bytes([None]))
    CorpusFile.objects.filter(corpus=corpus, name="leave.md").delete()
    failed = queue_ingest(corpus, django_capture_on_commit_callbacks)
    ingest_corpus_version(failed.pk)

    event = hook.deliveries.get(event_type="corpus.failed").payload
    assert event["data"]["version"]["error"] == "No file gave any usable text: see each file's verdict."
    assert event["data"]["version"]["number"] == 2
    assert_matches({"$ref": "#/components/schemas/CorpusEvent"}, event)


def test_it_keeps_repeated_documents_and_chunks_once(corpus: Corpus, django_capture_on_commit_callbacks: Any) -> None:
    add(corpus, "a.txt", document("Alpha"))
    add(corpus, "bundle.zip", zip_bytes({"copy-of-a.txt": document("Alpha"), "b.txt": document("Beta")}))
    version = queue_ingest(corpus, django_capture_on_commit_callbacks)

    ingest_corpus_version(version.pk)

    texts = list(Chunk.objects.filter(version=version).values_list("text", flat=True))
    assert len(texts) == len(set(texts))
    bundle = VersionFile.objects.get(version=version, file__name="bundle.zip")
    assert "1 document(s) repeat earlier ones and were kept once" in bundle.message


# ---------------------------------------------------------------- a real worker over the real Redis


@pytest.fixture
def ingest_worker(tmp_path: Path, media_root: Path) -> Iterator[None]:
    """A cpu worker process on the test database and the test's storage folder."""
    with worker_on_test_database(tmp_path, "ingest-test@distillery", DATA_DIR=str(media_root.parent)):
        yield


@pytest.mark.celery_worker
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_ingests_what_the_browser_uploaded(cast: Cast, ingest_worker: None) -> None:
    client = cast.client_for("member")
    corpus = Corpus.objects.create(organization=cast.org, name="Live")
    for name, data in (("guide.md", document("Guide")), ("notes.txt", document("Notes"))):
        start = client.post(reverse("corpora:file-start", args=[corpus.pk]), {"name": name, "size": len(data)})
        client.put(start.json()["upload_url"], data, content_type="application/octet-stream")

    response = client.post(reverse("corpora:ingest", args=[corpus.pk]))  # enqueued on commit

    assert response.status_code == 302
    deadline = time.monotonic() + 90
    version = CorpusVersion.objects.get(corpus=corpus)
    while version.status in (CorpusVersion.Status.QUEUED, CorpusVersion.Status.INGESTING):
        assert time.monotonic() < deadline, f"still {version.status} after 90 s"
        time.sleep(0.5)
        version.refresh_from_db()
    assert version.status == CorpusVersion.Status.READY, version.error
    assert version.stats["documents"] == 2
    page = client.get(reverse("corpora:detail", args=[corpus.pk]))
    assert "Ready" in page.content.decode()
    assert Chunk.objects.filter(version=version, text__contains="Guide section 3").exists()
