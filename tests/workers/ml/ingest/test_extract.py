from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from tests.workers.ml.ingest.files import docx_bytes, pdf_bytes, write, zip_bytes
from workers.ml.ingest import extract
from workers.ml.ingest.extract import ExtractOptions, extract_file
from workers.ml.ingest.limits import IngestLimits
from workers.ml.ingest.report import FileReport, FileStatus

UNSUPPORTED = "Unsupported file type (binary data): upload .txt, .md, .html, .pdf, .docx, .jsonl, .csv or .zip."
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + bytes(64)


@pytest.mark.parametrize(("name", "data"), [("photo.txt", PNG), ("setup.exe", EXE), ("notes.md", EXE)])
def test_it_refuses_binary_data_by_content_whatever_the_name(tmp_path: Path, name: str, data: bytes) -> None:
    report = extract_file(write(tmp_path, name, data), name)
    assert report.status == FileStatus.FAILED
    assert report.detected_type == "binary"
    assert report.message == UNSUPPORTED
    assert report.documents == []


def test_it_refuses_an_empty_file(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "nothing.pdf", b""), "nothing.pdf")
    assert report.status == FileStatus.FAILED
    assert report.detected_type == "empty"
    assert report.message == "The file is empty."


def test_it_refuses_a_zip_container_format_it_does_not_read(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "sheet.xlsx", zip_bytes({"xl/workbook.xml": b"<x/>"})), "sheet.xlsx")
    assert report.status == FileStatus.FAILED
    assert (
        report.message == "Unsupported file type (.xlsx): upload .txt, .md, .html, .pdf, .docx, .jsonl, .csv or .zip."
    )


def test_it_refuses_a_file_over_the_size_limit_before_reading_it(tmp_path: Path) -> None:
    options = ExtractOptions(limits=IngestLimits(max_file_bytes=1000))
    report = extract_file(write(tmp_path, "big.txt", b"x" * 1536), "big.txt", options)
    assert report.status == FileStatus.FAILED
    assert report.message == "The file is too large (1.5 KB; the limit is 1000 bytes)."


def test_it_turns_an_unforeseen_error_into_a_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object) -> FileReport:
        raise RuntimeError("boom.\nsecond line")

    monkeypatch.setitem(extract.READERS, "text", explode)
    report = extract_file(write(tmp_path, "notes.txt", "hello\n"), "notes.txt")
    assert report.status == FileStatus.FAILED
    assert report.message == "Could not read this file: boom."


def test_it_turns_an_unforeseen_error_in_one_member_into_that_members_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object) -> FileReport:
        raise MemoryError

    monkeypatch.setitem(extract.READERS, "markdown", explode)
    data = zip_bytes({"a.md": b"# A\n", "b.txt": b"B\n"})
    report = extract_file(write(tmp_path, "pack.zip", data), "pack.zip")
    assert report.members[0].message == "Could not read this file: MemoryError."
    assert report.status == FileStatus.PARTIAL


def test_it_reports_a_missing_file_instead_of_raising(tmp_path: Path) -> None:
    report = extract_file(tmp_path / "gone.txt", "gone.txt")
    assert report.status == FileStatus.FAILED
    assert report.message.startswith("Could not read this file: [Errno 2] No such file or directory")


def test_it_never_raises_on_random_bytes_under_any_supported_name(tmp_path: Path) -> None:
    rng = random.Random(7)
    prefixes = [b"", b"%PDF-1.7\n", b"PK\x03\x04", b"<html>", b"{", b"\xef\xbb\xbf"]
    for number in range(60):
        name = f"fuzz{number}{rng.choice(['.txt', '.md', '.html', '.pdf', '.docx', '.jsonl', '.csv', '.zip'])}"
        data = rng.choice(prefixes) + rng.randbytes(rng.randint(0, 3000))
        report = extract_file(write(tmp_path, name, data), name)
        assert isinstance(report, FileReport)
        assert report.message


def test_its_reports_are_json_serialisable(tmp_path: Path) -> None:
    data = zip_bytes(
        {
            "guide.pdf": pdf_bytes(["Hello world", None]),
            "policy.docx": docx_bytes(["Leave."]),
            "qa.jsonl": b'{"question": "Q?", "answer": "A."}\nbroken\n',
            "rows.csv": b"id,text\n1,hello\n",
            "../evil.txt": b"x",
        }
    )
    report = extract_file(write(tmp_path, "all.zip", data), "all.zip")
    encoded = json.loads(json.dumps(dataclasses.asdict(report)))
    assert encoded["status"] == "partial"
    assert [member["status"] for member in encoded["members"]] == ["partial", "ok", "partial", "ok", "failed"]
