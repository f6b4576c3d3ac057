"""Word (.docx): body paragraphs and tables, in document order.

A .docx is a ZIP of XML parts; python-docx parses `word/document.xml` into memory, so the ZIP's own sizes are
checked first with the archive limits (zipfile never inflates a member past the size its header declares, so
the declared sizes bound the work). Table rows become lines with cells joined by " | ", one table per
paragraph; merged cells, which python-docx repeats once per grid column, are kept once. Headers, footers and
comments are not body text and are left out.
"""

from __future__ import annotations

import io
import zipfile

import docx
from docx.table import Table
from docx.text.paragraph import Paragraph

from workers.ml.ingest import messages
from workers.ml.ingest.messages import human_bytes, plural
from workers.ml.ingest.options import ExtractOptions
from workers.ml.ingest.report import ExtractedDocument, FileReport, FileStatus, failed

_MAIN_PART = "word/document.xml"


def _package_problem(data: bytes, options: ExtractOptions) -> str | None:
    """Why this is not a .docx we can safely parse, or None."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as package:
            infos = package.infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return messages.NOT_A_DOCX
    if _MAIN_PART not in {info.filename for info in infos}:
        return messages.NOT_A_DOCX
    limits = options.limits
    total = sum(info.file_size for info in infos)
    if total > limits.max_file_bytes:
        return messages.TOO_LARGE.format(size=human_bytes(total), limit=human_bytes(limits.max_file_bytes))
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= limits.min_ratio_check_bytes and ratio > limits.max_archive_ratio:
            return messages.MEMBER_BOMB.format(ratio=ratio, limit=limits.max_archive_ratio)
    return None


def _table_text(table: Table) -> str:
    lines = []
    for row in table.rows:
        seen: set[int] = set()
        cells = []
        for cell in row.cells:
            if id(cell._tc) in seen:  # a merged cell, repeated for each grid column it spans
                continue
            seen.add(id(cell._tc))
            if text := cell.text.strip():
                cells.append(text)
        if cells:
            lines.append(" | ".join(cells))
    return "\n".join(lines)


def read_docx(data: bytes, name: str, detected_type: str, options: ExtractOptions) -> FileReport:
    problem = _package_problem(data, options)
    if problem is not None:
        return failed(name, detected_type, problem)
    paragraphs: list[str] = []
    paragraph_count = table_count = 0
    try:
        document = docx.Document(io.BytesIO(data))
        for block in document.iter_inner_content():
            if isinstance(block, Paragraph) and (text := block.text.strip()):
                paragraphs.append(text)
                paragraph_count += 1
            elif isinstance(block, Table) and (text := _table_text(block)):
                paragraphs.append(text)
                table_count += 1
    except Exception:  # python-docx and lxml raise KeyError, ValueError, XMLSyntaxError ... on damaged parts
        return failed(name, "docx", messages.DOCX_DAMAGED)
    details = {"paragraphs": paragraph_count, "tables": table_count}
    if not paragraphs:
        return failed(name, "docx", messages.DOCX_NO_TEXT, **details)
    counted = plural(paragraph_count, "paragraph")
    message = (
        messages.DOCX_OK_WITH_TABLES.format(paragraphs=counted, tables=plural(table_count, "table"))
        if table_count
        else messages.DOCX_OK.format(paragraphs=counted)
    )
    return FileReport(
        name=name,
        detected_type="docx",
        status=FileStatus.OK,
        message=message,
        documents=[ExtractedDocument(name=name, text="\n\n".join(paragraphs), kind="docx")],
        details=details,
    )
