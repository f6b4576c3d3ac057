from __future__ import annotations

from pathlib import Path

from tests.workers.ml.ingest.files import write
from workers.ml.ingest import messages
from workers.ml.ingest.extract import extract_file
from workers.ml.ingest.report import FileStatus

FRENCH = (
    "Les élèves étudient à l'école. Le café est déjà prêt, et la crème brûlée attend sur la table. "
    "Où est passé le garçon ? Il a reçu une lettre de sa sœur, écrite en français, très émouvante.\n"
)


def test_it_reads_utf8_text_and_reports_the_encoding(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "notes.txt", FRENCH.encode("utf-8")), "notes.txt")
    assert report.status == FileStatus.OK
    assert report.detected_type == "text"
    assert report.documents[0].text == FRENCH
    assert report.documents[0].kind == "text"
    assert report.details["encoding"] == "utf-8"
    assert report.message == messages.TEXT_OK.format(chars=f"{len(FRENCH):,}", encoding="utf-8")
    assert report.message == f"Read {len(FRENCH)} characters of text (utf-8)."


def test_it_decodes_cp1252_text_so_accents_round_trip(tmp_path: Path) -> None:
    text = FRENCH * 3 + "Le prix : 20 € — « guillemets ».\n"
    report = extract_file(write(tmp_path, "legacy.txt", text.encode("cp1252")), "legacy.txt")
    assert report.status == FileStatus.OK
    assert report.documents[0].text == text
    assert report.details["encoding"] == "cp1252"


def test_it_decodes_latin1_text_so_accents_round_trip(tmp_path: Path) -> None:
    text = FRENCH.replace("œ", "oe") * 3  # no œ in latin-1
    report = extract_file(write(tmp_path, "latin.txt", text.encode("latin-1")), "latin.txt")
    assert report.status == FileStatus.OK
    assert report.documents[0].text == text
    # Latin-1's printable characters are cp1252's, at the same bytes: either name decodes it right.
    assert report.details["encoding"] == "cp1252"


def test_it_decodes_short_accented_cp1252_text(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "short.txt", "Café crème, déjà vu.\n".encode("cp1252")), "short.txt")
    assert report.documents[0].text == "Café crème, déjà vu.\n"


def test_it_keeps_a_central_european_encoding_when_the_text_needs_it(tmp_path: Path) -> None:
    text = "Zażółć gęślą jaźń. Właściwie każdy człowiek chciałby żyć spokojnie, ale świat się zmienia.\n"
    report = extract_file(write(tmp_path, "pl.txt", text.encode("cp1250")), "pl.txt")
    assert report.documents[0].text == text
    assert report.details["encoding"] == "cp1250"


def test_it_honours_a_utf16_byte_order_mark(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "wide.txt", FRENCH.encode("utf-16")), "wide.txt")
    assert report.status == FileStatus.OK
    assert report.documents[0].text == FRENCH
    assert report.details["encoding"] == "utf-16"


def test_it_strips_a_utf8_byte_order_mark(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "bom.txt", b"\xef\xbb\xbfHello there.\n"), "bom.txt")
    assert report.documents[0].text == "Hello there.\n"


def test_it_keeps_markdown_as_markdown(tmp_path: Path) -> None:
    text = "# Leave policy\n\nStaff get **25 days** of leave.\n\n- carry over 5 days\n- ask your manager\n"
    report = extract_file(write(tmp_path, "leave.md", text), "leave.md")
    assert report.status == FileStatus.OK
    assert report.detected_type == "markdown"
    assert report.documents[0].kind == "markdown"
    assert report.documents[0].text == text


def test_it_refuses_an_empty_file(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "empty.txt", b""), "empty.txt")
    assert report.status == FileStatus.FAILED
    assert report.detected_type == "empty"
    assert report.message == "The file is empty."
    assert report.documents == []


def test_it_refuses_a_file_of_only_whitespace_as_empty(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "blank.md", b" \n\t\r\n  \n"), "blank.md")
    assert report.status == FileStatus.FAILED
    assert report.message == "The file is empty."
