from __future__ import annotations

import csv
import io
from pathlib import Path

from tests.workers.ml.ingest.files import write
from workers.ml.ingest.extract import ExtractOptions, extract_file
from workers.ml.ingest.report import FileStatus
from workers.ml.ingest.sniff import csv_columns


def csv_text(rows: list[list[str]], delimiter: str = ",") -> str:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter).writerows(rows)
    return buffer.getvalue()


ARTICLES = csv_text(
    [
        ["id", "title", "body"],
        ["1", "Leave", "Staff get 25 days of leave per year, booked through the portal."],
        ["2", "Expenses", "Claims need a receipt, and are paid within a month of approval."],
        ["3", "Empty", ""],
        ["4", "Travel", "Book trains in standard class; flights need a manager's approval."],
    ]
)


def test_it_proposes_the_column_with_the_longest_values(tmp_path: Path) -> None:
    assert csv_columns(write(tmp_path, "articles.csv", ARTICLES)) == (["id", "title", "body"], "body")


def test_it_prefers_a_column_named_text_even_when_another_is_longer(tmp_path: Path) -> None:
    data = csv_text([["notes", "text"], ["a rather long note about nothing much at all", "short text"]])
    assert csv_columns(write(tmp_path, "named.csv", data)) == (["notes", "text"], "text")


def test_it_never_proposes_a_numeric_column(tmp_path: Path) -> None:
    data = csv_text([["id", "label"], ["123456789012345678", "yes"], ["223456789012345678", "no"]])
    assert csv_columns(write(tmp_path, "ids.csv", data)) == (["id", "label"], "label")


def test_it_keeps_each_non_empty_cell_of_the_proposed_column_as_a_paragraph(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "articles.csv", ARTICLES), "articles.csv")
    assert report.status == FileStatus.OK
    assert report.detected_type == "csv"
    assert report.message == "Kept 3 rows of column 'body'; skipped 1 empty row."
    assert report.details == {
        "encoding": "utf-8",
        "columns": ["id", "title", "body"],
        "text_column": "body",
        "rows": 4,
        "empty_rows": 1,
    }
    document = report.documents[0]
    assert document.kind == "csv"
    assert document.text.split("\n\n") == [
        "Staff get 25 days of leave per year, booked through the portal.",
        "Claims need a receipt, and are paid within a month of approval.",
        "Book trains in standard class; flights need a manager's approval.",
    ]


def test_it_uses_the_column_the_user_chose(tmp_path: Path) -> None:
    options = ExtractOptions(csv_text_column="title")
    report = extract_file(write(tmp_path, "articles.csv", ARTICLES), "articles.csv", options)
    assert report.message == "Kept 4 rows of column 'title'."
    assert report.documents[0].text == "Leave\n\nExpenses\n\nEmpty\n\nTravel"


def test_it_refuses_a_column_that_does_not_exist(tmp_path: Path) -> None:
    data = csv_text([["id", "title", "text"], ["1", "t", "x"]])
    report = extract_file(write(tmp_path, "a.csv", data), "a.csv", ExtractOptions(csv_text_column="body"))
    assert report.status == FileStatus.FAILED
    assert report.message == "The CSV has no column named 'body' (columns: id, title, text)."


def test_it_sniffs_a_semicolon_dialect_with_multiline_cells(tmp_path: Path) -> None:
    data = csv_text([["id", "text"], ["1", "Bonjour; ça va ?\nOui."], ["2", "Deux"]], delimiter=";")
    report = extract_file(write(tmp_path, "fr.csv", data), "fr.csv")
    assert report.details["columns"] == ["id", "text"]
    assert report.documents[0].text == "Bonjour; ça va ?\nOui.\n\nDeux"


def test_it_reads_cells_longer_than_the_csv_modules_default_limit(tmp_path: Path) -> None:
    long_cell = "word " * 40_000  # 200 KB: over csv's 128 KiB default field limit
    report = extract_file(write(tmp_path, "long.csv", csv_text([["text"], [long_cell]])), "long.csv")
    assert report.status == FileStatus.OK
    assert report.documents[0].text == long_cell.strip()


def test_it_refuses_a_csv_with_only_a_header(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "head.csv", "id,text\n"), "head.csv")
    assert report.status == FileStatus.FAILED
    assert report.message == "The CSV has a header but no rows."


def test_it_refuses_a_chosen_column_that_is_empty_everywhere(tmp_path: Path) -> None:
    data = csv_text([["id", "text"], ["1", ""], ["2", " "]])
    report = extract_file(write(tmp_path, "e.csv", data), "e.csv", ExtractOptions(csv_text_column="text"))
    assert report.status == FileStatus.FAILED
    assert report.message == "The column 'text' is empty in every row."


def test_it_refuses_a_csv_where_no_column_holds_text(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "n.csv", csv_text([["id", "score"], ["1", "2.5"]])), "n.csv")
    assert report.status == FileStatus.FAILED
    assert report.message == "No column of the CSV holds text (columns: id, score)."
