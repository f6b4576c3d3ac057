from __future__ import annotations

import hashlib
from pathlib import Path

from workers.ml.ingest.messages import human_bytes, line_list, plural
from workers.ml.ingest.report import ExtractedDocument, FileReport, FileStatus, content_sha256


def test_it_hashes_file_content_in_blocks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 20_000  # 5 MB: several blocks
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert content_sha256(path) == hashlib.sha256(data).hexdigest()


def test_identical_content_under_different_names_hashes_the_same(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("same")
    (tmp_path / "b.md").write_text("same")
    assert content_sha256(tmp_path / "a.txt") == content_sha256(tmp_path / "b.md")


def test_a_report_is_usable_only_with_documents_and_a_passing_status() -> None:
    document = ExtractedDocument(name="a.txt", text="a", kind="text")
    assert FileReport("a.txt", "text", FileStatus.PARTIAL, "m", documents=[document]).usable
    assert not FileReport("a.txt", "text", FileStatus.OK, "m").usable
    assert not FileReport("a.txt", "text", FileStatus.DUPLICATE, "m", documents=[document]).usable


def test_verdicts_count_in_words() -> None:
    assert plural(1, "page") == "1 page"
    assert plural(3, "page") == "3 pages"
    assert plural(2, "empty row") == "2 empty rows"
    assert line_list([3, 7], 2) == "3, 7"
    assert line_list([1, 2], 5) == "1, 2, … (first 2 of 5)"
    assert human_bytes(1) == "1 byte"
    assert human_bytes(1000) == "1000 bytes"
    assert human_bytes(1536) == "1.5 KB"
    assert human_bytes(512 * 2**20) == "512 MB"
    assert human_bytes(2 * 2**30) == "2 GB"
