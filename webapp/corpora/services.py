"""The corpus rules: limits, uploads into storage, versions and ingest requests, deletion, sweeps.

Views and the API call these; the ingest itself runs in a Celery task (workers/tasks/ingest.py).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Max
from django.template.defaultfilters import filesizeformat, pluralize
from django.utils import timezone

from webapp.corpora.models import (
    Corpus,
    CorpusFile,
    CorpusVersion,
    VersionFile,
    organization_quota,
    organization_usage,
)
from webapp.corpora.uploads import BoundedReader, StreamFile, UploadTooLarge
from webapp.tenants.models import AuditEvent, Organization

logger = logging.getLogger(__name__)
Status = CorpusFile.Status

# What the upload page lists as accepted (the ingest judges by content, not by this list).
ACCEPTED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".jsonl", ".ndjson", ".csv", ".zip")


class CorpusError(Exception):
    """A request the rules refuse; the message is shown to the user as is."""


@dataclass(frozen=True)
class Limits:
    """The limits that apply to one corpus, with current usage, for checks and for the upload page."""

    max_file_bytes: int
    max_corpus_bytes: int
    max_files: int
    org_quota_bytes: int
    corpus_bytes: int
    corpus_files: int
    org_bytes: int

    @classmethod
    def for_corpus(cls, corpus: Corpus) -> Limits:
        counted = corpus.files.filter(status__in=CorpusFile.COUNTS_AGAINST_QUOTA)
        corpus_bytes = sum(max(size, declared) for size, declared in counted.values_list("size", "declared_size"))
        return cls(
            max_file_bytes=settings.CORPUS_MAX_FILE_BYTES,
            max_corpus_bytes=settings.CORPUS_MAX_BYTES,
            max_files=settings.CORPUS_MAX_FILES,
            org_quota_bytes=organization_quota(corpus.organization),
            corpus_bytes=corpus_bytes,
            corpus_files=counted.count(),
            org_bytes=organization_usage(corpus.organization),
        )

    def refusal(self, size: int) -> str | None:
        """Why a new file of `size` bytes cannot be added, or None."""
        if size > self.max_file_bytes:
            return f"{filesizeformat(size)} is over the {filesizeformat(self.max_file_bytes)} limit per file."
        if self.corpus_files + 1 > self.max_files:
            return f"The corpus already has {self.max_files} file{pluralize(self.max_files)}, the most allowed."
        if self.corpus_bytes + size > self.max_corpus_bytes:
            return (
                f"Adding {filesizeformat(size)} would take the corpus over its "
                f"{filesizeformat(self.max_corpus_bytes)} limit ({filesizeformat(self.corpus_bytes)} used)."
            )
        if self.org_bytes + size > self.org_quota_bytes:
            return (
                f"Adding {filesizeformat(size)} would take your organization over its "
                f"{filesizeformat(self.org_quota_bytes)} storage limit ({filesizeformat(self.org_bytes)} used)."
            )
        return None


def clean_name(name: str) -> str:
    """The user's relative path, made safe to show and to use in a storage name (no '..', no leading '/')."""
    parts = [part for part in re.split(r"[\\/]+", name) if part not in ("", ".", "..")]
    cleaned = "/".join(re.sub(r"[\x00-\x1f\x7f]", "", part).strip() for part in parts)
    return cleaned[:500] or "unnamed"


