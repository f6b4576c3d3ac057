"""The MoE router: which of a tenant's experts should answer a query, and with what weights.

Each expert is known by its routing signature (workers/ml/distill/signature.py): unit centroids of its training
text in the sentence embedder's space, with the number of texts each one stands for. Two numbers per expert:
- its cosine: the plain max cosine of the query to the expert's centroids. It says whether the query is on the
  expert's topic at all, and the fallback threshold is compared with it.
- its ranking score: a count-weighted soft maximum over the centroids,
      score_e = tau * log sum_c (n_c / N_e) * exp(cos_c / tau),   tau = `centroid_temperature`
  which is at most the cosine, and lower when the nearest centroid is a small cluster (a stray docstring about
  e-mail in a maths library). In bench/route.py (16 centroids) it ranks 95% of held-out questions right (the plain
  max: 88%), but its value also depends on the cluster sizes, so it does not separate on-topic from off-topic
  queries by a threshold: the plain max does that. tau = 0 ranks by the plain max.
The caller (the web app, from its database) names the candidate experts; only they can be chosen, whatever else
is registered.

Routing a query:
1. Embed it with the embedder the signatures were computed with (QueryEmbedder: 3-6 ms on 2 cores).
2. Score every candidate: one matrix-vector product over the candidates' stacked centroids, a segment max per
   expert (scatter_reduce amax: the cosine), then a segment log-sum-exp of the count-weighted, max-shifted
   cosines (index_add of exp values: the ranking score). The stack is rebuilt lazily after a registration, never
   per query.
3. If the best cosine of any candidate is below `threshold` and `fallback_to_base`, the base model answers alone
   (the question is off every expert's topic). Otherwise the `top_k` best-ranked experts answer, weighted by a
   softmax of their ranking scores at `temperature`.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from workers.moe.query_embedder import QueryEmbedder

if TYPE_CHECKING:
    from workers.ml.distill.signature import RoutingSignature
    from workers.ml.embedder import SentenceEmbedder

__all__ = ["QueryEncoder", "Router", "RouterSettings", "RoutingDecision", "SignatureMismatch"]


class SignatureMismatch(ValueError):
    """A signature computed with another embedder (or dimension) than the router's: its cosines would mean nothing."""


class QueryEncoder(Protocol):
    """What the router needs of an embedder: QueryEmbedder, or a test's fake."""

    name: str
    dim: int

    def embed_one(self, text: str) -> torch.Tensor: ...


