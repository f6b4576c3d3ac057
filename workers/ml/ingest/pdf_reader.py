"""PDF: the text layer of every page, pages separated by blank lines.

pypdf reads what the PDF holds as text; a scanned page holds an image and yields nothing, and we say so
(OCR is out of scope: the user runs it and uploads again). Many PDFs are "encrypted" with an empty user
password only to restrict printing or copying: they open without one, so an empty password is tried first.
"""

from __future__ import annotations

import io

from pypdf import PageObject, PasswordType, PdfReader

from workers.ml.ingest import messages
from workers.ml.ingest.messages import plural
from workers.ml.ingest.options import ExtractOptions
from workers.ml.ingest.report import ExtractedDocument, FileReport, FileStatus, failed


def read_pdf(data: bytes, name: str, detected_type: str, options: ExtractOptions) -> FileReport:
    if not data.startswith(b"%PDF-"):
        return failed(name, detected_type, messages.NOT_A_PDF)
    # pypdf raises many kinds of errors on damaged files (PdfReadError, struct, zlib, KeyError, ...).
    try:
        reader = PdfReader(io.BytesIO(data))
        encrypted = reader.is_encrypted
    except Exception:
        return failed(name, "pdf", messages.PDF_DAMAGED)
    if encrypted and not _opens_with_empty_password(reader):
        return failed(name, "pdf", messages.PDF_ENCRYPTED)
    try:
        pages = list(reader.pages)
    except Exception:
        return failed(name, "pdf", messages.PDF_DAMAGED)
    texts = [_page_text(page) for page in pages]
    kept = [text for text in texts if text]
    details = {"pages": len(pages), "pages_with_text": len(kept)}
    if not kept:
        return failed(name, "pdf", messages.PDF_NO_TEXT, **details)
    empty = len(pages) - len(kept)
    if empty:
        status = FileStatus.PARTIAL
        message = messages.PDF_PARTIAL.format(empty=empty, pages=plural(len(pages), "page"), kept=len(kept))
    else:
        status, message = FileStatus.OK, messages.PDF_OK.format(pages=plural(len(pages), "page"))
    return FileReport(
        name=name,
        detected_type="pdf",
        status=status,
        message=message,
        documents=[ExtractedDocument(name=name, text="\n\n".join(kept), kind="pdf")],
        details=details,
    )


def _opens_with_empty_password(reader: PdfReader) -> bool:
    try:
        return reader.decrypt("") != PasswordType.NOT_DECRYPTED
    except Exception:  # an unknown security handler or cipher: as locked as a real password, for the user
        return False


def _page_text(page: PageObject) -> str:
    # One damaged page (bad font, broken content stream) costs that page, not the document.
    try:
        return page.extract_text().strip()
    except Exception:
        return ""
