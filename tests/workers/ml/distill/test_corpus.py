"""The CLI's corpus: a directory read as the web upload is read (every format, the same chunking and
de-duplication), split by whole documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.workers.ml.ingest.files import docx_bytes, pdf_bytes, zip_bytes
from workers.ml import tiny
from workers.ml.distill.corpus import read_directory
from workers.ml.ingest.chunking import ChunkingConfig
from workers.ml.ingest.report import FileStatus

GUIDE = "# Leave\n\nEvery employee has twenty-five days of paid leave a year.\n\nAsk your manager first.\n"


@pytest.fixture(scope="module")
def tokenizer(model_cache_dir: Path) -> Any:
    return tiny.load_tokenizer(model_cache_dir, lambda message: None)


def write_files(root: Path, files: dict[str, bytes | str]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return root


def test_it_reads_every_format_the_web_upload_takes_and_reports_each_file(tmp_path: Path, tokenizer: Any) -> None:
    root = write_files(
        tmp_path / "docs",
        {
            "hr/leave.md": GUIDE,
            "hr/old/leave.md": GUIDE,  # the same document again: kept once, where it comes first in path order
            "it/vpn.html": "<html><body><h1>VPN</h1><p>Import the certificate before connecting.</p></body></html>",
            "it/firewall.pdf": pdf_bytes(["The firewall blocks port 22 from outside."]),
            "finance/expenses.docx": docx_bytes(["Expenses are refunded within thirty days."]),
            "archive.zip": zip_bytes({"wifi.txt": b"Guests join the separate guest network."}),
            "logo.bin": bytes(range(256)) * 4,  # not a document: reported, the rest go on
            ".git/config": "[core]\n\tbare = false\n",  # hidden: not part of the corpus
        },
    )
    read = read_directory(root, tokenizer, ChunkingConfig(chunk_tokens=64, overlap_tokens=0), heldout_fraction=0.2)
    verdicts = {report.name: report.status for report in read.reports}
    assert set(verdicts) == {
        "archive.zip",
        "finance/expenses.docx",
        "hr/leave.md",
        "hr/old/leave.md",
        "it/firewall.pdf",
        "it/vpn.html",
        "logo.bin",
    }
    assert verdicts["logo.bin"] == FileStatus.FAILED
    assert all(status == FileStatus.OK for name, status in verdicts.items() if name != "logo.bin")
    assert read.repeated_documents == 1
    chunks = [*read.snapshot.train, *read.snapshot.heldout]
    text = "\n".join(chunk.text for chunk in chunks)
    for sentence in ("twenty-five days", "Import the certificate", "port 22", "thirty days", "guest network"):
        assert text.count(sentence) == 1
    assert {chunk.doc_id for chunk in chunks} == {
        "archive.zip/wifi.txt",
        "finance/expenses.docx",
        "hr/leave.md",
        "it/firewall.pdf",
        "it/vpn.html",
    }
    # Whole documents are held out, never a part of one.
    held = {chunk.doc_id for chunk in read.snapshot.heldout}
    assert held
    assert held.isdisjoint(chunk.doc_id for chunk in read.snapshot.train)


def test_it_splits_the_same_directory_the_same_way_every_time(tmp_path: Path, tokenizer: Any) -> None:
    root = write_files(tmp_path / "docs", {f"doc-{n}.txt": f"Document {n} says {n * 7}." for n in range(10)})
    first, second = (read_directory(root, tokenizer, heldout_fraction=0.3) for _ in range(2))
    assert first.snapshot.fingerprint == second.snapshot.fingerprint


def test_it_refuses_a_directory_without_usable_text_and_says_what_each_file_was(tmp_path: Path, tokenizer: Any) -> None:
    root = write_files(tmp_path / "docs", {"logo.bin": bytes(range(256)) * 4})
    with pytest.raises(FileNotFoundError, match=r"No file under .* gave any usable text \(logo\.bin: "):
        read_directory(root, tokenizer)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        read_directory(tmp_path / "missing", tokenizer)
