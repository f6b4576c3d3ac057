from __future__ import annotations

from pathlib import Path

from tests.workers.ml.ingest.files import write
from workers.ml.ingest.extract import extract_file
from workers.ml.ingest.report import FileStatus

PAGE = """<!DOCTYPE html>
<html><head><title>Leave\n  policy</title>
<style>body { color: red; }</style>
<script>var secret = "do not index";</script>
</head>
<body>
<noscript>Enable JavaScript</noscript>
<template><p>template text</p></template>
<h1>Annual leave</h1>
<p>Staff get <b>25 days</b>
   of leave per year.</p>
<div>Ask your manager<br>before booking.</div>
<!-- a comment nobody sees -->
<ul><li>Carry over 5 days</li><li>Sell back none</li></ul>
<table><tr><th>Grade</th><th>Days</th></tr><tr><td>A</td><td>25</td></tr></table>
<script>track();</script>
</body></html>
"""


def test_it_keeps_visible_text_as_paragraphs_with_the_title_first(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "leave.html", PAGE), "leave.html")
    assert report.status == FileStatus.OK
    assert report.detected_type == "html"
    assert report.documents[0].kind == "html"
    assert report.documents[0].text == (
        "Leave policy\n\n"
        "Annual leave\n\n"
        "Staff get 25 days of leave per year.\n\n"
        "Ask your manager\nbefore booking.\n\n"
        "Carry over 5 days\n\n"
        "Sell back none\n\n"
        "Grade | Days\nA | 25"
    )
    text = report.documents[0].text
    assert report.message == f"Extracted {len(text)} characters of page text (scripts and styles removed)."


def test_it_drops_scripts_styles_noscript_templates_and_comments(tmp_path: Path) -> None:
    text = extract_file(write(tmp_path, "leave.htm", PAGE), "leave.htm").documents[0].text
    for hidden in ("secret", "color", "Enable JavaScript", "template text", "comment", "track"):
        assert hidden not in text


def test_it_recognises_html_by_its_doctype_whatever_the_name(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "export.txt", PAGE), "export.txt")
    assert report.detected_type == "html"
    assert "script" not in report.documents[0].text


def test_it_honours_the_pages_declared_charset(tmp_path: Path) -> None:
    page = '<html><head><meta charset="windows-1252"></head><body><p>Café crème</p></body></html>'
    report = extract_file(write(tmp_path, "cafe.html", page.encode("cp1252")), "cafe.html")
    assert report.documents[0].text == "Café crème"


def test_it_refuses_a_page_without_visible_text(tmp_path: Path) -> None:
    page = "<html><head><script>x()</script></head><body><style>p{}</style></body></html>"
    report = extract_file(write(tmp_path, "blank.html", page), "blank.html")
    assert report.status == FileStatus.FAILED
    assert report.message == "The HTML page has no visible text."
