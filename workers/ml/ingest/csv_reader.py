"""CSV: one column holds the text; each non-empty cell becomes a paragraph of one document.

The dialect comes from `csv.Sniffer` (semicolons are common in European exports, tabs in spreadsheets'
"CSV"), falling back to Excel's comma dialect when it cannot tell. The first row is the header. Which column
holds the text is the user's choice on the upload page; until they choose, we propose one: a column named
like text/body/content, else the column with the longest values (ids, dates and numbers are short).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from itertools import islice
from typing import Any

from workers.ml.ingest import messages
from workers.ml.ingest.messages import plural
from workers.ml.ingest.options import ExtractOptions
from workers.ml.ingest.report import ExtractedDocument, FileReport, FileStatus, failed
from workers.ml.ingest.text_reader import decode_text

# The csv module refuses fields over 128 KiB by default; a long article in one cell is normal here. The limit
# is process-wide (the module has no per-reader setting); raising it harms no other reader.
csv.field_size_limit(2**31 - 1)

PROPOSAL_ROWS = 200
PREFERRED_COLUMNS = ("text", "body", "content")
_DIALECT_SAMPLE_CHARS = 65536
_DELIMITERS = ",;\t|"


def sniff_dialect(text: str) -> type[csv.Dialect] | csv.Dialect:
    """The sniffer's dialect when it decides; else the delimiter giving the most columns, consistently."""
    sample = text[:_DIALECT_SAMPLE_CHARS]
    if len(text) > len(sample) and "\n" in sample:
        sample = sample[: sample.rindex("\n")]  # whole lines only: a cut row would confuse the sniffer
    try:
        sniffed: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=_DELIMITERS)
    except csv.Error:
        sniffed = csv.excel  # small samples and multi-line cells often defeat it
    # The sniffer can also settle on a character of the prose: when a delimiter splits the rows into more
    # columns, every row the same, that one wins.
    best, best_width = sniffed, _consistent_width(sample, sniffed)
    for delimiter in _DELIMITERS:
        candidate = type("Candidate", (csv.excel,), {"delimiter": delimiter})
        width = _consistent_width(sample, candidate)
        if width > best_width:
            best, best_width = candidate, width
    return best


def _consistent_width(sample: str, dialect: type[csv.Dialect] | csv.Dialect) -> int:
    """Columns per row when (nearly) all sampled rows agree on it, else 0; 0 also for a single column."""
    try:
        widths = [len(row) for row in islice(csv.reader(io.StringIO(sample, newline=""), dialect), 50) if row]
    except csv.Error:
        return 0
    if not widths or widths[0] < 2:
        return 0
    agreeing = sum(width == widths[0] for width in widths)
    return widths[0] if agreeing >= 0.9 * len(widths) else 0


def _is_number(value: str) -> bool:
    try:
        float(value.replace(",", ""))
    except ValueError:
        return False
    return True


def propose_text_column(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str | None:
    """A preferred name (text/body/content) holding text, else the column with the longest average value."""
    sample = list(islice(rows, PROPOSAL_ROWS))
    if not header or not sample:
        return None
    averages: list[float] = []
    for index in range(len(header)):
        values = [row[index].strip() if index < len(row) else "" for row in sample]
        filled = [value for value in values if value]
        # Numbers are never the text, however long: 16-digit ids would otherwise beat short answers.
        textual = filled and not all(_is_number(value) for value in filled)
        averages.append(sum(map(len, values)) / len(values) if textual else 0.0)
    lowered = [name.strip().lower() for name in header]
    for preferred in PREFERRED_COLUMNS:
        if preferred in lowered and averages[lowered.index(preferred)] > 0:
            return header[lowered.index(preferred)]
    best = max(range(len(header)), key=lambda index: averages[index])
    return header[best] if averages[best] > 0 else None


def _rows(text: str) -> tuple[list[str], Any]:
    """The header (first non-blank row) and the reader positioned on the first data row."""
    reader = csv.reader(io.StringIO(text, newline=""), sniff_dialect(text))
    header = [name.strip() for name in next((row for row in reader if row), [])]
    return header, reader


def columns_of(sample: bytes, complete: bool) -> tuple[list[str], str | None]:
    """Header and proposed text column from the start of a CSV (`complete`: the sample is the whole file)."""
    if not complete and b"\n" in sample:
        sample = sample[: sample.rindex(b"\n")]  # a cut row (or a cut multi-byte character) is not data
    decoded = decode_text(sample)
    if decoded is None:
        return [], None
    header, reader = _rows(decoded[0])
    data_rows = (row for row in reader if row)
    return header, propose_text_column(header, data_rows)


def read_csv(data: bytes, name: str, detected_type: str, options: ExtractOptions) -> FileReport:
    decoded = decode_text(data)
    if decoded is None:
        return failed(name, "binary", messages.NO_ENCODING)
    text, encoding = decoded
    if not text.strip():
        return failed(name, "empty", messages.EMPTY)
    header, reader = _rows(text)
    rows: list[list[str]] = []
    try:
        rows = [row for row in reader if row]  # csv yields [] for blank lines: not rows at all
    except csv.Error as error:
        return failed(name, "csv", messages.UNREADABLE.format(reason=f"line {reader.line_num}: {error}"))
    column = options.csv_text_column or propose_text_column(header, rows)
    details = {"encoding": encoding, "columns": header, "text_column": column, "rows": len(rows)}
    if not rows:
        return failed(name, "csv", messages.CSV_NO_ROWS, **details)
    if column is None:
        return failed(name, "csv", messages.CSV_NO_TEXT_COLUMN.format(columns=", ".join(header)), **details)
    if column not in header:
        columns = ", ".join(header)
        return failed(name, "csv", messages.CSV_MISSING_COLUMN.format(column=column, columns=columns), **details)
    index = header.index(column)
    cells = (row[index].strip() if index < len(row) else "" for row in rows)
    paragraphs = [cell for cell in cells if cell]
    empty_rows = len(rows) - len(paragraphs)
    details["empty_rows"] = empty_rows
    if not paragraphs:
        return failed(name, "csv", messages.CSV_EMPTY_COLUMN.format(column=column), **details)
    kept = plural(len(paragraphs), "row")
    message = (
        messages.CSV_OK_WITH_EMPTY.format(rows=kept, column=column, empty=plural(empty_rows, "empty row"))
        if empty_rows
        else messages.CSV_OK.format(rows=kept, column=column)
    )
    return FileReport(
        name=name,
        detected_type="csv",
        status=FileStatus.OK,
        message=message,
        documents=[ExtractedDocument(name=name, text="\n\n".join(paragraphs), kind="csv")],
        details=details,
    )
