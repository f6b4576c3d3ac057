"""HTML: the visible text of a page, with its paragraph structure.

Paragraph boundaries matter downstream (the chunker packs whole paragraphs), so block elements become
blank-line separated paragraphs, `<br>` and table rows become line breaks, and table cells are joined by
" | ". Scripts, styles, `<noscript>` and `<template>` are not text a reader sees and are dropped; the
`<title>` is kept as the first line.

How: sentinel characters from Unicode's private use area are inserted at every boundary, the page's text is
taken in one `get_text()` and its whitespace collapsed as a browser would, and only then are the sentinels
turned into newlines, so source formatting never leaks into the structure.
"""

from __future__ import annotations

import re

from bs4 import BeautifulSoup

from workers.ml.ingest import messages
from workers.ml.ingest.options import ExtractOptions
from workers.ml.ingest.report import ExtractedDocument, FileReport, FileStatus, failed

DROPPED_TAGS = ("script", "style", "noscript", "template")
BLOCK_TAGS = (
    "address", "article", "aside", "blockquote", "caption", "dd", "details", "dialog", "div", "dl", "dt",
    "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
    "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "ul",
)  # fmt: skip
_PARAGRAPH, _LINE, _CELL = "\ue000", "\ue001", "\ue002"
_SENTINELS = re.compile("[\ue000-\ue002]")
_WHITESPACE = re.compile(r"\s+")


def html_to_text(data: bytes) -> tuple[str, str | None]:
    """(text, detected encoding) of an HTML page; bytes in, so a `<meta charset>` is honoured."""
    soup = BeautifulSoup(data, "lxml")
    for tag in soup.find_all(DROPPED_TAGS):
        tag.decompose()
    title = _WHITESPACE.sub(" ", soup.title.get_text(" ")).strip() if soup.title else ""
    if soup.head is not None:
        soup.head.decompose()
    for string in soup.find_all(string=_SENTINELS):  # the page's own private-use characters must not split it
        string.replace_with(_SENTINELS.sub(" ", string))
    for pre in soup.find_all("pre"):
        for string in pre.find_all(string=True):
            string.replace_with(string.replace("\n", _LINE))
    for tag in soup.find_all("br"):
        tag.replace_with(_LINE)
    for tag in soup.find_all("tr"):
        tag.append(_LINE)
    for tag in soup.find_all(("td", "th")):
        tag.insert_before(_CELL)
    for tag in soup.find_all(BLOCK_TAGS):
        tag.insert_before(_PARAGRAPH)
        tag.append(_PARAGRAPH)
    flat = _WHITESPACE.sub(" ", soup.get_text())
    paragraphs = [title] if title else []
    for block in flat.split(_PARAGRAPH):
        lines = (" | ".join(cell.strip() for cell in line.split(_CELL) if cell.strip()) for line in block.split(_LINE))
        paragraph = "\n".join(line for line in lines if line)
        if paragraph:
            paragraphs.append(paragraph)
    return "\n\n".join(paragraphs), soup.original_encoding


def read_html(data: bytes, name: str, detected_type: str, options: ExtractOptions) -> FileReport:
    text, encoding = html_to_text(data)
    details = {"encoding": encoding, "characters": len(text)}
    if not text:
        return failed(name, "html", messages.HTML_NO_TEXT, **details)
    return FileReport(
        name=name,
        detected_type="html",
        status=FileStatus.OK,
        message=messages.HTML_OK.format(chars=f"{len(text):,}"),
        documents=[ExtractedDocument(name=name, text=text, kind="html")],
        details=details,
    )