def storage_name_for(file: CorpusFile) -> str:
    """Tenant-namespaced: org, corpus and file id, then a safe form of the file's base name."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", file.name.rsplit("/", 1)[-1])[-120:] or "file"
    return f"corpora/org-{file.organization_id}/corpus-{file.corpus_id}/{file.pk}-{base}"


@transaction.atomic
def start_upload(corpus: Corpus, *, name: str, size: int, user: Any) -> CorpusFile:
    """Create the file's record before any byte is sent; a file over a limit is recorded as refused."""
    # Lock the org's row: two concurrent uploads (to any of its corpora) cannot both squeeze under a limit.
    Organization.objects.select_for_update().filter(pk=corpus.organization_id).first()
    name = clean_name(name)
    if size < 0:
        raise CorpusError("The file size must be given (0 or more bytes).")
    refusal = Limits.for_corpus(corpus).refusal(size)
    file = CorpusFile.objects.create(
        organization=corpus.organization,
        corpus=corpus,
        name=name,
        declared_size=size,
        status=Status.REFUSED if refusal else Status.UPLOADING,
        message=refusal or "",
        uploaded_by=user if getattr(user, "is_authenticated", False) else None,
    )
    if not refusal:
        _mark_changed(corpus)
    return file


def receive_upload(file: CorpusFile, stream: IO[bytes] | Any) -> CorpusFile:
    """Stream the bytes into storage; end as stored, duplicate or failed (never a half-stored success)."""
    if file.status not in (Status.UPLOADING, Status.FAILED):
        raise CorpusError(f"This file is {file.get_status_display().lower()}: start a new upload to send it again.")
    sent_again = file.status == Status.FAILED or file.is_stalled
    if file.status == Status.FAILED:
        # Sending a failed file again: it needs room under the limits like a new one.
        refusal = Limits.for_corpus(file.corpus).refusal(file.declared_size)
        if refusal:
            raise CorpusError(refusal)
        CorpusFile.objects.filter(pk=file.pk).update(status=Status.UPLOADING, message="", updated_at=timezone.now())
        file.status = Status.UPLOADING
    _delete_stored(file)
    if sent_again:
        _delete_leftover(file)

    def still_arriving(size: int) -> None:
        # Keeps the stall sweep away from a slow but live upload, and lets the page show bytes received.
        CorpusFile.objects.filter(pk=file.pk, status=Status.UPLOADING).update(size=size, updated_at=timezone.now())

    reader = BoundedReader(stream, limit=file.declared_size, on_progress=still_arriving)
    # The name is fixed before saving so that what a failed save left behind (a file system backend keeps the
    # bytes written before the error) can be deleted: a failed upload never leaves an orphan in storage.
    target = default_storage.get_available_name(storage_name_for(file))
    try:
        stored_as = default_storage.save(target, StreamFile(reader, file.name))
    except UploadTooLarge:
        _delete_partial(target)
        return _fail(file, f"More bytes arrived than the {file.declared_size} announced; upload it again.")
    except Exception as error:  # the client went away, the disk is full, the store refused
        logger.warning("upload of file %s failed: %s", file.pk, error)
        _delete_partial(target)
        return _fail(file, "The upload was cut off before the whole file arrived; send it again.")
    file.storage_name, file.size, file.sha256 = stored_as, reader.size, reader.sha256
    if reader.size < file.declared_size:
        return _fail(
            file,
            f"The upload was cut off after {filesizeformat(reader.size)} of {filesizeformat(file.declared_size)}; "
            "send it again.",
        )
    return _accept(file, reader.head)


def _accept(file: CorpusFile, head: bytes) -> CorpusFile:
    from workers.ml.ingest.sniff import sniff  # stdlib only: the web process stays free of torch

    file.detected_type = sniff(head, file.name)
    if file.detected_type == "empty":
        return _fail(file, "The file is empty.", keep_bytes=False)
    if file.detected_type == "binary":
        return _fail(
            file,
            "Unsupported file type (binary data): upload .txt, .md, .html, .pdf, .docx, .jsonl, .csv or .zip.",
            keep_bytes=False,
        )
    with transaction.atomic():
        original = (
            CorpusFile.objects.filter(corpus=file.corpus, sha256=file.sha256, status=Status.STORED)
            .exclude(pk=file.pk)
            .first()
        )
        if original is not None:
            _delete_stored(file)
            file.status, file.duplicate_of = Status.DUPLICATE, original
            file.message = f"Same content as {original.name}: kept once."
        else:
            file.status, file.message = Status.STORED, ""
            if file.detected_type == "csv":
                file.facts = _csv_facts(file)
        file.save()
    return file


