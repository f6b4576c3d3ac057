"""What the corpus page shows, gathered in one place for the full page, the htmx panel and the API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from webapp.core.times import unix_time
from webapp.corpora.models import Chunk, Corpus, CorpusFile, CorpusVersion, VersionFile
from webapp.corpora.services import ACCEPTED_SUFFIXES, Limits

HISTOGRAM_WIDTH, HISTOGRAM_HEIGHT = 480, 120


@dataclass
class FileRow:
    file: CorpusFile
    entry: VersionFile | None

    @property
    def verdict(self) -> str:
        """The status the table shows: the upload's until an ingest judged the file, then the ingest's."""
        if self.file.status != CorpusFile.Status.STORED or self.entry is None:
            return "stalled" if self.file.is_stalled else self.file.status
        return self.entry.verdict

    @property
    def message(self) -> str:
        if self.file.status != CorpusFile.Status.STORED or self.entry is None:
            if self.file.is_stalled:
                return "The upload stopped before the whole file arrived; send it again."
            return self.file.message
        return self.entry.message


def file_json(file: CorpusFile) -> dict[str, Any]:
    return {
        "id": file.pk,
        "name": file.name,
        "status": file.status,
        "message": file.message,
        "size": file.size,
        "declared_size": file.declared_size,
        "sha256": file.sha256 or None,
        "detected_type": file.detected_type or None,
        "csv_columns": file.facts.get("columns"),
        "csv_text_column": file.options.get("csv_text_column") or file.facts.get("proposed_text_column"),
    }


def version_json(version: CorpusVersion) -> dict[str, Any]:
    return {
        "number": version.number,
        "status": version.status,
        "files_done": version.files_done,
        "files_total": version.files_total,
        "error": version.error or None,
        "stats": version.stats,
        "created_at": unix_time(version.created_at),
        "finished_at": unix_time(version.finished_at),
        "files": [
            {
                "id": entry.file_id,
                "name": entry.file.name,
                "verdict": entry.verdict,
                "message": entry.message,
                "detected_type": entry.detected_type,
                "details": entry.details,
                "members": entry.members,
                "documents": entry.documents,
                "chunks": entry.chunks,
            }
            for entry in version.version_files.select_related("file")
        ],
    }


def histogram_bars(histogram: list[list[int]]) -> list[dict[str, Any]]:
    """SVG rectangles for the chunk-length histogram (the picture on the corpus page)."""
    if not histogram:
        return []
    tallest = max(count for _, _, count in histogram) or 1
    width = HISTOGRAM_WIDTH / len(histogram)
    bars = []
    for index, (low, high, count) in enumerate(histogram):
        height = round(HISTOGRAM_HEIGHT * count / tallest, 1)
        bars.append(
            {
                "x": round(index * width, 1),
                "y": round(HISTOGRAM_HEIGHT - height, 1),
                "width": round(width - 1, 1),
                "height": height,
                "label": f"{low}–{high} tokens: {count} chunks",
            }
        )
    return bars


def version_number(value: str | None) -> int | None:
    """A `?version=` value as a version number, or None: str.isdigit() alone also takes "²", which int() refuses."""
    if value and value.isascii() and value.isdigit() and len(value) <= 9:
        return int(value)
    return None


def corpus_context(corpus: Corpus, requested_version: str | None) -> dict[str, Any]:
    versions = list(corpus.versions.all())
    latest = versions[0] if versions else None
    shown = corpus.current_version or latest
    number = version_number(requested_version)
    if number is not None:
        shown = next((v for v in versions if v.number == number), shown)
    # The per-file table: the working set with the newest version's verdict for each file.
    entries = {}
    if latest is not None:
        entries = {entry.file_id: entry for entry in VersionFile.objects.filter(version=latest)}
    files = [FileRow(file, entries.get(file.pk)) for file in corpus.live_files.select_related("duplicate_of")]
    stats = shown.stats if shown is not None else {}
    busy = (latest is not None and latest.is_active) or any(row.file.status == "uploading" for row in files)
    return {
        "corpus": corpus,
        "limits": Limits.for_corpus(corpus),
        "accepted": ", ".join(ACCEPTED_SUFFIXES),
        "files": files,
        "versions": versions,
        "latest": latest,
        "shown": shown,
        "stats": stats,
        "histogram": histogram_bars(stats.get("chunk_length_histogram", [])),
        "histogram_size": (HISTOGRAM_WIDTH, HISTOGRAM_HEIGHT),
        "sample": Chunk.objects.filter(version=shown).select_related("document")[:5] if shown else [],
        "examples": shown.examples.select_related("document")[:5] if shown else [],
        "busy": busy,
        "changed": corpus.has_unversioned_changes(),
        "blocking": corpus.blocking_jobs(),
    }
