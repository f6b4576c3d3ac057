"""Routing signatures: k-means centroids of an expert's texts in the sentence embedder's space."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from workers.ml.distill.signature import SIGNATURE_FILE, RoutingSignature, compute_signature, kmeans
from workers.ml.embedder import SentenceEmbedder, shared_embedder

IT_TEXTS = [
    "Restart the VPN client after changing your password.",
    "The laptop needs the latest operating system update.",
    "Reset two-factor authentication from the IT portal.",
    "Printers on floor three need a new network driver.",
    "Wi-Fi certificates expire every year and must be renewed.",
    "Install the antivirus agent before connecting to the network.",
]
COOKING_TEXTS = [
    "Whisk the eggs with sugar until pale and fluffy.",
    "Simmer the tomato sauce with garlic for twenty minutes.",
    "Knead the bread dough and let it rise overnight.",
    "Roast the vegetables with olive oil and rosemary.",
    "Season the soup with salt, pepper and fresh basil.",
    "Bake the chocolate cake at 180 degrees for forty minutes.",
]


class FakeEmbedder:
    """Fixed unit vectors by text, so k-means can be checked on known geometry."""

    name = "fake:embedder"

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors
        self.dim = len(next(iter(vectors.values())))
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        self.calls.append(list(texts))
        return torch.nn.functional.normalize(torch.tensor([self.vectors[text] for text in texts]), dim=-1)


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return shared_embedder()


def test_it_finds_one_centroid_per_topic(embedder: SentenceEmbedder) -> None:
    texts = [text for pair in zip(IT_TEXTS, COOKING_TEXTS, strict=True) for text in pair]  # interleaved

    signature = compute_signature(embedder, texts, k=2, seed=0)

    assert signature.embedder == embedder.name
    assert signature.dim == 384
    assert sorted(signature.counts) == [6, 6]
    centroids = signature.centroid_tensor()  # (2, 384)
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)
    nearest_it = (embedder.embed(IT_TEXTS) @ centroids.T).argmax(dim=1)  # (6,)
    nearest_cooking = (embedder.embed(COOKING_TEXTS) @ centroids.T).argmax(dim=1)  # (6,)
    assert nearest_it.unique().numel() == 1
    assert nearest_cooking.unique().numel() == 1
    assert nearest_it[0] != nearest_cooking[0]
    # The router's score: a query on a topic lies nearer its centroid than texts of nothing in the corpus.
    query = embedder.embed(["How do I reconnect to the VPN?", "Quantum chromodynamics of gluons."])
    near, far = signature.similarity(query)
    assert near > far


def test_it_is_deterministic_by_seed() -> None:
    generator = torch.Generator().manual_seed(3)
    vectors = {f"t{i}": torch.randn(8, generator=generator).tolist() for i in range(40)}
    texts = list(vectors)

    first = compute_signature(FakeEmbedder(vectors), texts, k=4, seed=7)  # type: ignore[arg-type]
    second = compute_signature(FakeEmbedder(vectors), texts, k=4, seed=7)  # type: ignore[arg-type]

    assert first == second
    assert sum(first.counts) == 40
    assert first.counts == sorted(first.counts, reverse=True)


def test_it_separates_known_clusters_exactly() -> None:
    vectors = {f"a{i}": [1.0, 0.05 * i, 0.0] for i in range(5)}
    vectors |= {f"b{i}": [0.0, 0.05 * i, 1.0] for i in range(3)}

    centroids, assignment = kmeans(torch.nn.functional.normalize(torch.tensor(list(vectors.values())), dim=-1), k=2)

    assert centroids.shape == (2, 3)
    assert assignment[:5].unique().numel() == 1
    assert assignment[5:].unique().numel() == 1
    assert assignment[0] != assignment[5]


def test_it_handles_more_centroids_than_texts() -> None:
    vectors = {"one": [1.0, 0.0], "two": [0.0, 1.0], "dup": [1.0, 0.0]}

    signature = compute_signature(FakeEmbedder(vectors), ["one", "two"], k=4)  # type: ignore[arg-type]
    duplicates = compute_signature(FakeEmbedder(vectors), ["one", "dup", "one"], k=3)  # type: ignore[arg-type]

    assert signature.counts == [1, 1]
    assert len(signature.centroids) == 2
    # Three identical points: one centroid, never an empty cluster.
    assert duplicates.counts == [3]
    assert duplicates.centroids == [[1.0, 0.0]]


def test_it_samples_at_most_max_texts_deterministically() -> None:
    vectors = {f"t{i}": [1.0, float(i % 5)] for i in range(50)}
    first, second = FakeEmbedder(vectors), FakeEmbedder(vectors)

    signature = compute_signature(first, list(vectors), k=2, seed=1, max_texts=10)  # type: ignore[arg-type]
    compute_signature(second, list(vectors), k=2, seed=1, max_texts=10)  # type: ignore[arg-type]

    assert len(first.calls[0]) == 10
    assert first.calls == second.calls
    assert sum(signature.counts) == 10


def test_it_refuses_no_text() -> None:
    with pytest.raises(ValueError, match="at least one"):
        compute_signature(FakeEmbedder({"x": [1.0]}), ["", "  "])  # type: ignore[arg-type]


def test_it_round_trips_through_json(tmp_path: Path) -> None:
    signature = RoutingSignature(
        embedder="packaged:all-minilm-l6-v2", dim=3, centroids=[[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], counts=[5, 2]
    )

    assert RoutingSignature.from_json(json.loads(json.dumps(signature.to_json()))) == signature
    written = signature.save(tmp_path)
    assert written == tmp_path / SIGNATURE_FILE
    assert RoutingSignature.load(tmp_path) == signature
    assert RoutingSignature.load(written) == signature
    other = signature.save(tmp_path / "elsewhere.json")
    assert RoutingSignature.load(other) == signature
    with pytest.raises(ValueError, match="2 values"):
        RoutingSignature.from_json({"embedder": "x", "dim": 2, "centroids": [[1.0]], "counts": [1]})
    with pytest.raises(ValueError, match="known format"):
        RoutingSignature.from_json({"format": 99})