def _csv_facts(file: CorpusFile) -> dict[str, Any]:
    """The CSV's columns and the proposed text column, for the column picker."""
    import tempfile
    from pathlib import Path

    from workers.ml.ingest.sniff import csv_columns

    with default_storage.open(file.storage_name, "rb") as stored, tempfile.TemporaryDirectory() as scratch:
        # Only the head is needed to read the header and propose a column.
        path = Path(scratch) / "head.csv"
        path.write_bytes(stored.read(256 * 1024))
        # Read while the scratch folder still exists (it is removed when this block ends).
        try:
            columns, proposed = csv_columns(path)
        except Exception:  # a malformed CSV: the ingest gives the verdict
            return {}
    return {"columns": columns, "proposed_text_column": proposed}


def _fail(file: CorpusFile, message: str, *, keep_bytes: bool = False) -> CorpusFile:
    if not keep_bytes:
        _delete_stored(file)
    file.status, file.message = Status.FAILED, message[:500]
    file.save()
    return file


def _delete_partial(name: str) -> None:
    try:
        default_storage.delete(name)
    except Exception:  # nothing was written, or the store is unreachable: nothing more to do here
        logger.warning("could not delete the partial upload %s", name, exc_info=True)


def _delete_leftover(file: CorpusFile) -> None:
    """Delete what an earlier attempt's server, killed while saving, left under the file's storage name.

    A file system backend writes in place, and the row learns the name only once the save is done: after a
    SIGKILL (a crash, a deploy) the bytes written so far stay under `storage_name_for(file)` with nothing pointing
    at them. Only for a failed or stalled upload, never one still arriving.
    """
    if not file.storage_name:
        _delete_partial(storage_name_for(file))


def _delete_stored(file: CorpusFile) -> None:
    if file.storage_name:
        try:
            default_storage.delete(file.storage_name)
        except Exception:  # already gone: nothing to free
            logger.warning("could not delete %s", file.storage_name, exc_info=True)
        file.storage_name = ""


def upload_file_object(corpus: Corpus, *, name: str, fileobj: IO[bytes] | Any, size: int, user: Any) -> CorpusFile:
    """Start and receive in one go: the API's multipart upload and the import command."""
    file = start_upload(corpus, name=name, size=size, user=user)
    if file.status == Status.REFUSED:
        return file
    return receive_upload(file, fileobj)


@transaction.atomic
def remove_file(file: CorpusFile, *, user: Any) -> None:
    """Take a file out of the working set and free its storage; versions already made keep their chunks."""
    _delete_stored(file)
    file.status, file.message = Status.REMOVED, "Removed."
    file.save()
    _mark_changed(file.corpus)


def set_csv_column(file: CorpusFile, column: str) -> None:
    columns = file.facts.get("columns") or []
    if columns and column not in columns:
        raise CorpusError(f"The CSV has no column named {column!r} (columns: {', '.join(columns)}).")
    file.options = {**file.options, "csv_text_column": column}
    file.save(update_fields=["options", "updated_at"])
    _mark_changed(file.corpus)


def _mark_changed(corpus: Corpus) -> None:
    """After the working set changes, the corpus waits for an ingest (unless one is already under way)."""
    Corpus.objects.filter(pk=corpus.pk).exclude(status__in=[Corpus.Status.QUEUED, Corpus.Status.INGESTING]).update(
        status=Corpus.Status.UPLOADING, updated_at=timezone.now()
    )


