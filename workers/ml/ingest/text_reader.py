"""Plain text and Markdown: find the encoding, decode to str; the text itself stays as written.

Encodings: a byte-order mark decides; otherwise strict UTF-8 (by far the most common, and a strict UTF-8
decode of non-UTF-8 text almost always fails, so it is a safe first guess that skips the slower detector);
otherwise charset-normalizer's best guess (cp1252, latin-1, Shift-JIS, ...). Markdown is kept as Markdown:
its markup is light and the model sees the same in chat.
"""

from __future__ import annotations

import codecs

from charset_normalizer import from_bytes

from workers.ml.ingest import messages
from workers.ml.ingest.options import ExtractOptions
from workers.ml.ingest.report import ExtractedDocument, FileReport, FileStatus, failed

_BOMS = (
    # utf-32 before utf-16: the UTF-32-LE mark starts with the UTF-16-LE one.
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


_WESTERN = "cp1252"
_TIE_MARGIN = 0.05
_CENTRAL_EUROPEAN = {"Polish", "Czech", "Slovak", "Hungarian", "Slovene", "Croatian", "Romanian"}


def bom_encoding(data: bytes) -> str | None:
    return next((encoding for bom, encoding in _BOMS if data.startswith(bom)), None)


def decode_text(data: bytes) -> tuple[str, str] | None:
    """(text, encoding name) or None when no text encoding fits (binary data)."""
    encoding = bom_encoding(data)
    if encoding is not None:
        try:
            return data.decode(encoding), codecs.lookup(encoding).name
        except UnicodeDecodeError:
            pass  # a stray mark-like prefix: let the detector judge
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    return _detect(data)


def _detect(data: bytes) -> tuple[str, str] | None:
    """charset-normalizer's best guess, with one correction.

    It breaks ties by table order, so French or German cp1252 text often comes out as cp1250 or cp1257 ("è"
    read as "č"). Windows-1252 is by far the most common legacy encoding (HTML5 reads latin-1 as cp1252 too):
    when it scores within a small margin of the best, in mess and in language coherence, it wins, unless the
    best guess recognised a Central European language (Polish or Czech text with its distinctive letters also
    reads as mess in cp1252, and stays cp1250). Short texts without distinctive letters remain ambiguous.
    """
    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        return None
    if best.language not in _CENTRAL_EUROPEAN:
        for match in matches:
            tied = match.chaos <= best.chaos + _TIE_MARGIN and match.coherence >= best.coherence - _TIE_MARGIN
            if tied and _WESTERN in match.could_be_from_charset:
                try:
                    return data.decode(_WESTERN), _WESTERN
                except UnicodeDecodeError:
                    break
    return str(best), codecs.lookup(best.encoding).name


def read_text(data: bytes, name: str, detected_type: str, options: ExtractOptions) -> FileReport:
    decoded = decode_text(data)
    if decoded is None:
        return failed(name, "binary", messages.NO_ENCODING)
    text, encoding = decoded
    if not text.strip():
        return failed(name, "empty", messages.EMPTY, encoding=encoding)
    return FileReport(
        name=name,
        detected_type=detected_type,
        status=FileStatus.OK,
        message=messages.TEXT_OK.format(chars=f"{len(text):,}", encoding=encoding),
        documents=[ExtractedDocument(name=name, text=text, kind=detected_type)],
        details={"encoding": encoding, "characters": len(text)},
    )
