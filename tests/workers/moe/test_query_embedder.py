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
    assert (vectors * expected).sum(dim=-1).min() >= 0.99


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
