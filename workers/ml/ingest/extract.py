"""Extraction: one uploaded file in, one `FileReport` out, whatever the file holds.

`extract_file` never raises for bad input: every problem becomes a FAILED report whose message tells the
user what to do; a broad catch at the top turns anything unforeseen into "Could not read this file: ...".
The type is judged by content (`sniff`), the name only choosing among text formats, and a name promising a
binary format the content does not have (a .pdf that is text) is refused rather than read as something else.
Archive members go through the same dispatch (`archive` calls back into `_extract_member`), so a file inside a
ZIP gets exactly the verdict it would get uploaded on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from workers.ml.ingest import messages
from workers.ml.ingest.archive import ArchiveBudget, read_archive
from workers.ml.ingest.csv_reader import read_csv
from workers.ml.ingest.docx_reader import read_docx
from workers.ml.ingest.html_reader import read_html
from workers.ml.ingest.jsonl_reader import read_jsonl
from workers.ml.ingest.messages import human_bytes
from workers.ml.ingest.options import ExtractOptions
from workers.ml.ingest.pdf_reader import read_pdf
from workers.ml.ingest.report import FileReport, failed
from workers.ml.ingest.sniff import HEAD_BYTES, sniff, suffix_of
from workers.ml.ingest.text_reader import read_text

__all__ = ["ExtractOptions", "extract_file"]

Reader = Callable[[bytes, str, str, ExtractOptions], FileReport]

READERS: dict[str, Reader] = {
    "text": read_text,
    "markdown": read_text,
    "html": read_html,
    "pdf": read_pdf,
    "docx": read_docx,
    "jsonl": read_jsonl,
    "csv": read_csv,
}

_TEXT_TYPES = ("text", "markdown", "html", "jsonl", "csv")

# Names that promise a binary format: content that is something else is refused, not read as that.
_PROMISED = {
    ".pdf": ("pdf", messages.NOT_A_PDF),
    ".docx": ("docx", messages.NOT_A_DOCX),
    ".zip": ("zip", messages.NOT_A_ZIP),
}


def extract_file(path: Path, name: str, options: ExtractOptions | None = None) -> FileReport:
    """Read one uploaded file (`name`: its display name, whose extension counts) into a report."""
    options = options or ExtractOptions()
    try:
        size = path.stat().st_size
        limit = options.limits.max_file_bytes
        if size > limit:
            return failed(name, "unknown", messages.TOO_LARGE.format(size=human_bytes(size), limit=human_bytes(limit)))
        with path.open("rb") as handle:
            head = handle.read(HEAD_BYTES)
        detected = sniff(head, name)
        if detected == "zip" and _broken_promise(detected, name) is None:
            # Opened from disk: the archive is never loaded whole, only its members, one at a time.
            return read_archive(path, name, options, _member_extractor(options))
        return _extract_bytes(path.read_bytes(), name, options, depth=0, budget=None)
    except Exception as error:  # the last resort: an unforeseen failure is still a verdict, not a crash
        return failed(name, "unknown", messages.UNREADABLE.format(reason=_short_reason(error)))


def _member_extractor(options: ExtractOptions) -> Callable[[bytes, str, int, ArchiveBudget], FileReport]:
    def extract_member(data: bytes, name: str, depth: int, budget: ArchiveBudget) -> FileReport:
        try:
            return _extract_bytes(data, name, options, depth, budget)
        except Exception as error:  # one member's surprise must not lose the rest of the archive
            return failed(name, "unknown", messages.UNREADABLE.format(reason=_short_reason(error)))

    return extract_member


def _extract_bytes(
    data: bytes, name: str, options: ExtractOptions, depth: int, budget: ArchiveBudget | None
) -> FileReport:
    """`depth`: nesting depth of the archive holding this file (0: not in an archive)."""
    detected = sniff(data[:HEAD_BYTES], name)
    if detected == "empty" or (detected in _TEXT_TYPES and not data.strip()):
        return failed(name, "empty", messages.EMPTY)
    broken = _broken_promise(detected, name)
    if broken is not None:
        return broken
    if detected == "zip":
        if depth + 1 > options.limits.max_archive_depth:
            return failed(name, "zip", messages.NESTED_TOO_DEEP.format(depth=options.limits.max_archive_depth))
        return read_archive(data, name, options, _member_extractor(options), depth + 1, budget)
    if detected == "unknown":
        return failed(name, "unknown", messages.UNSUPPORTED_CONTAINER.format(suffix=suffix_of(name)))
    if detected == "binary":
        return failed(name, "binary", messages.UNSUPPORTED_BINARY)
    return READERS[detected](data, name, detected, options)


def _broken_promise(detected: str, name: str) -> FileReport | None:
    """A refusal when the name promises a binary format (.pdf, .docx, .zip) the content does not have."""
    promised = _PROMISED.get(suffix_of(name))
    if promised is None or detected == promised[0]:
        return None
    return failed(name, detected, promised[1])


def _short_reason(error: Exception) -> str:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return reason.rstrip(".")[:200]
