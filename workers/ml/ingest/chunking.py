"""Chunking: documents into pieces of at most `chunk_tokens` tokens of the student's tokenizer.

Paragraphs (blocks separated by blank lines) are the unit: whole paragraphs are packed greedily into a chunk
while their tokens, plus the separators between them, fit. Consecutive chunks share their predecessor's
trailing whole paragraphs up to `overlap_tokens`, so a fact cut at a chunk boundary is still seen whole once.
A paragraph longer than a chunk is cut at token boundaries (preferably where a word starts) into pieces of
`chunk_tokens` that overlap by `overlap_tokens`.

Throughput: the paragraphs of all documents are tokenized together, in batched calls of the fast tokenizer's
Rust backend (parallel): paragraphs too long in characters to fit are encoded once with offsets, to know where
to cut them; all others are only counted (`encode_batch_fast` skips offset tracking). Python then loops over
paragraphs and cuts, never over tokens. Only a paragraph that turns out long despite few characters is encoded
a second time, and only a piece cut inside a word (text without spaces) is encoded again to learn its size.

Exactness: a chunk's `n_tokens` is the sum of its paragraphs' counts plus the separators' tokens (measured
once per call), a piece's is its token range. With byte-level BPE (SmolLM2's) words are pre-tokenized apart
and never merged across, so a blank line between paragraphs and a cut where a word starts are boundaries the
tokenizer respects: re-encoding any chunk gives exactly `n_tokens` (the tests check it, with no slack). Other
tokenizers have every piece re-encoded; their packed chunks may be off by a token or two at the joins.
"""

from __future__ import annotations

import dataclasses
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

MIN_CHUNK_TOKENS = 16
PARAGRAPH_SEPARATOR = "\n\n"
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_WORD_SEARCH_TOKENS = 32  # how far back a cut looks for a word start before cutting inside a word
# Characters per token above which a paragraph is almost surely over the limit (English runs ~4.5 per token).
_LIKELY_LONG = 4
_SEPARATOR_PROBES = ("a", "b", f"a{PARAGRAPH_SEPARATOR}b")


@dataclass(frozen=True)
class ChunkingConfig:
    chunk_tokens: int = field(
        default=256,
        metadata={
            "help": f"Most tokens in one chunk (student tokenizer, no special tokens); at least {MIN_CHUNK_TOKENS}."
        },
    )
    overlap_tokens: int = field(
        default=32,
        metadata={
            "help": "Tokens a chunk repeats from the one before: whole trailing paragraphs that fit, "
            "or exactly this many when a long paragraph is cut. 0 disables; must be below chunk_tokens."
        },
    )

    def __post_init__(self) -> None:
        if self.chunk_tokens < MIN_CHUNK_TOKENS:
            raise ValueError(f"chunk_tokens must be at least {MIN_CHUNK_TOKENS}, got {self.chunk_tokens}.")
        if not 0 <= self.overlap_tokens < self.chunk_tokens:
            raise ValueError(
                f"overlap_tokens must be between 0 and chunk_tokens - 1 ({self.chunk_tokens - 1}), "
                f"got {self.overlap_tokens}."
            )


@dataclass(frozen=True)
class TextChunk:
    position: int = field(metadata={"help": "0-based index of the chunk within its document."})
    text: str = field(metadata={"help": "The chunk's text: whole paragraphs joined by blank lines, or a piece."})
    n_tokens: int = field(metadata={"help": "Tokens of `text` under the tokenizer it was chunked with."})


def split_paragraphs(text: str) -> list[str]:
    return [paragraph for block in _PARAGRAPH_BREAK.split(text) if (paragraph := block.strip())]


Span = Callable[[int], tuple[int, int]]  # token index -> (start, end) character offsets in its text


class _Tokens:
    """Token counts and character spans, through the fast tokenizer's Rust backend when it is safe to use."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        # Truncation or padding configured on the backend would distort counts: then go through __call__.
        usable = backend is not None and backend.truncation is None and backend.padding is None
        self.backend = backend if usable else None
        # Byte-level BPE (GPT-2's pre-tokenizer, SmolLM2's) splits text into words before merging, and no token
        # crosses a word boundary: a piece cut where a word starts encodes alone into exactly the tokens it had
        # in context. Other tokenizers get every piece re-encoded to know its size.
        self.exact_word_cuts = self.backend is not None and type(self.backend.pre_tokenizer).__name__ == "ByteLevel"

    def counts(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        if self.backend is not None:
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
            return [len(encoding) for encoding in encode(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def spans(self, texts: list[str]) -> list[tuple[int, Span]]:
        """(token count, span lookup) per text; the backend's lookup converts only the offsets asked for."""
        if not texts:
            return []
        if self.backend is not None:
            encodings = self.backend.encode_batch(texts, add_special_tokens=False)
            return [(len(encoding), encoding.token_to_chars) for encoding in encodings]
        encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [(len(offsets), offsets.__getitem__) for offsets in encoded["offset_mapping"]]


