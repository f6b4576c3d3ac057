"""The corpus a run distils from: an immutable snapshot of text chunks, split into train and held-out.

The ingest pipeline chunks documents and decides the split (its split is the one that counts); the CLI reads a
directory through that same pipeline (`read_directory`: every format the web upload takes, the same chunking
and de-duplication) with a deterministic split by document, so no held-out document leaks into training through
a neighbouring chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.ml.ingest.chunking import ChunkingConfig, chunk_documents, drop_duplicate_chunks
from workers.ml.ingest.limits import IngestLimits
from workers.ml.ingest.normalise import normalise_text
from workers.ml.ingest.options import ExtractOptions
from workers.ml.ingest.report import FileReport
from workers.ml.ingest.split import heldout_documents


@dataclass(frozen=True)
class Chunk:
    """A piece of one document, in reading order."""

    doc_id: str = field(metadata={"help": "Identifier of the document the chunk comes from."})
    position: int = field(metadata={"help": "0-based index of the chunk within its document."})
    text: str = field(metadata={"help": "The chunk's text."})


@dataclass(frozen=True)
class CorpusSnapshot:
    """Train and held-out chunks. Held-out chunks come from whole documents absent from train."""

    train: tuple[Chunk, ...]
    heldout: tuple[Chunk, ...]
    name: str = "corpus"

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", tuple(self.train))
        object.__setattr__(self, "heldout", tuple(self.heldout))
        by_doc: dict[str, dict[int, Chunk]] = {}
        for chunk in (*self.train, *self.heldout):
            by_doc.setdefault(chunk.doc_id, {})[chunk.position] = chunk
        object.__setattr__(self, "_by_doc", by_doc)

    def preceding(self, chunk: Chunk, count: int) -> list[Chunk]:
        """Up to `count` chunks right before `chunk` in its document, oldest first (context distillation)."""
        positions: dict[int, Chunk] = self._by_doc.get(chunk.doc_id, {})  # type: ignore[attr-defined]
        found = []
        for position in range(chunk.position - 1, chunk.position - 1 - count, -1):
            if position not in positions:
                break
            found.append(positions[position])
        return found[::-1]

    @property
    def fingerprint(self) -> str:
        """A stable hash of the snapshot's content and split (names the teacher cache)."""
        digest = hashlib.sha256()
        for split, chunks in (("train", self.train), ("heldout", self.heldout)):
            for chunk in chunks:
                digest.update(f"{split}\0{chunk.doc_id}\0{chunk.position}\0{chunk.text}\0".encode())
        return digest.hexdigest()

    def stats(self) -> dict[str, Any]:
        docs = {chunk.doc_id for chunk in self.train}
        heldout_docs = {chunk.doc_id for chunk in self.heldout}
        return {
            "train_chunks": len(self.train),
            "train_documents": len(docs),
            "heldout_chunks": len(self.heldout),
            "heldout_documents": len(heldout_docs),
            "train_characters": sum(len(chunk.text) for chunk in self.train),
        }


def split_by_document(
    documents: Sequence[tuple[str, Sequence[str]]], heldout_fraction: float, seed: int = 0, name: str = "corpus"
) -> CorpusSnapshot:
    """Deterministically hold out whole documents, about `heldout_fraction` of the chunks (the ingest pipeline's
    rule, workers.ml.ingest.split): at least one document when there are two or more, never all."""
    sizes: dict[str, int] = {}
    for doc_id, chunks in documents:
        sizes[doc_id] = sizes.get(doc_id, 0) + len(chunks)
    heldout_ids = heldout_documents([doc_id for doc_id, _ in documents], heldout_fraction, seed, sizes=sizes)
    train: list[Chunk] = []
    heldout: list[Chunk] = []
    for doc_id, chunks in documents:
        target = heldout if doc_id in heldout_ids else train
        target.extend(Chunk(doc_id, position, text) for position, text in enumerate(chunks))
    return CorpusSnapshot(train=tuple(train), heldout=tuple(heldout), name=name)


