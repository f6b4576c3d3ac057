"""An expert's routing signature: where its training text lies in the sentence embedder's space.

The MoE router embeds a query with the same embedder and prefers the experts whose centroids lie closest (cosine).
A few k-means centroids rather than one mean: a corpus often mixes topics (HR policy and the VPN manual), and
the mean of two topics can lie near neither.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # the embedder pulls in transformers; the signature file itself needs only json
    from workers.ml.embedder import SentenceEmbedder

__all__ = ["SIGNATURE_FILE", "RoutingSignature", "compute_signature", "kmeans"]

SIGNATURE_FILE = "signature.json"
FORMAT_VERSION = 1
KMEANS_ITERATIONS = 50


@dataclass(frozen=True)
class RoutingSignature:
    embedder: str  # the embedder spec: a router must embed queries with the same one
    dim: int
    centroids: list[list[float]]  # k unit vectors of length dim, largest cluster first
    counts: list[int]  # texts assigned to each centroid

    def __post_init__(self) -> None:
        if len(self.centroids) != len(self.counts):
            raise ValueError(f"{len(self.centroids)} centroids but {len(self.counts)} counts.")
        if any(len(centroid) != self.dim for centroid in self.centroids):
            raise ValueError(f"Every centroid must have {self.dim} values.")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "embedder": self.embedder,
            "dim": self.dim,
            "centroids": self.centroids,
            "counts": self.counts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoutingSignature:
        if not isinstance(data, dict) or data.get("format", FORMAT_VERSION) != FORMAT_VERSION:
            raise ValueError("Not a routing signature of a known format.")
        try:
            return cls(
                embedder=str(data["embedder"]),
                dim=int(data["dim"]),
                centroids=[[float(value) for value in centroid] for centroid in data["centroids"]],
                counts=[int(count) for count in data["counts"]],
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"Malformed routing signature ({exc}).") from exc

    def save(self, path: Path) -> Path:
        """Write the signature to `path`, or to `path`/signature.json when `path` is a directory."""
        target = _file(path)
        target.write_text(json.dumps(self.to_json()) + "\n", encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: Path) -> RoutingSignature:
        return cls.from_json(json.loads(_file(path).read_text(encoding="utf-8")))

    def centroid_tensor(self) -> torch.Tensor:
        """(k, dim) float32"""
        return torch.tensor(self.centroids, dtype=torch.float32).reshape(len(self.centroids), self.dim)

    def similarity(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine of each unit-length embedding to its nearest centroid: (N, dim) -> (N,)"""
        return (embeddings.float() @ self.centroid_tensor().T).amax(dim=-1)  # (N, k) -> (N,)


def _file(path: Path) -> Path:
    path = Path(path)
    return path / SIGNATURE_FILE if path.is_dir() else path


def _sample(count: int, limit: int, seed: int) -> list[int]:
    if count <= limit:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(count), limit))  # noqa: S311 - sampling, not security


def kmeans(
    points: torch.Tensor, k: int, seed: int = 0, iterations: int = KMEANS_ITERATIONS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded k-means++ then Lloyd's iterations on (N, D) points; returns (centroids (k', D), assignment (N,)).

    k' = min(k, distinct points): duplicates cannot seed two clusters, and no returned cluster is empty.
    """
    points = points.float()
    count = points.shape[0]
    generator = torch.Generator().manual_seed(seed)
    # k-means++: each new seed drawn with probability proportional to its squared distance to the nearest seed.
    chosen = [int(torch.randint(count, (1,), generator=generator))]
    nearest = ((points - points[chosen[0]]) ** 2).sum(-1)  # (N,)
    while len(chosen) < min(k, count):
        total = nearest.sum()
        if total <= 1e-12:
            break  # every point coincides with a seed: fewer distinct points than k
        pick = int(torch.multinomial(nearest / total, 1, generator=generator))
        chosen.append(pick)
        nearest = torch.minimum(nearest, ((points - points[pick]) ** 2).sum(-1))
    centroids = points[chosen].clone()  # (k', D)
    assignment = torch.full((count,), -1, dtype=torch.long)
    for _ in range(iterations):
        new_assignment = torch.cdist(points, centroids).argmin(dim=1)  # (N, k') -> (N,)
        if torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        for cluster in range(centroids.shape[0]):
            members = points[assignment == cluster]  # (m, D)
            if members.shape[0]:
                centroids[cluster] = members.mean(dim=0)
            else:
                # An emptied cluster takes over the point worst served by its centroid; it is non-empty next round.
                worst = int(((points - centroids[assignment]) ** 2).sum(-1).argmax())
                centroids[cluster] = points[worst]
    assignment = torch.cdist(points, centroids).argmin(dim=1)
    keep = torch.bincount(assignment, minlength=centroids.shape[0]) > 0
    centroids = centroids[keep]
    return centroids, torch.cdist(points, centroids).argmin(dim=1)


def compute_signature(
    embedder: SentenceEmbedder,
    texts: Sequence[str],
    k: int = 4,
    seed: int = 0,
    max_texts: int = 2000,
) -> RoutingSignature:
    """Embed (a seeded sample of at most max_texts of) `texts` and summarise them as k unit centroids."""
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise ValueError("A routing signature needs at least one non-empty text.")
    if k < 1:
        raise ValueError("k must be at least 1.")
    sample = [texts[index] for index in _sample(len(texts), max_texts, seed)]
    embeddings = embedder.embed(sample)  # (N, D), unit length
    centroids, assignment = kmeans(embeddings, min(k, len(sample)), seed=seed)
    counts = torch.bincount(assignment, minlength=centroids.shape[0])  # (k',)
    # Means of unit vectors are shorter than 1; cosine routing wants them back on the sphere.
    norms = centroids.norm(dim=-1, keepdim=True)  # (k', 1)
    centroids = torch.where(norms > 1e-6, centroids / norms.clamp(min=1e-12), centroids)
    order = sorted(range(centroids.shape[0]), key=lambda cluster: (-int(counts[cluster]), cluster))
    return RoutingSignature(
        embedder=embedder.name,
        dim=int(embeddings.shape[1]),
        centroids=[[_round(value) for value in centroids[cluster].tolist()] for cluster in order],
        counts=[int(counts[cluster]) for cluster in order],
    )


def _round(value: float) -> float:
    # 7 significant digits is float32's precision; it keeps signature.json small and its values exact on reload.
    return float(f"{value:.7g}") if math.isfinite(value) else 0.0