def version_settings() -> dict[str, Any]:
    return {
        "chunk_tokens": settings.INGEST_CHUNK_TOKENS,
        "overlap_tokens": settings.INGEST_OVERLAP_TOKENS,
        "heldout_fraction": settings.INGEST_HELDOUT_FRACTION,
        "tokenizer": settings.MOE_BASE_MODEL,
        "limits": {
            "max_file_bytes": settings.CORPUS_MAX_FILE_BYTES,
            "max_archive_total_bytes": settings.ARCHIVE_MAX_TOTAL_BYTES,
            "max_archive_ratio": settings.ARCHIVE_MAX_RATIO,
            "max_archive_members": settings.ARCHIVE_MAX_MEMBERS,
            "max_archive_depth": settings.ARCHIVE_MAX_DEPTH,
        },
    }


@transaction.atomic
def request_ingest(corpus: Corpus, *, user: Any) -> CorpusVersion:
    """Make a new version of the working set and queue its ingest (sent to the worker once committed)."""
    corpus = Corpus.objects.select_for_update().get(pk=corpus.pk)
    if corpus.versions.filter(status__in=[CorpusVersion.Status.QUEUED, CorpusVersion.Status.INGESTING]).exists():
        raise CorpusError("An ingest of this corpus is already under way; wait for it to finish.")
    if corpus.files.filter(status=Status.UPLOADING).exclude(pk__in=_stalled_ids(corpus)).exists():
        raise CorpusError("Some files are still uploading; ingest when they have arrived.")
    files = list(corpus.files.filter(status=Status.STORED))
    if not files:
        raise CorpusError("The corpus has no stored files to ingest: upload some first.")
    number = (corpus.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    version = CorpusVersion.objects.create(
        organization=corpus.organization,
        corpus=corpus,
        number=number,
        config=version_settings(),
        files_total=len(files),
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )
    VersionFile.objects.bulk_create(VersionFile(version=version, file=file) for file in files)
    corpus.status = Corpus.Status.QUEUED
    corpus.save(update_fields=["status", "updated_at"])
    transaction.on_commit(lambda: enqueue_ingest(version.pk))
    return version


def enqueue_ingest(version_id: int) -> None:
    from workers.tasks.ingest import ingest_corpus_version

    try:
        ingest_corpus_version.delay(version_id)
    except Exception:
        # The broker is down (Redis restarting): the version is saved as queued, and beat's corpus sweep sends a
        # queued version whose message never arrived. The user gets no error page.
        logger.warning("ingest of version %s could not be sent; the sweep will send it", version_id, exc_info=True)


def _stalled_ids(corpus: Corpus) -> list[int]:
    cutoff = timezone.now() - timedelta(seconds=settings.UPLOAD_STALL_SECONDS)
    return list(corpus.files.filter(status=Status.UPLOADING, updated_at__lt=cutoff).values_list("pk", flat=True))


def sweep_stalled_uploads() -> int:
    """Mark uploads that stopped sending as failed (they can be sent again); returns how many."""
    cutoff = timezone.now() - timedelta(seconds=settings.UPLOAD_STALL_SECONDS)
    stalled = CorpusFile.objects.filter(status=Status.UPLOADING, updated_at__lt=cutoff)
    count = 0
    for file in stalled:
        _fail(
            file,
            "The upload stopped before the whole file arrived (browser closed or server restarted); send it again.",
        )
        _delete_leftover(file)
        count += 1
    return count


def delete_corpus(corpus: Corpus, *, user: Any) -> None:
    """Delete the corpus, its versions, chunks and stored files; refused while a job uses it."""
    blocking = corpus.blocking_jobs()
    if blocking:
        raise CorpusError(
            f"This corpus is used by a queued or running job ({', '.join(blocking)}): "
            "cancel it or wait for it to finish."
        )
    names = list(corpus.files.exclude(storage_name="").values_list("storage_name", flat=True))
    with transaction.atomic():
        AuditEvent.record(corpus.organization, user, AuditEvent.Action.DELETED, target=f"corpus {corpus.name}")
        corpus.delete()
    # Storage is freed after the rows are gone: a failure here leaves orphans to sweep, never a broken corpus.
    for name in names:
        try:
            default_storage.delete(name)
        except Exception:
            logger.warning("could not delete %s", name, exc_info=True)
