"""Every verdict the ingest pipeline can give a user, in one place.

The corpus page shows these sentences as they are, and the tests assert them word for word: a change of
wording happens here and nowhere else. Templates take `str.format` fields.
"""

from __future__ import annotations

SUPPORTED = ".txt, .md, .html, .pdf, .docx, .jsonl, .csv or .zip"

# ---------------------------------------------------------------- any file
EMPTY = "The file is empty."
UNREADABLE = "Could not read this file: {reason}."
TOO_LARGE = "The file is too large ({size}; the limit is {limit})."
UNSUPPORTED_BINARY = f"Unsupported file type (binary data): upload {SUPPORTED}."
UNSUPPORTED_CONTAINER = f"Unsupported file type ({{suffix}}): upload {SUPPORTED}."

# ---------------------------------------------------------------- plain text and markdown
NO_ENCODING = "Could not detect a text encoding: the file looks like binary data."
TEXT_OK = "Read {chars} characters of text ({encoding})."

# ---------------------------------------------------------------- HTML
HTML_OK = "Extracted {chars} characters of page text (scripts and styles removed)."
HTML_NO_TEXT = "The HTML page has no visible text."

# ---------------------------------------------------------------- PDF
NOT_A_PDF = "The file is named .pdf but is not a PDF."
PDF_ENCRYPTED = "The PDF is encrypted: remove the password and upload it again."
PDF_DAMAGED = "The PDF is damaged and could not be read."
PDF_NO_TEXT = "The PDF has no text layer (scanned pages?): it needs OCR before upload."
PDF_OK = "Extracted text from {pages}."
PDF_PARTIAL = "No text on {empty} of {pages} (scanned?): kept the text of the other {kept}."

# ---------------------------------------------------------------- Word
NOT_A_DOCX = "The file is named .docx but is not a Word document."
DOCX_DAMAGED = "The Word document is damaged and could not be read."
DOCX_NO_TEXT = "The Word document has no text."
DOCX_OK = "Extracted {paragraphs}."
DOCX_OK_WITH_TABLES = "Extracted {paragraphs} and {tables}."

# ---------------------------------------------------------------- JSONL
JSONL_OK = "Kept {records} ({label})."
JSONL_PARTIAL = "Skipped {skipped} ({lines}); kept {records} ({label})."
JSONL_ALL_BROKEN = "No usable record in {skipped}: every line is broken ({lines})."
JSONL_NO_FORMAT = (
    "No record has a 'text', 'messages', 'prompt'/'completion' or 'question'/'answer' field: "
    "cannot tell what to train on."
)
JSONL_LABELS = {
    "text": "text records",
    "messages": "conversations",
    "prompt_completion": "prompt/completion pairs",
    "question_answer": "question/answer pairs",
}

# ---------------------------------------------------------------- CSV
CSV_MISSING_COLUMN = "The CSV has no column named '{column}' (columns: {columns})."
CSV_NO_ROWS = "The CSV has a header but no rows."
CSV_NO_TEXT_COLUMN = "No column of the CSV holds text (columns: {columns})."
CSV_EMPTY_COLUMN = "The column '{column}' is empty in every row."
CSV_OK = "Kept {rows} of column '{column}'."
CSV_OK_WITH_EMPTY = "Kept {rows} of column '{column}'; skipped {empty}."

# ---------------------------------------------------------------- ZIP archives and their members
NOT_A_ZIP = "The file is named .zip but is not a ZIP archive."
ARCHIVE_DAMAGED = "The ZIP archive is damaged and could not be read."
ARCHIVE_NO_FILES = "The archive contains no files."
ARCHIVE_TOO_MANY = "The archive lists {members} files, more than the limit of {limit}: split it into smaller archives."
ARCHIVE_OK = "Read {files} from the archive."
ARCHIVE_PARTIAL = "Kept {usable} of {files}; {failed} could not be used (see below)."
ARCHIVE_PARTIAL_MEMBERS = "Read {files} from the archive, {partial} of them only in part (see below)."
ARCHIVE_NONE_USABLE = "None of the {files} in the archive could be used (see below)."
ARCHIVE_STOPPED = " Stopped reading at '{member}': the archive holds more than {limit} uncompressed; {unread} not read."
MEMBER_TRAVERSAL = "Refused: the path leads outside the archive ('..')."
MEMBER_ABSOLUTE = "Refused: the path inside the archive is absolute."
MEMBER_SYMLINK = "Refused: the archive entry is a symbolic link."
MEMBER_DAMAGED = "Could not read this file: it is damaged inside the archive ({reason})."
MEMBER_ENCRYPTED = "The file is encrypted inside the archive: upload an archive without a password."
MEMBER_BOMB = "Refused: it inflates {ratio:.0f} times its compressed size (limit {limit:.0f}): a likely zip bomb."
MEMBER_TOTAL_EXCEEDED = "Not read: the archive's files together exceed {limit} uncompressed."
NESTED_TOO_DEEP = "Nested archive deeper than {depth} levels: unpack it and upload its files."


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """'1 page', '3 pages': verdicts read as sentences, never as '1 page(s)'."""
    return f"{count} {noun if count == 1 else (plural_noun or noun + 's')}"


def line_list(numbers: list[int], total: int) -> str:
    """'3, 7' or '3, 7, … (first 20 of 31)': the first line numbers of a longer list."""
    listed = ", ".join(str(number) for number in numbers)
    return listed if total <= len(numbers) else f"{listed}, … (first {len(numbers)} of {total})"


def human_bytes(size: int) -> str:
    """Sizes as people read them: '300 bytes', '20 KB', '1.5 GB' (binary multiples)."""
    if size < 1024:
        return plural(size, "byte")
    value, unit = size / 1024, "KB"
    for larger in ("MB", "GB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
