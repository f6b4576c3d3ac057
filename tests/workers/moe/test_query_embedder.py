"""The router's fast query path: the reference embedder's vectors, one text at a time, cached."""

from __future__ import annotations

import pytest
import torch

from workers.ml.embedder import SentenceEmbedder, shared_embedder
from workers.moe.query_embedder import QueryEmbedder
from workers.moe.router import Router

QUESTIONS = [
    "How do I define a custom Celery task retry policy?",
    "reset vpn password",
    "Explain the difference between forward KL and reverse KL divergence in knowledge distillation, with examples.",
    "Wie setze ich mein Passwort zurück?",
    "",
    "SELECT * FROM users WHERE id = 1; -- why is this slow???",
]

pytestmark = pytest.mark.realmodel


@pytest.fixture(scope="module")
def reference() -> SentenceEmbedder:
    return shared_embedder()


def test_it_matches_the_reference_embedder(reference: SentenceEmbedder) -> None:
    fast = QueryEmbedder(reference, cache_size=0)

    expected = reference.embed(QUESTIONS)  # (N, D)
    vectors = fast.embed(QUESTIONS)  # (N, D)

    assert fast.fast
    assert (fast.name, fast.dim) == (reference.name, reference.dim)
    assert vectors.shape == expected.shape
    assert vectors.dtype == torch.float32
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(len(QUESTIONS)))
    cosines = (vectors * expected).sum(dim=-1)
    # int8 activations (the default where the kernel exists) move short texts most: the empty one to ~0.97.
    assert cosines.min() >= (0.95 if fast.dtype == torch.qint8 else 0.99)
    assert cosines.median() >= 0.99


def test_it_matches_the_reference_exactly_in_float32(reference: SentenceEmbedder) -> None:
    exact = QueryEmbedder(reference, cache_size=0, dtype=torch.float32)

    torch.testing.assert_close(exact.embed(QUESTIONS), reference.embed(QUESTIONS), atol=1e-4, rtol=0)


def test_it_truncates_long_queries_as_the_reference_does(reference: SentenceEmbedder) -> None:
    fast = QueryEmbedder(reference, cache_size=0)
    long_text = " ".join(QUESTIONS) * 20  # ~600 tokens

    assert fast.max_length == reference.max_length == 256
    assert float(fast.embed_one(long_text) @ reference.embed([long_text])[0]) >= 0.99
    # Shorter on request; "word " is one token, and [CLS] and [SEP] take two of the 128.
    short = QueryEmbedder(reference, cache_size=0, max_length=128, dtype=torch.float32)
    torch.testing.assert_close(short.embed_one("word " * 1000), short.embed_one("word " * 126), atol=1e-5, rtol=0)


def test_it_caches_recent_queries(reference: SentenceEmbedder) -> None:
    fast = QueryEmbedder(reference, cache_size=2)

    first = fast.embed_one("a")
    fast.embed_one("b")
    assert fast.embed_one("a") is first  # a hit
    fast.embed_one("c")  # evicts "b", the least recently used
    assert set(fast._cache) == {"a", "c"}
    fast.clear_cache()
    assert fast.embed_one("a") is not first
    torch.testing.assert_close(fast.embed_one("a"), first)


def test_it_rejects_a_single_string_for_embed(reference: SentenceEmbedder) -> None:
    fast = QueryEmbedder(reference)

    with pytest.raises(TypeError):
        fast.embed("one string")
    assert fast.embed([]).shape == (0, reference.dim)
    with pytest.raises(ValueError, match="max_length"):
        QueryEmbedder(reference, max_length=1)


def test_the_router_uses_it_for_a_sentence_embedder(reference: SentenceEmbedder) -> None:
    router = Router(reference)

    assert isinstance(router.embedder, QueryEmbedder)
    assert router.embedder.name == reference.name


@pytest.mark.parametrize(
    ("dtype", "min_cosine"),
    [(torch.float32, 0.99999), (torch.float16, 0.9999), (torch.bfloat16, 0.999), (torch.qint8, 0.95)],
)
def test_each_weight_format_stays_close_to_the_reference(
    reference: SentenceEmbedder, dtype: torch.dtype, min_cosine: float
) -> None:
    fast = QueryEmbedder(reference, cache_size=0, dtype=dtype)

    cosines = (fast.embed(QUESTIONS) * reference.embed(QUESTIONS)).sum(dim=-1)

    assert fast.dtype == dtype
    assert cosines.min() >= min_cosine, cosines


def test_it_rejects_a_weight_format_it_has_no_kernel_for(reference: SentenceEmbedder) -> None:
    with pytest.raises(ValueError, match="weights"):
        QueryEmbedder(reference, dtype=torch.int32)


def test_it_tokenizes_as_the_reference_tokenizer_does(reference: SentenceEmbedder) -> None:
    texts = [*QUESTIONS, "word " * 1000, "日本語のテキスト 🙂\ttabs\nnewlines", "   "]
    for max_length in (256, 16):
        fast = QueryEmbedder(reference, cache_size=0, max_length=max_length)

        for text in texts:
            expected = reference.tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
            assert fast._tokenize(text) == expected, text
    # The shared tokenizer keeps its own settings: the copy is the one set to truncate.
    assert len(reference.tokenizer("word " * 1000, truncation=False)["input_ids"]) > 1000


def test_it_picks_int8_where_the_kernel_exists_then_native_bf16_then_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.moe import query_embedder

    for int8, bf16, expected in [
        (True, True, torch.qint8),
        (True, False, torch.qint8),
        (False, True, torch.bfloat16),
        (False, False, torch.float32),
    ]:
        monkeypatch.setattr(query_embedder, "_int8_is_available", lambda int8=int8: int8)
        monkeypatch.setattr(query_embedder, "_bf16_is_native", lambda bf16=bf16: bf16)
        assert query_embedder.default_dtype() == expected


def test_it_names_the_weight_formats_an_operator_can_ask_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.moe import query_embedder

    monkeypatch.setattr(query_embedder, "_bf16_is_native", lambda: True)
    assert [query_embedder.weight_dtype(name) for name in ("auto", "INT8", " bf16", "fp16", "fp32")] == [
        None,
        torch.qint8,
        torch.bfloat16,
        torch.float16,
        torch.float32,
    ]
    with pytest.raises(ValueError, match="int8, bf16, fp16, fp32"):
        query_embedder.weight_dtype("int4")
    monkeypatch.setattr(query_embedder, "_bf16_is_native", lambda: False)
    with pytest.raises(ValueError, match="native bf16"):
        query_embedder.weight_dtype("bf16")  # emulated bf16 is slower than fp32: refused, fp16 suggested