def _starts_word(text: str, span: Span, index: int) -> bool:
    start = span(index)[0]
    if start == 0:
        return True
    if span(index - 1)[1] > start:
        return False  # the middle of one character split into several byte tokens (emoji, CJK)
    # Byte-level offsets include a token's leading space; other tokenizers' point past it.
    return text[start].isspace() or text[start - 1].isspace()


def _token_ranges(text: str, total: int, span: Span, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) token ranges of at most `window` tokens covering the text, consecutive ones sharing `overlap`.

    Cuts move back (a little) to where a word starts; text without spaces (CJK, a long URL) is cut anywhere.
    """
    ranges = []
    start = 0
    while True:
        end = min(start + window, total)
        if end < total:
            floor = max(start + 1, end - _WORD_SEARCH_TOKENS, start + window // 2)
            end = next((cut for cut in range(end, floor - 1, -1) if _starts_word(text, span, cut)), end)
        ranges.append((start, end))
        if end >= total:
            return ranges
        if not overlap:
            start = end
            continue
        # The overlap starts at a word too, when one is near: it costs at most a few tokens of overlap.
        following = end - overlap
        nearby = range(following, min(following + _WORD_SEARCH_TOKENS, end))
        following = next((cut for cut in nearby if _starts_word(text, span, cut)), following)
        start = max(following, start + 1)


def _split_long(
    paragraphs: list[str], spans: list[tuple[int, Span]], tokens: _Tokens, config: ChunkingConfig
) -> list[list[tuple[str, int]]]:
    """Each over-long paragraph as (piece, tokens) pieces, each within `chunk_tokens` when encoded alone.

    Pieces are exact slices of the paragraph (so a piece after the first starts with the space before its first
    word: that space belongs to the word's token). A piece cut where words start has a known size; one cut
    inside a word is encoded again, and if it grew past the limit its paragraph is cut again with a smaller
    window.
    """
    windows = [config.chunk_tokens] * len(paragraphs)
    results: list[list[tuple[str, int]]] = [[] for _ in paragraphs]
    pending = list(range(len(paragraphs)))
    while pending:
        planned: dict[int, list[tuple[str, int | None]]] = {}
        for index in pending:
            text, (total, span) = paragraphs[index], spans[index]
            pieces: list[tuple[str, int | None]] = []
            for start, end in _token_ranges(text, total, span, windows[index], config.overlap_tokens):
                exact = tokens.exact_word_cuts and _starts_word(text, span, start)
                exact = exact and (end == total or _starts_word(text, span, end))
                pieces.append((text[span(start)[0] : span(end - 1)[1]], end - start if exact else None))
            planned[index] = pieces
        unsure = iter(tokens.counts([piece for index in pending for piece, size in planned[index] if size is None]))
        retry = []
        for index in pending:
            sized = [(piece, next(unsure) if size is None else size) for piece, size in planned[index]]
            excess = max(size for _, size in sized) - config.chunk_tokens
            if excess > 0 and windows[index] > config.overlap_tokens + 1:
                windows[index] = max(windows[index] - excess, config.overlap_tokens + 1)
                retry.append(index)
            else:
                results[index] = [(piece, size) for piece, size in sized if piece.strip()]
        pending = retry
    return results


def _pack(
    paragraphs: list[str],
    counts: list[int],
    document: range,
    long_pieces: dict[int, list[tuple[str, int]]],
    separator: int,
    config: ChunkingConfig,
) -> list[TextChunk]:
    """Greedy packing of one document's paragraphs (`document`: their indices in the corpus-wide lists)."""
    chunks: list[TextChunk] = []
    current: deque[int] = deque()
    current_tokens = 0
    fresh = 0  # paragraphs of `current` that are not overlap carried from the previous chunk

    def emit(text: str, n_tokens: int) -> None:
        chunks.append(TextChunk(position=len(chunks), text=text, n_tokens=n_tokens))

    def overlap_tail() -> tuple[deque[int], int]:
        tail: deque[int] = deque()
        tail_tokens = 0
        for index in reversed(current):
            added = counts[index] + (separator if tail else 0)
            if tail_tokens + added > config.overlap_tokens:
                break
            tail.appendleft(index)
            tail_tokens += added
        return tail, tail_tokens

    for index in document:
        n_tokens = counts[index]
        if index in long_pieces:
            if fresh:
                emit(PARAGRAPH_SEPARATOR.join(paragraphs[i] for i in current), current_tokens)
            current, current_tokens, fresh = deque(), 0, 0
            for piece, piece_tokens in long_pieces[index]:
                emit(piece, piece_tokens)
            continue
        if current and current_tokens + separator + n_tokens > config.chunk_tokens:
            if fresh:
                emit(PARAGRAPH_SEPARATOR.join(paragraphs[i] for i in current), current_tokens)
                current, current_tokens = overlap_tail()
                fresh = 0
            while current and current_tokens + separator + n_tokens > config.chunk_tokens:
                dropped = current.popleft()
                current_tokens -= counts[dropped] + (separator if current else 0)
        current_tokens += n_tokens + (separator if current else 0)
        current.append(index)
        fresh += 1
    if fresh:
        emit(PARAGRAPH_SEPARATOR.join(paragraphs[i] for i in current), current_tokens)
    return chunks


def chunk_documents(texts: Sequence[str], tokenizer: Any, config: ChunkingConfig) -> list[list[TextChunk]]:
    """Chunks of each text, in order: the batched fast path (one tokenizer call for every paragraph)."""
    tokens = _Tokens(tokenizer)
    per_document = [split_paragraphs(text) for text in texts]
    flat = [paragraph for paragraphs in per_document for paragraph in paragraphs]
    if not flat:
        return [[] for _ in texts]
    # Paragraphs long enough in characters to be over the limit in tokens are encoded once, with offsets;
    # all others are only counted, the cheapest call there is. Those that still turn out too long pay twice.
    threshold = _LIKELY_LONG * config.chunk_tokens
    likely_long = [index for index, paragraph in enumerate(flat) if len(paragraph) > threshold]
    spans = dict(zip(likely_long, tokens.spans([flat[index] for index in likely_long]), strict=True))
    others = [index for index in range(len(flat)) if index not in spans]
    *other_counts, probe_a, probe_b, probe_joined = tokens.counts([flat[i] for i in others] + list(_SEPARATOR_PROBES))
    separator = max(probe_joined - probe_a - probe_b, 0)
    counts = [0] * len(flat)
    for index, n_tokens in zip(others, other_counts, strict=True):
        counts[index] = n_tokens
    for index, (n_tokens, _) in spans.items():
        counts[index] = n_tokens
    long_indices = [index for index, n_tokens in enumerate(counts) if n_tokens > config.chunk_tokens]
    missing = [index for index in long_indices if index not in spans]
    spans.update(zip(missing, tokens.spans([flat[index] for index in missing]), strict=True))
    split = _split_long(
        [flat[index] for index in long_indices], [spans[index] for index in long_indices], tokens, config
    )
    long_pieces = dict(zip(long_indices, split, strict=True))
    results = []
    start = 0
    for paragraphs in per_document:
        document = range(start, start + len(paragraphs))
        results.append(_pack(flat, counts, document, long_pieces, separator, config))
        start = document.stop
    return results


def chunk_document(text: str, tokenizer: Any, config: ChunkingConfig) -> list[TextChunk]:
    return chunk_documents([text], tokenizer, config)[0]


def drop_duplicate_chunks(documents: list[list[TextChunk]]) -> tuple[list[list[TextChunk]], int]:
    """Keep each distinct chunk text once, at its first occurrence in corpus order; positions renumbered.

    Boilerplate (disclaimers, navigation, repeated headers) otherwise weighs many times in training.
    Returns the documents' remaining chunks and how many were dropped.
    """
    seen: set[str] = set()
    kept_documents: list[list[TextChunk]] = []
    dropped = 0
    for chunks in documents:
        kept: list[TextChunk] = []
        for chunk in chunks:
            if chunk.text in seen:
                dropped += 1
                continue
            seen.add(chunk.text)
            kept.append(dataclasses.replace(chunk, position=len(kept)))
        kept_documents.append(kept)
    return kept_documents, dropped
