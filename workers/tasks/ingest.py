"""Ingest: turn one corpus version's files into documents, chunks and examples, with per-file verdicts.

1. Claim the version row with one conditional UPDATE (queued, or ingesting with an expired lease); the attempt
   number it bumps fences every later write, so a worker that lost its lease cannot overwrite the new one.
2. Start clean: rows a previous attempt wrote for this version are deleted, so a retried task never duplicates.
3. For each file, in name order: extract (workers.ml.ingest, judged by content), normalise, drop documents
   already seen, chunk by the shared student's tokens, drop chunks already seen, and write the rows with the
   file's verdict in one transaction that first checks the attempt still holds (and renews the lease).
4. Split train/held-out by document (deterministic), compute statistics, and mark the version ready — or
   failed, with a message, when no file gave any text.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import shared_task
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.utils import timezone

from webapp.corpora.models import Chunk, Corpus, CorpusVersion, Document, Example, VersionFile
from webapp.webhooks import services as webhooks
from workers.ml.ingest import (
    ChunkingConfig,
    ExtractOptions,
    FileReport,
    FileStatus,
    IngestLimits,
    TextChunk,
    chunk_documents,
    detect_languages,
    extract_file,
    heldout_documents,
    length_histogram,
    normalise_text,
)

logger = logging.getLogger(__name__)
BATCH_ROWS = 2_000
_tokenizers: dict[str, Any] = {}


class LostClaim(Exception):
    """Another attempt took the version over (this worker's lease expired): stop without writing."""


def student_tokenizer(spec: str) -> Any:
    """The shared student's tokenizer, loaded once per worker process."""
    if spec not in _tokenizers:
        from workers.ml.catalog import CatalogConfig, load_tokenizer

        _tokenizers[spec] = load_tokenizer(spec, CatalogConfig(cache_dir=settings.MODEL_CACHE_DIR, device="cpu"))
    return _tokenizers[spec]


@contextmanager
def local_copy(storage_name: str) -> Iterator[Path]:
    """A path to the stored file: the file itself on local disk, else a temporary download."""
    try:
        yield Path(default_storage.path(storage_name))
        return
    except NotImplementedError:
        pass
    with tempfile.TemporaryDirectory(prefix="ingest-") as scratch:
        target = Path(scratch) / Path(storage_name).name
        with default_storage.open(storage_name, "rb") as source, target.open("wb") as sink:
            shutil.copyfileobj(source, sink, length=1 << 20)
        yield target


@shared_task(name="distillery.ingest.corpus_version", time_limit=12 * 3600, soft_time_limit=12 * 3600 - 60)
def ingest_corpus_version(version_id: int) -> None:
    attempt = CorpusVersion.claim(version_id, settings.INGEST_LEASE_SECONDS)
    if attempt is None:
        logger.info("ingest of version %s: nothing to claim", version_id)
        return
    version = CorpusVersion.objects.select_related("corpus").get(pk=version_id)
    Corpus.objects.filter(pk=version.corpus_id).update(status=Corpus.Status.INGESTING, updated_at=timezone.now())
    try:
        run_ingest(version, attempt)
    except LostClaim:
        logger.warning("ingest of version %s: attempt %s lost its claim", version_id, attempt)
    except Exception as error:
        logger.exception("ingest of version %s failed", version_id)
        _finish(version, attempt, CorpusVersion.Status.FAILED, error=f"The ingest stopped with an error: {error}")


def run_ingest(version: CorpusVersion, attempt: int) -> None:
    started = time.perf_counter()
    options = version.config
    with transaction.atomic():
        _hold(version, attempt)
        version.documents.all().delete()  # a retried attempt starts clean: no duplicated rows
        VersionFile.objects.filter(version=version).update(
            verdict=VersionFile.Verdict.PENDING, message="", details={}, members=[], documents=0, chunks=0
        )
    tokenizer = student_tokenizer(options["tokenizer"])
    chunking = ChunkingConfig(chunk_tokens=options["chunk_tokens"], overlap_tokens=options["overlap_tokens"])
    limits = IngestLimits(**options["limits"])
    seen_documents: dict[bytes, str] = {}
    seen_chunks: set[bytes] = set()
    dropped_chunks = 0
    entries = list(VersionFile.objects.filter(version=version).select_related("file").order_by("file__name"))
    for done, entry in enumerate(entries, start=1):
        file = entry.file
        extract = ExtractOptions(csv_text_column=file.options.get("csv_text_column"), limits=limits)
        if not file.storage_name:
            report = FileReport(file.name, file.detected_type or "unknown", FileStatus.FAILED, "The file was removed.")
        else:
            with local_copy(file.storage_name) as path:
                report = extract_file(path, file.name, extract)
        dropped_chunks += _store_file(version, attempt, entry, report, tokenizer, chunking, seen_documents, seen_chunks)
        CorpusVersion.objects.filter(pk=version.pk, attempt=attempt).update(
            files_done=done, lease_expires_at=timezone.now() + timedelta(seconds=settings.INGEST_LEASE_SECONDS)
        )
    if not Document.objects.filter(version=version).exists():
        _finish(
            version,
            attempt,
            CorpusVersion.Status.FAILED,
            error="No file gave any usable text: see each file's verdict.",
        )
        return
    _split_and_stats(version, attempt, dropped_chunks, time.perf_counter() - started)


def _hold(version: CorpusVersion, attempt: int) -> None:
    """Inside a transaction: lock the version row and check this attempt still holds it."""
    current = CorpusVersion.objects.select_for_update().filter(pk=version.pk).values_list("attempt", "status").first()
    if current is None or current[0] != attempt or current[1] != CorpusVersion.Status.INGESTING:
        raise LostClaim


def _store_file(
    version: CorpusVersion,
    attempt: int,
    entry: VersionFile,
    report: FileReport,
    tokenizer: Any,
    chunking: ChunkingConfig,
    seen_documents: dict[bytes, str],
    seen_chunks: set[bytes],
) -> int:
    """Write one file's documents, chunks and examples and its verdict; returns the duplicate chunks dropped."""
    kept, repeated = [], []
    for document in report.documents:
        text = normalise_text(document.text)
        if not text:
            continue
        key = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if key in seen_documents:
            repeated.append((document.name, seen_documents[key]))
            continue
        seen_documents[key] = document.name
        kept.append((document, text))
    chunked = chunk_documents([text for _, text in kept], tokenizer, chunking) if kept else []
    dropped = 0
    documents: list[Document] = []
    fresh_chunks: list[list[TextChunk]] = []
    examples: list[list[Any]] = []
    for (document, text), chunks in zip(kept, chunked, strict=True):
        fresh = []
        for chunk in chunks:
            digest = hashlib.blake2b(chunk.text.encode(), digest_size=16).digest()
            if digest in seen_chunks:
                dropped += 1
                continue
            seen_chunks.add(digest)
            fresh.append(chunk)
        if not fresh:
            continue
        documents.append(
            Document(
                version=version,
                file=entry.file,
                name=document.name[:1000],
                kind=document.kind,
                characters=len(text),
                tokens=sum(chunk.n_tokens for chunk in fresh),
                chunk_count=len(fresh),
            )
        )
        fresh_chunks.append(fresh)
        examples.append(document.examples)
    chunk_total = sum(len(fresh) for fresh in fresh_chunks)
    with transaction.atomic():
        _hold(version, attempt)
        # One INSERT … RETURNING for the documents gives the ids their chunks point to.
        Document.objects.bulk_create(documents, batch_size=BATCH_ROWS)
        _write_chunks(version, documents, fresh_chunks)
        Example.objects.bulk_create(
            (
                Example(version=version, document=row, kind=e.kind, prompt=e.prompt, response=e.response)
                for row, found in zip(documents, examples, strict=True)
                for e in found
            ),
            batch_size=BATCH_ROWS,
        )
        message = report.message
        if repeated:
            first = repeated[0]
            message += (
                f" {len(repeated)} document(s) repeat earlier ones and were kept once (e.g. {first[0]} = {first[1]})."
            )
        verdict = VersionFile.Verdict(str(report.status))
        if report.status in (FileStatus.OK, FileStatus.PARTIAL) and chunk_total == 0:
            verdict = VersionFile.Verdict.DUPLICATE if repeated or dropped else VersionFile.Verdict.FAILED
            message = message if repeated or dropped else "No text left after cleaning."
        VersionFile.objects.filter(pk=entry.pk).update(
            verdict=verdict,
            message=message.strip()[:1000],
            detected_type=report.detected_type,
            details=report.details,
            members=[_member(member) for member in report.members],
            documents=len(kept),
            chunks=chunk_total,
        )
    return dropped


def _write_chunks(version: CorpusVersion, documents: list[Document], chunks: list[list[TextChunk]]) -> None:
    """Insert the chunk rows: PostgreSQL's COPY (several times faster than INSERTs for megabytes of text),
    bulk INSERTs on SQLite (the embedded single-machine mode)."""
    rows = (
        (version.pk, document.pk, position, chunk.text, chunk.n_tokens, Document.Split.TRAIN)
        for document, fresh in zip(documents, chunks, strict=True)
        for position, chunk in enumerate(fresh)
    )
    if connection.vendor != "postgresql":
        Chunk.objects.bulk_create(
            (Chunk(version_id=v, document_id=d, position=p, text=t, tokens=n, split=s) for v, d, p, t, n, s in rows),
            batch_size=BATCH_ROWS,
        )
        return
    table = Chunk._meta.db_table
    with connection.cursor() as cursor:
        copy_sql = f"COPY {table} (version_id, document_id, position, text, tokens, split) FROM STDIN"
        with cursor.cursor.copy(copy_sql) as copy:
            for row in rows:
                copy.write_row(row)


def _member(report: FileReport) -> dict[str, Any]:
    """A member report as JSON, without its documents (their text lives in the chunks)."""
    data = asdict(report)
    data.pop("documents", None)
    data["status"] = str(report.status)
    data["members"] = [_member(member) for member in report.members]
    return data


def _split_and_stats(version: CorpusVersion, attempt: int, dropped_chunks: int, seconds: float) -> None:
    documents = list(Document.objects.filter(version=version).values_list("pk", "name"))
    # The split key is the document's name (path in the upload): the same files split the same way every time.
    chunks = list(Chunk.objects.filter(version=version).values_list("document_id", "tokens"))
    tokens = [count for _, count in chunks]
    # Weighed by chunks, so the held-out share of the text is about the fraction even with a few uneven files.
    chunk_counts = Counter(document_id for document_id, _ in chunks)
    sizes: Counter[str] = Counter()
    for pk, name in documents:
        sizes[name] += chunk_counts[pk]
    heldout_names = heldout_documents([name for _, name in documents], version.config["heldout_fraction"], sizes=sizes)
    heldout_ids = [pk for pk, name in documents if name in heldout_names]
    sample = list(Chunk.objects.filter(version=version).order_by("?").values_list("text", flat=True)[:200])
    languages = detect_languages(sample)
    with transaction.atomic():
        _hold(version, attempt)
        Document.objects.filter(pk__in=heldout_ids).update(split=Document.Split.HELDOUT)
        Chunk.objects.filter(document_id__in=heldout_ids).update(split=Document.Split.HELDOUT)
        heldout_chunks = Chunk.objects.filter(version=version, split=Document.Split.HELDOUT).count()
        characters = sum(Document.objects.filter(version=version).values_list("characters", flat=True))
        version.stats = {
            "documents": len(documents),
            "heldout_documents": len(heldout_ids),
            "chunks": len(tokens),
            "heldout_chunks": heldout_chunks,
            "tokens": sum(tokens),
            "characters": characters,
            "heldout_share": round(heldout_chunks / len(tokens), 4) if tokens else 0.0,
            "duplicate_chunks_dropped": dropped_chunks,
            "examples": Example.objects.filter(version=version).count(),
            "languages": languages,
            "chunk_length_histogram": [list(bin_) for bin_ in length_histogram(tokens)],
            "seconds": round(seconds, 2),
        }
        CorpusVersion.objects.filter(pk=version.pk).update(stats=version.stats)
    _finish(version, attempt, CorpusVersion.Status.READY)


def _finish(version: CorpusVersion, attempt: int, status: str, *, error: str = "") -> None:
    with transaction.atomic():
        updated = version.fenced(attempt).update(
            status=status, error=error[:2000], finished_at=timezone.now(), lease_expires_at=None
        )
        if not updated:
            return
        corpus = Corpus.objects.select_for_update().get(pk=version.corpus_id)
        newest = corpus.versions.order_by("-number").values_list("pk", flat=True).first()
        if status == CorpusVersion.Status.READY:
            corpus.current_version_id = version.pk
        if newest == version.pk:
            corpus.status = Corpus.Status.READY if status == CorpusVersion.Status.READY else Corpus.Status.FAILED
        corpus.save(update_fields=["current_version", "status", "updated_at"])
        # corpus.ready / corpus.failed to the org's webhooks, sent once this commits.
        webhooks.corpus_ingested(CorpusVersion.objects.select_related("corpus__organization").get(pk=version.pk))


@shared_task(name="distillery.ingest.sweep", time_limit=120, expires=60)
def sweep_corpora() -> dict[str, int]:
    """Beat, every minute: fail stalled uploads; send again ingests whose worker died or whose message was lost."""
    from webapp.corpora.services import sweep_stalled_uploads

    stalled = sweep_stalled_uploads()
    now = timezone.now()
    orphaned = list(
        CorpusVersion.objects.filter(status=CorpusVersion.Status.INGESTING, lease_expires_at__lt=now).values_list(
            "pk", flat=True
        )
    )
    # A queued version normally starts within seconds; one still queued after a lease's time lost its message.
    lost = list(
        CorpusVersion.objects.filter(
            status=CorpusVersion.Status.QUEUED, created_at__lt=now - timedelta(seconds=settings.INGEST_LEASE_SECONDS)
        ).values_list("pk", flat=True)
    )
    for version_id in orphaned + lost:
        ingest_corpus_version.delay(version_id)
    return {"stalled_uploads": stalled, "requeued_ingests": len(orphaned) + len(lost)}
