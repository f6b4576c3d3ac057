from __future__ import annotations

import pytest

from tests.workers.ml.ingest.files import pdf_bytes, zip_bytes
from workers.ml.ingest.sniff import sniff


@pytest.mark.parametrize(
    ("head", "name", "expected"),
    [
        (b"", "anything.pdf", "empty"),
        (b"%PDF-1.7\n...", "report.pdf", "pdf"),
        (b"%PDF-1.7\n...", "report.txt", "pdf"),  # content beats the name
        (b"PK\x03\x04rest", "bundle.zip", "zip"),
        (b"PK\x05\x06" + bytes(18), "empty.zip", "zip"),  # an empty archive's only record
        (b"PK\x03\x04rest", "letter.docx", "docx"),
        (b"PK\x03\x04rest", "letter.DOCX", "docx"),
        (b"PK\x03\x04rest", "sheet.xlsx", "unknown"),
        (b"PK\x03\x04rest", "no-extension", "zip"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "image.txt", "binary"),
        (b"text with a NUL \x00 byte", "notes.txt", "binary"),
        (b"# Title\n", "readme.md", "markdown"),
        (b"# Title\n", "readme.markdown", "markdown"),
        (b"<p>hi</p>", "page.htm", "html"),
        (b"<p>hi</p>", "page.html", "html"),
        (b"  <!DOCTYPE html><html>", "page.txt", "html"),
        (b"<HTML><body>", "export", "html"),
        (b'{"text": "x"}\n', "data.jsonl", "jsonl"),
        (b'{"text": "x"}\n', "data.ndjson", "jsonl"),
        (b"a,b\n1,2\n", "table.csv", "csv"),
        (b"plain words", "notes.txt", "text"),
        (b"def f(): pass\n", "script.py", "text"),
        ("caf\u00e9 cr\u00e8me".encode("cp1252"), "legacy.txt", "text"),
        ("text".encode("utf-16"), "wide.txt", "text"),  # NUL bytes, but a UTF-16 byte-order mark
    ],
)
def test_it_detects_the_type_from_content_first_then_the_name(head: bytes, name: str, expected: str) -> None:
    assert sniff(head, name) == expected


def test_it_accepts_a_head_cut_inside_a_multibyte_character() -> None:
    head = "é".encode() * 100
    assert sniff(head[:-1], "notes.txt") == "text"


def test_it_recognises_real_files_by_their_magic_bytes() -> None:
    assert sniff(pdf_bytes(["x"])[:8192], "x.bin") == "pdf"
    assert sniff(zip_bytes({"a.txt": b"a"})[:8192], "x.bin") == "zip"