@dataclass(frozen=True)
class RouterSettings:
    top_k: int = field(default=1, metadata={"help": "How many experts answer a query (at most the candidates)."})
    temperature: float = field(
        default=0.05,
        metadata={
            "help": "Softmax temperature over the chosen experts' ranking scores. Scores of related topics differ "
            "by a few hundredths, so 0.05 turns a 0.05 lead into weights of ~0.73/0.27; larger values even out."
        },
    )
    threshold: float = field(
        default=0.26,
        metadata={
            "help": "Below this best plain max cosine (not the ranking score) the query is off every expert's topic "
            "and the base answers. MiniLM cosines of questions to documentation signatures are low: in "
            "bench/route.py (16 centroids), off-topic questions reach at most ~0.27, on-topic ones mostly 0.26-0.67 "
            "(a tenth of them lower). 0.26 is the lowest that sends >= 95% of the off-topic questions to the base "
            "(21 of 22), at ~10% of on-topic ones falling back too."
        },
    )
    centroid_temperature: float = field(
        default=0.1,
        metadata={
            "help": "Temperature of the count-weighted soft maximum over an expert's centroids that ranks the "
            "experts: tau * log sum_c (n_c / N) * exp(cos_c / tau). 0 ranks by the plain max cosine; small values "
            "approach it, larger ones let big clusters outweigh a slightly closer small one. 0.1 with 16 "
            "centroids: 95% top-1 in bench/route.py. The threshold always compares the plain max cosine."
        },
    )
    fallback_to_base: bool = field(
        default=True,
        metadata={"help": "Below the threshold, let the base model answer alone; False: the best experts anyway."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be a whole number of at least 1, not {self.top_k!r}.")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature must be a positive number, not {self.temperature!r}.")
        if not math.isfinite(self.threshold) or not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a cosine: it must lie between -1 and 1, not {self.threshold!r}.")
        temperature = self.centroid_temperature
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not math.isfinite(temperature):
            raise ValueError(f"centroid_temperature must be a number of at least 0, not {temperature!r}.")
        if temperature < 0:
            raise ValueError(f"centroid_temperature must be at least 0 (0: the plain max), not {temperature!r}.")
        if not isinstance(self.fallback_to_base, bool):
            raise ValueError(f"fallback_to_base must be true or false, not {self.fallback_to_base!r}.")


@dataclass(frozen=True)
class RoutingDecision:
    experts: list[tuple[str, float]]  # chosen ids with weights summing to 1, best first; empty when falling back
    fallback: bool  # the base model answers alone
    # The best plain max cosine among the candidates, what `threshold` is compared with; None without known candidates.
    best_score: float | None
    scores: list[tuple[str, float]]  # every known candidate's ranking score (soft max over centroids), best first
    unknown: list[str] = field(default_factory=list)  # candidate ids the router has no signature for
    threshold: float = 0.0  # the threshold the decision used (the UI draws it over the bars)
    embed_ms: float = 0.0
    score_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "experts": [{"id": expert_id, "weight": round(weight, 6)} for expert_id, weight in self.experts],
            "fallback": self.fallback,
            "best_score": None if self.best_score is None else round(self.best_score, 6),
            "threshold": self.threshold,
            "scores": [{"id": expert_id, "score": round(score, 6)} for expert_id, score in self.scores],
            "unknown": list(self.unknown),
            "timing_ms": {"embed": round(self.embed_ms, 3), "score": round(self.score_ms, 3)},
        }


@dataclass(frozen=True)
class _Stack:
    """An immutable snapshot of the registry: queries read it without a lock while registrations build the next."""

    ids: list[str]  # expert ids, in row-block order
    index: dict[str, int]  # expert id -> position in ids
    centroids: torch.Tensor  # (C, D) every expert's centroids, one contiguous block of rows per expert
    log_weights: torch.Tensor  # (C,) log(n_c / N_e): each centroid's share of its expert's texts
    starts: torch.Tensor  # (E,) first row of each expert's block
    counts: torch.Tensor  # (E,) rows in each expert's block


