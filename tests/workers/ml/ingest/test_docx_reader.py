from __future__ import annotations

from pathlib import Path

from tests.workers.ml.ingest.files import docx_bytes, write, zip_bytes
from workers.ml.ingest.extract import ExtractOptions, extract_file
from workers.ml.ingest.limits import IngestLimits
from workers.ml.ingest.report import FileStatus


def test_it_extracts_paragraphs_and_tables_in_document_order(tmp_path: Path) -> None:
    data = docx_bytes(["Leave policy", "", "Staff get 25 days."], table=[["Grade", "Days"], ["A", "25"]])
    report = extract_file(write(tmp_path, "policy.docx", data), "policy.docx")
    assert report.status == FileStatus.OK
    assert report.detected_type == "docx"
    assert report.message == "Extracted 2 paragraphs and 1 table."
    assert report.details == {"paragraphs": 2, "tables": 1}
    assert report.documents[0].text == "Leave policy\n\nStaff get 25 days.\n\nGrade | Days\nA | 25"
    assert report.documents[0].kind == "docx"


def test_it_says_paragraphs_only_when_there_is_no_table(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "one.docx", docx_bytes(["Only this."])), "one.docx")
    assert report.message == "Extracted 1 paragraph."


def test_it_refuses_a_docx_without_text(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "blank.docx", docx_bytes([""])), "blank.docx")
    assert report.status == FileStatus.FAILED
    assert report.message == "The Word document has no text."


def test_it_refuses_a_zip_named_docx_without_a_word_document(tmp_path: Path) -> None:
    path = write(tmp_path, "fake.docx", zip_bytes({"notes.txt": b"hello"}))
    report = extract_file(path, "fake.docx")
    assert report.status == FileStatus.FAILED
    assert report.message == "The file is named .docx but is not a Word document."


def test_it_refuses_text_named_docx(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "fake.docx", "plain words\n"), "fake.docx")
    assert report.status == FileStatus.FAILED
    assert report.message == "The file is named .docx but is not a Word document."


def test_it_refuses_a_damaged_word_document(tmp_path: Path) -> None:
    data = zip_bytes({"[Content_Types].xml": b"<not xml", "word/document.xml": b"<w:document"})
    report = extract_file(write(tmp_path, "broken.docx", data), "broken.docx")
    assert report.status == FileStatus.FAILED
    assert report.message == "The Word document is damaged and could not be read."


def test_it_refuses_a_docx_that_inflates_like_a_zip_bomb(tmp_path: Path) -> None:
    data = zip_bytes({"word/document.xml": b"<" + b" " * (4 * 2**20)})
    options = ExtractOptions(limits=IngestLimits(max_archive_ratio=100))
    report = extract_file(write(tmp_path, "bomb.docx", data), "bomb.docx", options)
    assert report.status == FileStatus.FAILED
    assert report.message.startswith("Refused: it inflates ")
    assert report.message.endswith(" times its compressed size (limit 100): a likely zip bomb.")
