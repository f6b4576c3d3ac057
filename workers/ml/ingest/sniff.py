"""What a file is, judged by its content first and its name second.

Magic bytes cannot lie the way names do: a PDF renamed .txt is read as a PDF, and PNG bytes named .txt are
binary. Among text formats the content rarely decides (Markdown, CSV and plain text are all just text), so
there the extension chooses; HTML is also recognised by its opening tag. A .docx is a ZIP by its magic
bytes: the name says which, and extraction checks that `word/document.xml` really exists.
"""

from __future__ import annotations

import codecs
from pathlib import Path, PurePosixPath

from charset_normalizer import from_bytes

from workers.ml.ingest import csv_reader
from workers.ml.ingest.text_reader import bom_encoding

HEAD_BYTES = 8192  # what callers read for `sniff`: enough for magic bytes and a fair text sample

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# ZIP containers of formats we do not read: without this they would be unpacked as archives of XML.
_OTHER_ZIP_CONTAINERS = {".xlsx", ".pptx", ".odt", ".ods", ".odp", ".epub", ".jar", ".apk", ".whl", ".xpi"}
_TEXT_SUFFIXES = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
}
_CSV_SAMPLE_BYTES = 2**20


def suffix_of(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).suffix.lower()


def looks_textual(head: bytes) -> bool:
    """True when the head decodes as text: no NUL bytes (outside UTF-16/32), and some encoding fits."""
    if bom_encoding(head) is not None:
        return True
    if b"\x00" in head:
        return False
    # The head may end inside a multi-byte character: an incremental decoder does not count that as an error.
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        return True
    except UnicodeDecodeError:
        return from_bytes(head).best() is not None


def sniff(head: bytes, name: str) -> str:
    """The detected type of a file from its first bytes (see HEAD_BYTES) and its name."""
    suffix = suffix_of(name)
    if not head:
        return "empty"
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(_ZIP_MAGIC):
        if suffix == ".docx":
            return "docx"
        return "unknown" if suffix in _OTHER_ZIP_CONTAINERS else "zip"
    if not looks_textual(head):
        return "binary"
    if suffix in _TEXT_SUFFIXES:
        return _TEXT_SUFFIXES[suffix]
    opening = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:64].lower()
    if opening.startswith((b"<!doctype html", b"<html")):
        return "html"
    return "text"


def csv_columns(path: Path) -> tuple[list[str], str | None]:
    """The CSV's header columns and the proposed text column (None when no column holds text).

    Reads the first megabyte only: enough for the header and the ~200 rows the proposal looks at.
    """
    with path.open("rb") as handle:
        sample = handle.read(_CSV_SAMPLE_BYTES)
        complete = not handle.read(1)
    return csv_reader.columns_of(sample, complete)
