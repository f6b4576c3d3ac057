"""Corpus ingest: uploaded files in, deduplicated token-sized chunks with a train / held-out split out.

Pure Python (no Django, no Celery: ruff bans them here); the Celery task drives it and the Django app stores
what it returns. The pipeline, in order:

1. extract (`extract_file`): one `FileReport` per uploaded file: a verdict the user can act on (status and
   one clear message), JSON-serialisable details, and the `ExtractedDocument`s found. Type judged by content
   (`sniff`); text, Markdown, HTML, PDF, Word, JSONL, CSV and ZIP archives (read safely, nested up to a depth).
   Never raises for bad input.
2. normalise (`normalise_text`): NFC, clean line breaks and spaces, one blank line between paragraphs.
3. chunk (`chunk_documents`): whole paragraphs packed into chunks of the student tokenizer's tokens, with
   overlap; one batched tokenizer call for the whole corpus.
4. drop duplicate chunks (`drop_duplicate_chunks`): exact repeats across the corpus kept once.
5. split (`heldout_documents`): whole documents held out, deterministically.
6. stats (`length_histogram`, `detect_languages`): for the corpus page.

The caller's part: hash every uploaded file (`content_sha256`) and mark repeats as `FileStatus.DUPLICATE`
before extracting them; choose the CSV text column (`csv_columns` proposes one); store reports, documents and
chunks; and decide what a document's key is for the split (its display name is a good one).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names resolve on first use (PEP 562): the web process imports `workers.ml.ingest.sniff` to judge an upload's
# type, and an eager package import would load every extractor, the tokenizer code and the language model into
# it as well (about 0.4 s, and tens of MB it never uses).
_WHERE = {
    "ChunkingConfig": "chunking",
    "TextChunk": "chunking",
    "chunk_document": "chunking",
    "chunk_documents": "chunking",
    "drop_duplicate_chunks": "chunking",
    "ExtractOptions": "extract",
    "extract_file": "extract",
    "IngestLimits": "limits",
    "normalise_text": "normalise",
    "Example": "report",
    "ExtractedDocument": "report",
    "FileReport": "report",
    "FileStatus": "report",
    "content_sha256": "report",
    "csv_columns": "sniff",
    "sniff": "sniff",
    "heldout_documents": "split",
    "detect_languages": "stats",
    "length_histogram": "stats",
}

__all__ = [
    "ChunkingConfig",
    "Example",
    "ExtractOptions",
    "ExtractedDocument",
    "FileReport",
    "FileStatus",
    "IngestLimits",
    "TextChunk",
    "chunk_document",
    "chunk_documents",
    "content_sha256",
    "csv_columns",
    "detect_languages",
    "drop_duplicate_chunks",
    "extract_file",
    "heldout_documents",
    "length_histogram",
    "normalise_text",
    "sniff",
]

if TYPE_CHECKING:
    from workers.ml.ingest.chunking import (
        ChunkingConfig,
        TextChunk,
        chunk_document,
        chunk_documents,
        drop_duplicate_chunks,
    )
    from workers.ml.ingest.extract import ExtractOptions, extract_file
    from workers.ml.ingest.limits import IngestLimits
    from workers.ml.ingest.normalise import normalise_text
    from workers.ml.ingest.report import Example, ExtractedDocument, FileReport, FileStatus, content_sha256
    from workers.ml.ingest.sniff import csv_columns, sniff
    from workers.ml.ingest.split import heldout_documents
    from workers.ml.ingest.stats import detect_languages, length_histogram


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
