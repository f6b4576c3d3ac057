"""What extraction found in one uploaded file: the verdict the user sees and the text the pipeline keeps.

A `FileReport` is plain data (dataclasses, JSON-serialisable `details`), so the Celery task can store it as it
is and the corpus page can render it without knowing how each format was read. Archives nest: their report
lists one report per member, and collects every member's documents for the next stages.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

_HASH_BLOCK = 2**20


class FileStatus(StrEnum):
    OK = "ok"
    PARTIAL = "partial"  # usable, but part of the file was skipped (the message says which part)
    FAILED = "failed"  # nothing usable
    DUPLICATE = "duplicate"  # set by the caller, which compares content hashes across files


@dataclass
class Example:
    """A structured training example found in a JSONL file (shown on the corpus page)."""

    prompt: str = field(metadata={"help": "The user's side: user turns joined, a prompt or a question."})
    response: str = field(metadata={"help": "The expected answer: last assistant turn, completion or answer."})
    kind: str = field(metadata={"help": "Where it came from: 'messages', 'prompt_completion' or 'question_answer'."})


@dataclass
class ExtractedDocument:
    """The text of one document, ready for normalisation and chunking."""

    name: str = field(metadata={"help": "Display path: the file name, or 'archive.zip/folder/file.md'."})
    text: str = field(metadata={"help": "Extracted text, paragraphs separated by blank lines; not yet normalised."})
    kind: str = field(metadata={"help": "Format it came from: text, markdown, html, pdf, docx, jsonl or csv."})
    examples: list[Example] = field(
        default_factory=list, metadata={"help": "Structured examples (JSONL conversations and pairs)."}
    )


@dataclass
class FileReport:
    """The verdict on one file (or archive member) and what was kept from it."""

    name: str = field(metadata={"help": "Display path of the file."})
    detected_type: str = field(
        metadata={
            "help": "text, markdown, html, pdf, docx, jsonl, csv, zip, empty, binary or unknown: judged by content."
        }
    )
    status: FileStatus = field(metadata={"help": "ok, partial, failed (duplicate is the caller's verdict)."})
    message: str = field(metadata={"help": "One or two plain sentences for the user."})
    documents: list[ExtractedDocument] = field(
        default_factory=list, metadata={"help": "Documents kept; for archives, every member's, flattened."}
    )
    details: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "JSON-serialisable facts: pages, encoding, records, columns, ..."}
    )
    members: list[FileReport] = field(
        default_factory=list, metadata={"help": "Archives only: one report per member, nested archives nest."}
    )

    @property
    def usable(self) -> bool:
        return self.status in (FileStatus.OK, FileStatus.PARTIAL) and bool(self.documents)


def failed(name: str, detected_type: str, message: str, **details: Any) -> FileReport:
    return FileReport(
        name=name, detected_type=detected_type, status=FileStatus.FAILED, message=message, details=details
    )


def content_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks: the caller compares these to spot duplicate uploads."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
