from __future__ import annotations

from pathlib import Path

from tests.workers.ml.ingest.files import damaged_pdf_bytes, encrypted_pdf_bytes, pdf_bytes, write
from workers.ml.ingest.extract import extract_file
from workers.ml.ingest.report import FileStatus


def test_it_extracts_the_text_of_every_page(tmp_path: Path) -> None:
    path = write(tmp_path, "guide.pdf", pdf_bytes(["Hello world", "Second page (with parentheses)"]))
    report = extract_file(path, "guide.pdf")
    assert report.status == FileStatus.OK
    assert report.detected_type == "pdf"
    assert report.message == "Extracted text from 2 pages."
    assert report.details == {"pages": 2, "pages_with_text": 2}
    assert report.documents[0].text == "Hello world\n\nSecond page (with parentheses)"
    assert report.documents[0].kind == "pdf"


def test_it_keeps_the_text_pages_and_counts_the_empty_ones(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "mixed.pdf", pdf_bytes(["Hello world", None, None])), "mixed.pdf")
    assert report.status == FileStatus.PARTIAL
    assert report.message == "No text on 2 of 3 pages (scanned?): kept the text of the other 1."
    assert report.details == {"pages": 3, "pages_with_text": 1}
    assert report.documents[0].text == "Hello world"


def test_it_refuses_a_pdf_without_a_text_layer(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "scan.pdf", pdf_bytes([None, None])), "scan.pdf")
    assert report.status == FileStatus.FAILED
    assert report.message == "The PDF has no text layer (scanned pages?): it needs OCR before upload."
    assert report.details == {"pages": 2, "pages_with_text": 0}


def test_it_refuses_a_password_protected_pdf(tmp_path: Path) -> None:
    path = write(tmp_path, "locked.pdf", encrypted_pdf_bytes(["Hello world"], user_password="secret"))
    report = extract_file(path, "locked.pdf")
    assert report.status == FileStatus.FAILED
    assert report.message == "The PDF is encrypted: remove the password and upload it again."


def test_it_reads_a_pdf_encrypted_with_an_empty_user_password(tmp_path: Path) -> None:
    path = write(tmp_path, "restricted.pdf", encrypted_pdf_bytes(["Hello world"], user_password=""))
    report = extract_file(path, "restricted.pdf")
    assert report.status == FileStatus.OK
    assert report.documents[0].text == "Hello world"


def test_it_refuses_a_damaged_pdf(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "cut.pdf", damaged_pdf_bytes()), "cut.pdf")
    assert report.status == FileStatus.FAILED
    assert report.detected_type == "pdf"
    assert report.message == "The PDF is damaged and could not be read."


def test_it_reads_a_pdf_by_content_even_when_named_txt(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "really-a-pdf.txt", pdf_bytes(["Hello world"])), "really-a-pdf.txt")
    assert report.status == FileStatus.OK
    assert report.detected_type == "pdf"
    assert report.documents[0].text == "Hello world"


def test_it_refuses_text_named_pdf_as_not_a_pdf(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "fake.pdf", "just some words\n"), "fake.pdf")
    assert report.status == FileStatus.FAILED
    assert report.detected_type == "text"
    assert report.message == "The file is named .pdf but is not a PDF."
