from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from workers.ml.ingest.chunking import (
    ChunkingConfig,
    TextChunk,
    chunk_document,
    chunk_documents,
    drop_duplicate_chunks,
    split_paragraphs,
)

# Everyday words, then what tokenizes awkwardly: accents, digits, punctuation, emoji with a modifier, CJK, a URL.
WORDS = (
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on",
    "not", "this", "are", "or", "from", "at", "which", "but", "have", "an", "they", "café", "naïve", "über",
    "12345", "3.14", "(paren)", "[x]", '"quote"', "it's", "don't", "—", "…", "👍🏽", "東京",
    "https://example.com/a?b=c", "#tag",
)  # fmt: skip


def paragraph(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def corpus(seed: int = 0, documents: int = 12) -> list[str]:
    rng = random.Random(seed)
    return [
        "\n\n".join(paragraph(rng, rng.choice([2, 8, 25, 60, 150, 400])) for _ in range(rng.randint(1, 12)))
        for _ in range(documents)
    ]


def encoded_length(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


class CallOnlyTokenizer:
    """The tokenizer seen only through __call__, as a slow (non-Rust) tokenizer would be."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer(*args, **kwargs)


@pytest.mark.parametrize(("chunk_tokens", "overlap_tokens"), [(64, 0), (64, 16), (256, 32)])
def test_no_chunk_exceeds_the_limit_and_every_count_is_exact(
    student_tokenizer: Any, chunk_tokens: int, overlap_tokens: int
) -> None:
    """Exact, no slack: joins at blank lines and cuts where words start are pre-tokenizer boundaries."""
    config = ChunkingConfig(chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)
    chunks = [chunk for document in chunk_documents(corpus(), student_tokenizer, config) for chunk in document]
    assert len(chunks) > 20
    for chunk in chunks:
        assert chunk.n_tokens == encoded_length(student_tokenizer, chunk.text), chunk.text
        assert chunk.n_tokens <= chunk_tokens


def test_without_overlap_the_chunks_reproduce_the_paragraphs(student_tokenizer: Any) -> None:
    rng = random.Random(1)
    text = "\n\n".join(paragraph(rng, rng.randint(3, 40)) for _ in range(60))
    chunks = chunk_document(text, student_tokenizer, ChunkingConfig(chunk_tokens=100, overlap_tokens=0))
    assert len(chunks) > 5
    assert "\n\n".join(chunk.text for chunk in chunks) == text
    assert [chunk.position for chunk in chunks] == list(range(len(chunks)))


def test_it_packs_whole_paragraphs_greedily(student_tokenizer: Any) -> None:
    paragraphs = ["alpha beta gamma delta"] * 12  # 4 tokens each, 2 more for each blank line between
    chunks = chunk_document(
        "\n\n".join(paragraphs), student_tokenizer, ChunkingConfig(chunk_tokens=16, overlap_tokens=0)
    )
    assert [chunk.n_tokens for chunk in chunks] == [16] * 4  # 4 + 2 + 4 + 2 + 4 = 16: three paragraphs a chunk
    assert all(chunk.text == "\n\n".join(paragraphs[:3]) for chunk in chunks)


def test_consecutive_chunks_share_trailing_paragraphs_when_overlap_is_configured(student_tokenizer: Any) -> None:
    paragraphs = [f"Paragraph number {number} says something short." for number in range(30)]
    config = ChunkingConfig(chunk_tokens=64, overlap_tokens=20)
    chunks = chunk_document("\n\n".join(paragraphs), student_tokenizer, config)
    assert len(chunks) > 3
    for previous, following in itertools.pairwise(chunks):
        before, after = split_paragraphs(previous.text), split_paragraphs(following.text)
        assert after[0] in before  # the next chunk starts with the previous chunk's last paragraph(s)
        shared = before[before.index(after[0]) :]
        assert after[: len(shared)] == shared
        assert encoded_length(student_tokenizer, "\n\n".join(shared)) <= config.overlap_tokens
    # Without their overlaps, the chunks still give every paragraph once, in order.
    seen: list[str] = []
    for chunk in chunks:
        seen.extend(part for part in split_paragraphs(chunk.text) if not seen or part not in seen[-3:])
    assert seen == paragraphs


def test_no_overlap_when_the_last_paragraph_alone_is_longer_than_the_overlap(student_tokenizer: Any) -> None:
    rng = random.Random(2)
    paragraphs = [paragraph(rng, 20) for _ in range(10)]  # ~20+ tokens each, overlap 8
    chunks = chunk_document(
        "\n\n".join(paragraphs), student_tokenizer, ChunkingConfig(chunk_tokens=64, overlap_tokens=8)
    )
    assert "\n\n".join(chunk.text for chunk in chunks) == "\n\n".join(paragraphs)


def test_it_splits_a_ten_thousand_token_paragraph_into_overlapping_pieces(student_tokenizer: Any) -> None:
    rng = random.Random(3)
    text = " ".join(rng.choice(WORDS[:30]) for _ in range(10_500))
    assert encoded_length(student_tokenizer, text) >= 10_000
    config = ChunkingConfig(chunk_tokens=256, overlap_tokens=32)
    chunks = chunk_document(text, student_tokenizer, config)
    assert len(chunks) >= 10_000 // (256 - 32)
    for chunk in chunks:
        assert chunk.n_tokens == encoded_length(student_tokenizer, chunk.text) <= 256
    for previous, following in itertools.pairwise(chunks):
        head = following.text.strip().split(" ")[:4]
        assert " ".join(head) in previous.text  # the overlap: the next piece repeats the previous one's end
    assert chunks[0].text.startswith(text[:50])
    assert chunks[-1].text.endswith(text[-50:])


def test_without_overlap_the_pieces_of_a_long_paragraph_are_exact_slices(student_tokenizer: Any) -> None:
    rng = random.Random(4)
    text = " ".join(rng.choice(WORDS) for _ in range(800))
    chunks = chunk_document(text, student_tokenizer, ChunkingConfig(chunk_tokens=50, overlap_tokens=0))
    assert len(chunks) > 10
    assert "".join(chunk.text for chunk in chunks) == text


def test_it_cuts_text_without_spaces_within_the_limit(student_tokenizer: Any) -> None:
    text = "東京都は日本の首都であり、世界最大級の都市圏を形成している。" * 40 + "👍🏽" * 50
    chunks = chunk_document(text, student_tokenizer, ChunkingConfig(chunk_tokens=40, overlap_tokens=5))
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk.n_tokens == encoded_length(student_tokenizer, chunk.text) <= 40


def test_a_long_paragraph_between_short_ones_keeps_the_order(student_tokenizer: Any) -> None:
    long = " ".join(["word"] * 300)
    text = f"Before it.\n\n{long}\n\nAfter it."
    chunks = chunk_document(text, student_tokenizer, ChunkingConfig(chunk_tokens=64, overlap_tokens=0))
    assert chunks[0].text == "Before it."
    assert chunks[-1].text == "After it."
    assert "".join(chunk.text for chunk in chunks[1:-1]) == long


@pytest.mark.parametrize("text", ["", "   ", "\n\n\n \n"])
def test_empty_text_gives_no_chunks(student_tokenizer: Any, text: str) -> None:
    assert chunk_document(text, student_tokenizer, ChunkingConfig()) == []
    assert chunk_documents([text, text], student_tokenizer, ChunkingConfig()) == [[], []]


def test_batched_chunking_equals_one_document_at_a_time(student_tokenizer: Any) -> None:
    texts = [*corpus(seed=5, documents=6), ""]
    config = ChunkingConfig(chunk_tokens=64, overlap_tokens=8)
    assert chunk_documents(texts, student_tokenizer, config) == [
        chunk_document(text, student_tokenizer, config) for text in texts
    ]


def test_a_tokenizer_without_a_rust_backend_gives_the_same_chunks(student_tokenizer: Any) -> None:
    texts = corpus(seed=6, documents=6)
    config = ChunkingConfig(chunk_tokens=64, overlap_tokens=8)
    assert chunk_documents(texts, CallOnlyTokenizer(student_tokenizer), config) == chunk_documents(
        texts, student_tokenizer, config
    )


@pytest.mark.parametrize(
    ("chunk_tokens", "overlap_tokens", "message"),
    [
        (8, 0, "chunk_tokens must be at least 16, got 8."),
        (64, 64, "overlap_tokens must be between 0 and chunk_tokens - 1 (63), got 64."),
        (64, -1, "overlap_tokens must be between 0 and chunk_tokens - 1 (63), got -1."),
    ],
)
def test_it_refuses_an_invalid_config(chunk_tokens: int, overlap_tokens: int, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ChunkingConfig(chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)


def test_it_splits_paragraphs_at_blank_lines_only() -> None:
    assert split_paragraphs("a\nb\n\nc\n \t\n\n d \n\n") == ["a\nb", "c", "d"]


def test_it_drops_duplicate_chunks_across_the_corpus_and_renumbers() -> None:
    def chunks(*texts: str) -> list[TextChunk]:
        return [TextChunk(position=position, text=text, n_tokens=1) for position, text in enumerate(texts)]

    documents = [chunks("header", "one", "header"), chunks("header", "two"), chunks("one")]
    kept, dropped = drop_duplicate_chunks(documents)
    assert dropped == 3
    assert kept == [chunks("header", "one"), chunks("two"), []]