class Router:
    """A registry of expert signatures and the scoring of queries against a caller-chosen subset of them."""

    def __init__(self, embedder: QueryEncoder | SentenceEmbedder) -> None:
        # A corpus embedder (SentenceEmbedder) gets the fast single-query path in front of it.
        self.embedder: QueryEncoder = embedder if hasattr(embedder, "embed_one") else QueryEmbedder(embedder)
        self._signatures: dict[str, torch.Tensor] = {}  # id -> (k, D) unit centroids
        self._log_weights: dict[str, torch.Tensor] = {}  # id -> (k,) log share of the expert's texts per centroid
        self._lock = threading.Lock()
        self._stack: _Stack | None = None  # None: rebuild before the next query

    @classmethod
    def load(cls, spec: str | None = None) -> Router:
        """A router over the embedder `spec` (the platform default when None)."""
        return cls(QueryEmbedder.load(spec))

    # ------------------------------------------------------------ registry

    def register(self, expert_id: str, signature: RoutingSignature) -> None:
        """Add (or replace) an expert. Raises SignatureMismatch for another embedder's signature."""
        if not isinstance(expert_id, str) or not expert_id:
            raise ValueError("An expert id must be a non-empty string.")
        if signature.embedder != self.embedder.name:
            raise SignatureMismatch(
                f"Expert {expert_id!r} was signed with the embedder {signature.embedder!r}, but this router embeds "
                f"queries with {self.embedder.name!r}; recompute its signature with {self.embedder.name!r}."
            )
        if signature.dim != self.embedder.dim:
            raise SignatureMismatch(
                f"Expert {expert_id!r} has {signature.dim}-dimensional centroids; the router's embedder has "
                f"{self.embedder.dim} dimensions."
            )
        centroids = signature.centroid_tensor()  # (k, D)
        if centroids.shape[0] == 0:
            raise ValueError(f"Expert {expert_id!r} has a signature without centroids.")
        # Signatures are unit already; normalising again keeps a hand-edited file from skewing cosines.
        centroids = torch.nn.functional.normalize(centroids, p=2, dim=-1)
        counts = torch.tensor(signature.counts, dtype=torch.float64)  # (k,)
        if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
            raise ValueError(f"Expert {expert_id!r} has a signature with negative counts.")
        if float(counts.sum()) <= 0:
            counts = torch.ones_like(counts)  # no counts recorded: every centroid weighs the same
        log_weights = torch.log(counts / counts.sum()).float()  # (k,); a zero count: -inf, the centroid never ranks
        with self._lock:
            self._signatures[expert_id] = centroids
            self._log_weights[expert_id] = log_weights
            self._stack = None

    def unregister(self, expert_id: str) -> None:
        """Forget an expert; unknown ids are ignored (unregistering is idempotent)."""
        with self._lock:
            self._log_weights.pop(expert_id, None)
            if self._signatures.pop(expert_id, None) is not None:
                self._stack = None

    def known(self, expert_id: str) -> bool:
        return expert_id in self._signatures

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._signatures)

    def __len__(self) -> int:
        return len(self._signatures)

    def _snapshot(self) -> _Stack:
        with self._lock:
            if self._stack is None:
                ids = list(self._signatures)
                blocks = [self._signatures[expert_id] for expert_id in ids]
                counts = torch.tensor([block.shape[0] for block in blocks], dtype=torch.long)  # (E,)
                self._stack = _Stack(
                    ids=ids,
                    index={expert_id: position for position, expert_id in enumerate(ids)},
                    centroids=torch.cat(blocks) if blocks else torch.empty((0, self.embedder.dim)),  # (C, D)
                    log_weights=torch.cat([self._log_weights[expert_id] for expert_id in ids])
                    if blocks
                    else torch.empty((0,)),  # (C,)
                    starts=torch.cumsum(counts, 0) - counts,  # (E,)
                    counts=counts,
                )
            return self._stack

    # ------------------------------------------------------------ routing

    def route(self, query: str, candidates: Sequence[str], settings: RouterSettings) -> RoutingDecision:
        """Embed `query` and route it among `candidates` (ids the caller allows; unknown ones are reported)."""
        if not any(self.known(expert_id) for expert_id in candidates):
            return self.route_embedding(None, candidates, settings)  # no embedding needed to fall back
        started = time.perf_counter()
        embedding = self.embedder.embed_one(query)  # (D,)
        embed_ms = (time.perf_counter() - started) * 1000
        decision = self.route_embedding(embedding, candidates, settings)
        return dataclasses.replace(decision, embed_ms=embed_ms)

    def route_embedding(
        self, embedding: torch.Tensor | None, candidates: Sequence[str], settings: RouterSettings
    ) -> RoutingDecision:
        """Route an already embedded query: (D,) unit vector from this router's embedder."""
        started = time.perf_counter()
        if isinstance(candidates, str):
            raise TypeError("candidates is a sequence of expert ids, not one string.")
        stack = self._snapshot()
        chosen: list[str] = []
        unknown: list[str] = []
        for expert_id in dict.fromkeys(candidates):  # de-duplicated, caller's order kept for ties
            (chosen if expert_id in stack.index else unknown).append(expert_id)
        if not chosen:
            return RoutingDecision(
                experts=[], fallback=True, best_score=None, scores=[], unknown=unknown, threshold=settings.threshold
            )
        if embedding is None:
            raise ValueError("An embedding is needed to route among known candidates.")
        query = embedding.reshape(-1).float()  # (D,)
        if query.shape[0] != stack.centroids.shape[1]:
            raise ValueError(
                f"The query embedding has {query.shape[0]} values; the signatures have {stack.centroids.shape[1]}."
            )

        positions = torch.tensor([stack.index[expert_id] for expert_id in chosen])  # (E_c,)
        scores, cosines = self._scores(stack, positions, query, settings.centroid_temperature)  # (E_c,), (E_c,)
        # Best first; a stable sort keeps the caller's order between equal scores.
        order = torch.sort(scores, descending=True, stable=True).indices  # (E_c,)
        # One tolist() for all scores: indexing a tensor per element costs ~2 us each, 2 ms at 1,000 experts.
        ranked = list(zip([chosen[position] for position in order.tolist()], scores[order].tolist(), strict=True))
        # The threshold asks whether the query is on any candidate's topic: the plain max cosine, not the ranking
        # score (which also depends on cluster sizes).
        best = float(cosines.max())
        if best < settings.threshold and settings.fallback_to_base:
            experts: list[tuple[str, float]] = []
        else:
            top = order[: settings.top_k]  # (K,)
            weights = torch.softmax(scores[top].double() / settings.temperature, dim=0)  # (K,)
            experts = [
                (chosen[position], float(weight))
                for position, weight in zip(top.tolist(), weights.tolist(), strict=True)
            ]
        return RoutingDecision(
            experts=experts,
            fallback=not experts,
            best_score=best,
            scores=ranked,
            unknown=unknown,
            threshold=settings.threshold,
            score_ms=(time.perf_counter() - started) * 1000,
        )

    @staticmethod
    def _scores(
        stack: _Stack, experts: torch.Tensor, query: torch.Tensor, centroid_temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ranking scores, max cosines) of `experts`: (E_c,) expert positions, (D,) query -> (E_c,), (E_c,).

        Ranking score: tau * log sum_c w_c exp(cos_c / tau) = m + tau * log sum_c exp(log w_c + (cos_c - m) / tau),
        m the expert's max cosine: every exponent is at most 0, so nothing overflows at small tau.
        """
        counts = stack.counts[experts]  # (E_c,)
        owner = torch.repeat_interleave(torch.arange(experts.shape[0]), counts)  # (R,) candidate of each row
        first_of_block = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)  # (R,)
        rows = torch.repeat_interleave(stack.starts[experts], counts) + (torch.arange(owner.shape[0]) - first_of_block)
        if rows.shape[0] * 2 < stack.centroids.shape[0]:
            cosines = stack.centroids.index_select(0, rows) @ query  # (R, D) @ (D,) -> (R,): a few of many experts
        else:
            cosines = (stack.centroids @ query).index_select(0, rows)  # (C,) -> (R,): no copy of most rows
        best = torch.full((experts.shape[0],), -math.inf)  # (E_c,)
        best = best.scatter_reduce(0, owner, cosines, reduce="amax", include_self=True)  # (E_c,)
        if centroid_temperature == 0:
            return best, best
        log_weights = stack.log_weights.index_select(0, rows)  # (R,)
        terms = torch.exp(log_weights + (cosines - best.index_select(0, owner)) / centroid_temperature)  # (R,)
        sums = torch.zeros(experts.shape[0]).index_add_(0, owner, terms)  # (E_c,), >= w of the nearest centroid
        # Only a hand-made signature whose nearest centroid counts 0 texts could underflow to log(0) = -inf.
        sums = sums.clamp_min(torch.finfo(sums.dtype).tiny)
        return best + centroid_temperature * torch.log(sums), best