def chunk_by_tokens(text: str, tokenizer: Any, chunk_tokens: int, overlap: int = 0) -> list[str]:
    """Split `text` into pieces of at most `chunk_tokens` tokens of `tokenizer`, cut at token boundaries."""
    if overlap >= chunk_tokens:
        raise ValueError("overlap must be smaller than chunk_tokens")
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"]
    pieces = []
    start = 0
    while start < len(offsets):
        end = min(start + chunk_tokens, len(offsets))
        piece = text[offsets[start][0] : offsets[end - 1][1]].strip()
        if piece:
            pieces.append(piece)
        if end == len(offsets):
            break
        start = end - overlap
    return pieces


@dataclass(frozen=True)
class DirectoryCorpus:
    """A directory read as the web ingest reads an upload: the snapshot, and what happened to each file."""

    snapshot: CorpusSnapshot = field(metadata={"help": "Chunks split into train and held-out by document."})
    reports: tuple[FileReport, ...] = field(metadata={"help": "One verdict per file, in path order."})
    repeated_documents: int = field(metadata={"help": "Documents whose text another file already had, skipped."})
    dropped_chunks: int = field(metadata={"help": "Chunks repeating an earlier chunk's text exactly, skipped."})


def corpus_files(root: Path) -> list[Path]:
    """Files under `root` in path order, without hidden ones (`.git/`, `.DS_Store`) or macOS archive litter."""
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") or part == "__MACOSX" for part in path.relative_to(root).parts)
    )


def read_directory(
    root: Path,
    tokenizer: Any,
    chunking: ChunkingConfig | None = None,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    limits: IngestLimits | None = None,
) -> DirectoryCorpus:
    """Every file under `root` through the product's ingest, then split by document.

    1. Extract each file by its content (text, Markdown, HTML, PDF, Word, JSONL, CSV, ZIP); a file that cannot be
       read gets a failed verdict and the rest go on, as in the web upload.
    2. Normalise each document's text; a document whose text an earlier one had is skipped.
    3. Chunk whole paragraphs to `chunking.chunk_tokens` of the student's tokens with its overlap, and drop chunks
       that repeat an earlier chunk exactly (boilerplate).
    4. Hold out whole documents, about `heldout_fraction` of the chunks, deterministically.
    """
    # Imported here: the document parsers (PDF, Word, HTML) are the CLI's concern, not training's, and a GPU host
    # that only trains (bench/gpu_distill.py on a lent machine) need not have them installed.
    from workers.ml.ingest.extract import extract_file

    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory.")
    options = ExtractOptions(limits=limits or IngestLimits())
    reports: list[FileReport] = []
    documents: list[tuple[str, str]] = []  # (display name, normalised text)
    seen_texts: set[str] = set()
    repeated = 0
    for path in corpus_files(root):
        report = extract_file(path, path.relative_to(root).as_posix(), options)
        reports.append(report)
        for document in report.documents:
            text = normalise_text(document.text)
            if not text:
                continue
            if text in seen_texts:
                repeated += 1
                continue
            seen_texts.add(text)
            documents.append((document.name, text))
    if not documents:
        verdicts = "; ".join(f"{report.name}: {report.message}" for report in reports[:5]) or "no files"
        raise FileNotFoundError(f"No file under {root} gave any usable text ({verdicts}).")
    chunked = chunk_documents([text for _, text in documents], tokenizer, chunking or ChunkingConfig())
    chunked, dropped = drop_duplicate_chunks(chunked)
    pieces = [(name, [chunk.text for chunk in chunks]) for (name, _), chunks in zip(documents, chunked, strict=True)]
    snapshot = split_by_document([(name, texts) for name, texts in pieces if texts], heldout_fraction, seed, root.name)
    return DirectoryCorpus(snapshot, tuple(reports), repeated, dropped)
