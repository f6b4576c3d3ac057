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
1. Embed it with the embedder the signatures were computed with (QueryEmbedder: ~3-4 ms on 2 cores).
2. Score every candidate: one matrix-vector product over the candidates' stacked centroids (torch), then, per
   expert's block of rows, a max (the cosine) and a log-sum-exp of the count-weighted, max-shifted cosines (the
   ranking score), as numpy reduceat over the blocks: ~10 array operations a query, where torch's per-op dispatch
   and thread hand-offs cost more than the arithmetic. The stack is rebuilt lazily after a registration, never per
   query; the rows and blocks of a candidate list (a mixture sends the same list each time) are cached per stack.
   From HALF_PRECISION_MIN_ROWS centroid rows on (~250 experts of 8), the product reads an fp16 copy of the
   centroids (half the bytes: memory-bound), and the experts that could still be chosen or hold the best cosine
   within fp16's error bound are scored again in float32, so every decision is the float32 one (see `_scores`).
3. If the best cosine of any candidate is below `threshold` and `fallback_to_base`, the base model answers alone
   (the question is off every expert's topic). Otherwise the `top_k` best-ranked experts answer, weighted by a
   softmax of their ranking scores at `temperature`.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
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
    # Every known candidate's ranking score (soft max over centroids), best first. The chosen experts' are exact;
    # with many centroid rows the others' are from fp16 centroids, within ~1e-5 (at most 2^-11) of float32.
    scores: list[tuple[str, float]]
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


# At or above this many centroid rows, a query's cosines are first computed from a half-precision copy of the
# centroids (half the bytes to read), and only the experts that could still change the decision are scored again
# in float32 (`_scores`). Below it, float32 throughout is already cheap (~0.1 ms).
HALF_PRECISION_MIN_ROWS = 2048
PLAN_CACHE_SIZE = 32  # candidate lists remembered per registry snapshot (one per organisation's mixture, typically)


def _pack_half(centroids: torch.Tensor) -> Any | None:
    """fbgemm's fp16-weight matrix for y = x C^T: fp16 storage, fp32 inputs and accumulation; None if unavailable.

    torch.ops.quantized.linear_dynamic_fp16 is what quantize_dynamic(dtype=torch.float16) runs; any failure keeps
    the float32 path (same decisions, twice the bytes).
    """
    if centroids.shape[0] == 0:
        return None
    try:
        packed = torch.ops.quantized.linear_prepack_fp16(centroids, None)
        torch.ops.quantized.linear_dynamic_fp16(centroids[:1], packed)
        return packed
    except (AttributeError, RuntimeError, NotImplementedError):
        return None


def _unpack_half(packed: Any, centroids: torch.Tensor) -> torch.Tensor:
    """(C, D) float32 values of the fp16 copy, as fbgemm stored them (torch's rounding if it cannot say)."""
    try:
        unpacked: torch.Tensor = torch.ops.quantized.linear_unpack_fp16(packed)[0]  # (C, D) fp16 values
        return unpacked.float()
    except (AttributeError, RuntimeError, NotImplementedError):
        return centroids.half().float()


def _block_starts(counts: np.ndarray) -> np.ndarray:
    """(B,) where each block begins when blocks of `counts` rows are laid out one after another."""
    starts: np.ndarray = np.cumsum(counts) - counts
    return starts


def _block_rows(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(sum(counts),) the positions start, start+1, ... start+count-1 of each block, block after block."""
    total = int(counts.sum())
    return np.repeat(starts - _block_starts(counts), counts) + np.arange(total, dtype=np.int64)


@dataclass(frozen=True)
class _Blocks:
    """Experts as consecutive blocks of centroid rows: what the soft maximum reduces over."""

    starts: np.ndarray  # (E,) first row of each expert's block, in the rows being scored
    owner: np.ndarray  # (R,) the expert of each row
    log_weights: np.ndarray  # (R,) float64 log share of each centroid in its expert's texts (-inf for a zero count)

    @classmethod
    def of(cls, counts: np.ndarray, log_weights: np.ndarray) -> _Blocks:
        return cls(
            starts=_block_starts(counts),
            owner=np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts),
            log_weights=log_weights,
        )

    def soft_max(self, cosines: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
        """(ranking scores, max cosines), float64 (E,) each, from the (R,) cosines of the blocks' rows.

        Ranking score: tau * log sum_c w_c exp(cos_c / tau) = m + tau * log sum_c exp(log w_c + (cos_c - m) / tau),
        m the expert's max cosine: every exponent is at most log w_c <= 0, so nothing overflows at small tau.
        numpy's reduceat does the per-expert max and sum in one pass each, with none of torch's per-op dispatch and
        thread hand-off (~10 us each on these sizes): the whole soft maximum of 1,000 experts costs ~0.1 ms.
        """
        cosines = cosines.astype(np.float64)
        best = np.maximum.reduceat(cosines, self.starts)  # (E,)
        if tau == 0:
            return best, best
        exponents = (cosines - best[self.owner]) / tau + self.log_weights  # (R,)
        sums = np.add.reduceat(np.exp(exponents), self.starts)  # (E,)
        # The nearest centroid's term is its weight w > 0, so a sum is 0 only for a hand-made signature whose
        # nearest centroid counts 0 texts: clamped to the smallest normal float.
        return best + tau * np.log(np.maximum(sums, np.finfo(np.float64).tiny)), best


@dataclass(frozen=True)
class _Plan:
    """How to score one list of candidates against one snapshot: built once, reused by every query with that list."""

    chosen: list[str]  # known candidates, de-duplicated, in the caller's order
    unknown: list[str]  # candidates without a signature
    rows: np.ndarray | None  # (R,) the chosen experts' centroid rows in the stack, block by block; None: every row
    row_index: torch.Tensor | None  # (R,) the same rows as a tensor, for gathering centroids
    counts: np.ndarray  # (E_c,) centroid rows of each chosen expert
    blocks: _Blocks  # the chosen experts' blocks within the R rows
    error: np.ndarray  # (E_c,) per expert, the largest |c - half(c)|_2 of its rows (0 without the half copy)
    half: bool  # score through the half-precision copy first


@dataclass(frozen=True)
class _Stack:
    """An immutable snapshot of the registry: queries read it without a lock while registrations build the next."""

    ids: list[str]  # expert ids, in row-block order
    index: dict[str, int]  # expert id -> position in ids
    centroids: torch.Tensor  # (C, D) every expert's centroids, one contiguous block of rows per expert
    log_weights: np.ndarray  # (C,) float64 log(n_c / N_e): each centroid's share of its expert's texts
    starts: np.ndarray  # (E,) first row of each expert's block
    counts: np.ndarray  # (E,) rows in each expert's block
    packed_half: Any | None = None  # fbgemm fp16 copy of `centroids`, built when C >= HALF_PRECISION_MIN_ROWS
    row_error: np.ndarray | None = None  # (C,) |c - half(c)|_2 per row, the rounding the bound in _scores uses
    plans: dict[tuple[str, ...], _Plan] = field(default_factory=dict)  # candidate list -> plan, bounded


class Router:
    """A registry of expert signatures and the scoring of queries against a caller-chosen subset of them."""

    def __init__(self, embedder: QueryEncoder | SentenceEmbedder) -> None:
        # A corpus embedder (SentenceEmbedder) gets the fast single-query path in front of it.
        self.embedder: QueryEncoder = embedder if hasattr(embedder, "embed_one") else QueryEmbedder(embedder)
        self._signatures: dict[str, torch.Tensor] = {}  # id -> (k, D) unit centroids
        self._log_weights: dict[str, np.ndarray] = {}  # id -> (k,) float64 log share of the expert's texts per centroid
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
        log_weights = torch.log(counts / counts.sum()).numpy()  # (k,); a zero count: -inf, the centroid never ranks
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
                counts = np.array([block.shape[0] for block in blocks], dtype=np.int64)  # (E,)
                centroids = torch.cat(blocks) if blocks else torch.empty((0, self.embedder.dim))  # (C, D)
                packed = _pack_half(centroids) if centroids.shape[0] >= HALF_PRECISION_MIN_ROWS else None
                # What fp16 storage changes in each row: |cos_half - cos| <= |c - half(c)|_2 |q|_2 (Cauchy-Schwarz).
                row_error = None
                if packed is not None:
                    row_error = (centroids - _unpack_half(packed, centroids)).norm(dim=-1).double().numpy()
                log_weights = [self._log_weights[expert_id] for expert_id in ids]
                self._stack = _Stack(
                    ids=ids,
                    index={expert_id: position for position, expert_id in enumerate(ids)},
                    centroids=centroids.contiguous(),
                    log_weights=np.concatenate(log_weights) if log_weights else np.empty((0,)),  # (C,)
                    starts=_block_starts(counts),  # (E,)
                    counts=counts,
                    packed_half=packed,
                    row_error=row_error,
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
        plan = self._plan(stack, candidates)
        chosen = plan.chosen
        if not chosen:
            return RoutingDecision(
                experts=[],
                fallback=True,
                best_score=None,
                scores=[],
                unknown=list(plan.unknown),
                threshold=settings.threshold,
            )
        if embedding is None:
            raise ValueError("An embedding is needed to route among known candidates.")
        query = embedding.detach().reshape(-1).float().contiguous()  # (D,)
        if query.shape[0] != stack.centroids.shape[1]:
            raise ValueError(
                f"The query embedding has {query.shape[0]} values; the signatures have {stack.centroids.shape[1]}."
            )

        scores, cosines = self._scores(stack, plan, query, settings.centroid_temperature, settings.top_k)
        # Best first; a stable sort of the negated scores keeps the caller's order between equal scores.
        order = np.argsort(-scores, kind="stable")  # (E_c,)
        positions = order.tolist()
        names = operator.itemgetter(*positions)(chosen) if len(positions) > 1 else (chosen[positions[0]],)
        ranked = list(zip(names, scores[order].tolist(), strict=True))
        # The threshold asks whether the query is on any candidate's topic: the plain max cosine, not the ranking
        # score (which also depends on cluster sizes).
        best = float(cosines.max())
        if best < settings.threshold and settings.fallback_to_base:
            experts: list[tuple[str, float]] = []
        else:
            top = scores[order[: settings.top_k]]  # (K,) best first
            weights = np.exp((top - top[0]) / settings.temperature)  # (K,) softmax, shifted by the largest
            weights /= weights.sum()
            experts = list(zip(names[: settings.top_k], weights.tolist(), strict=True))
        return RoutingDecision(
            experts=experts,
            fallback=not experts,
            best_score=best,
            scores=ranked,
            unknown=list(plan.unknown),
            threshold=settings.threshold,
            score_ms=(time.perf_counter() - started) * 1000,
        )

    def _plan(self, stack: _Stack, candidates: Sequence[str]) -> _Plan:
        """The candidates' rows and blocks in `stack`; cached, since a mixture sends the same list each time."""
        key = tuple(candidates)
        plan = stack.plans.get(key)
        if plan is not None:
            return plan
        chosen: list[str] = []
        unknown: list[str] = []
        for expert_id in dict.fromkeys(key):  # de-duplicated, caller's order kept for ties
            (chosen if expert_id in stack.index else unknown).append(expert_id)
        positions = np.array([stack.index[expert_id] for expert_id in chosen], dtype=np.int64)  # (E_c,)
        counts = stack.counts[positions]  # (E_c,)
        rows = _block_rows(stack.starts[positions], counts)  # (R,) stack rows, block by block
        every = rows.shape[0] == stack.centroids.shape[0] and bool(np.array_equal(rows, np.arange(rows.shape[0])))
        half = (
            stack.packed_half is not None
            and stack.row_error is not None
            and rows.shape[0] * 2 >= len(stack.log_weights)
        )
        blocks = _Blocks.of(counts, stack.log_weights[rows])
        error = np.zeros(len(chosen))  # (E_c,)
        if half and stack.row_error is not None and chosen:
            error = np.maximum.reduceat(stack.row_error[rows], blocks.starts)
        plan = _Plan(
            chosen=chosen,
            unknown=unknown,
            rows=None if every else rows,
            row_index=None if every else torch.from_numpy(rows),
            counts=counts,
            blocks=blocks,
            error=error,
            half=half,
        )
        with self._lock:  # bounded: a caller cycling through many lists only rebuilds plans, it never grows memory
            if len(stack.plans) >= PLAN_CACHE_SIZE:
                stack.plans.clear()
            stack.plans[key] = plan
        return plan

    @staticmethod
    def _cosines(stack: _Stack, plan: _Plan, query: torch.Tensor) -> np.ndarray:
        """(R,) float32 cosines of the query to the plan's rows: fp16 centroids when plan.half, else float32."""
        centroids = stack.centroids
        with torch.inference_mode():  # no autograd bookkeeping
            if plan.half:
                every = torch.ops.quantized.linear_dynamic_fp16(query.unsqueeze(0), stack.packed_half)[0]  # (C,)
            elif plan.row_index is not None and plan.row_index.shape[0] * 2 < centroids.shape[0]:
                return torch.mv(centroids.index_select(0, plan.row_index), query).numpy()  # a few of many experts
            else:
                every = torch.mv(centroids, query)  # (C,)
            cosines: np.ndarray = every.numpy()  # (C,)
        return cosines if plan.rows is None else cosines[plan.rows]

    @classmethod
    def _scores(
        cls, stack: _Stack, plan: _Plan, query: torch.Tensor, centroid_temperature: float, top_k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ranking scores, max cosines) of the plan's experts for a (D,) query -> (E_c,), (E_c,) float64.

        With the half-precision copy (many rows), every cosine is first computed from fp16 centroids. Each is then
        off by at most e_r |q| (e_r = |c_r - half(c_r)|_2), and so is each expert's ranking score and max cosine
        (both move by at most the largest change of their cosines). Every expert that could be among the top_k by
        ranking score, or hold the best max cosine, within that bound is scored again in float32: the chosen
        experts, their order and weights, and the threshold's cosine are the float32 ones. The other experts'
        scores (what the UI draws below the chosen ones) keep the bounded error, ~1e-5 (at most ~5e-4).
        """
        scores, best = plan.blocks.soft_max(cls._cosines(stack, plan, query), centroid_temperature)
        if not plan.half:
            return scores, best
        count = scores.shape[0]
        # 1e-6: fbgemm and torch sum the 384 products in different orders.
        margin = plan.error * float(query.norm()) + 1e-6  # (E_c,)
        lower = scores - margin
        # At least top_k experts score this much or more.
        kept = min(top_k, count)
        floor = lower.max() if kept == 1 else np.partition(lower, count - kept)[count - kept]
        reach = (best - margin).max()  # the best max cosine is at least this
        unsure = np.flatnonzero((scores + margin >= floor) | (best + margin >= reach))  # (U,)
        counts = plan.counts[unsure]  # (U,)
        local = _block_rows(plan.blocks.starts[unsure], counts)  # their rows among the plan's R
        rows = local if plan.rows is None else plan.rows[local]  # ... and in the stack
        with torch.inference_mode():
            exact = torch.mv(stack.centroids.index_select(0, torch.from_numpy(rows)), query).numpy()  # (U_R,)
        exact_scores, exact_best = _Blocks.of(counts, plan.blocks.log_weights[local]).soft_max(
            exact, centroid_temperature
        )
        scores[unsure], best[unsure] = exact_scores, exact_best
        return scores, best
