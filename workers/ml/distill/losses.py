"""Distillation losses: cross-entropy plus a divergence between teacher and student next-token distributions.

    loss = α·CE(labels) + (1 − α)·τ²·D(teacher ‖ student)

D is one of TRL GKD's divergences (trl.experimental.gkd.GKDTrainer.generalized_jsd_loss), with the same
argument order and β convention:
    forward_kl  = KL(p_t ‖ p_s)          (GKD β = 0)
    reverse_kl  = KL(p_s ‖ p_t)          (GKD β = 1)
    jsd(β)      = β·KL(p_t ‖ m) + (1 − β)·KL(p_s ‖ m),   m = β·p_t + (1 − β)·p_s
averaged over the positions that have a label (label != -100), as GKD's "batchmean" with labels does.

Two teacher forms:
- full: teacher logits over the whole vocabulary (a live teacher);
- top-k: the teacher's k largest log-probs and their token ids (the on-disk teacher cache). Both distributions
  are then collapsed onto k + 1 outcomes — the k cached tokens plus one "everything else" bucket holding the
  remaining (tail) mass — and D is taken between the collapsed distributions. With k = V this is exactly the
  full loss. For k < V it never exceeds the full divergence (merging outcomes cannot increase an
  f-divergence), and for forward KL the gap is exactly r_t·KL(p̃_t ‖ p̃_s), where r_t is the teacher's tail
  mass and p̃ are the tail distributions renormalised (tested in tests/workers/ml/distill/test_losses.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from workers.ml.distill.config import Divergence
from workers.ml.distill.vocab_topk import vocabulary_topk

IGNORE_INDEX = -100
# Positions whose loss is computed at once, bounding the (chunk, V) temporaries. Past one chunk, each chunk is
# recomputed in backward (checkpointed), which costs an extra pass over its logits: a GPU has the memory for
# a whole micro-batch at once, a CPU machine's RAM is better spent elsewhere.
CPU_CHUNK_POSITIONS = 2048
GPU_CHUNK_POSITIONS = 32768

# Whether passes over a GPU's vocabulary run compiled (see `compiled_vocabulary_passes`), and the compiled
# functions, each made once.
_compile_on_gpu: ContextVar[bool] = ContextVar("compile_vocabulary_passes_on_gpu", default=False)
COMPILED_DEVICE_TYPES = frozenset({"cuda"})  # where those passes compile (tests add "cpu" to check the graphs)
_compiled: dict[Callable[..., Any], Callable[..., Any]] = {}


@contextmanager
def compiled_vocabulary_passes(enabled: bool) -> Iterator[None]:
    """Inside the block, the passes over CUDA logits — the student's loss and the teacher's normaliser — run
    compiled (a CPU's stay eager).

    Eager, each is a chain of kernels over the (n, V) logits: an fp32 copy (PyTorch's log-softmax converts
    bf16 input before it starts), the log-softmax, a gather, and in backward the softmax gradient, the cast
    back and the gather's scatter into zeros. Compiled, they fuse into a read or two of the bf16 logits. On an
    H200 with 16k positions of a 152k vocabulary (bench/gpu_profile.py): the loss, forward plus backward,
    12.7 ms instead of 32 ms; the teacher's top-k with its normaliser 23 ms instead of 37 ms (the top-k
    itself is 20). Each costs a few seconds of compilation once per process. On a CPU compiling the loss took
    ~24 s to save ~0.2 s per 1,024 positions, which a CPU run rarely pays back. Training and the teacher pass
    turn this on exactly when they compile the model's layers.
    """
    token = _compile_on_gpu.set(enabled)
    try:
        yield
    finally:
        _compile_on_gpu.reset(token)


def _compiles(logits: torch.Tensor) -> bool:
    """Whether passes over `logits` run compiled here (see compiled_vocabulary_passes)."""
    return logits.device.type in COMPILED_DEVICE_TYPES and _compile_on_gpu.get()


def _on_gpu_compiled(function: Callable[..., Any], logits: torch.Tensor, *, dynamic: bool | None) -> Callable[..., Any]:
    """`function` compiled when `logits` are on a GPU inside `compiled_vocabulary_passes(True)`, else itself."""
    if not _compiles(logits):
        return function
    if function not in _compiled:
        _compiled[function] = torch.compile(function, dynamic=dynamic)
    return _compiled[function]


def _kl_from_logprobs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) summed over the last dim, with 0·log(0/x) = 0 (cached tails may be empty)."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(-1)


def divergence(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    kind: Divergence,
    beta: float = 0.5,
) -> torch.Tensor:
    """Per-position D(teacher ‖ student) from log-probabilities over the same outcomes. (N, C) -> (N,)"""
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return _kl_from_logprobs(teacher_logprobs, student_logprobs)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return _kl_from_logprobs(student_logprobs, teacher_logprobs)
    if kind != "jsd":
        raise ValueError(f"Unknown divergence {kind!r}")
    # log m = log(β·p_t + (1 − β)·p_s), stably in log space as GKD does.
    mixture = torch.logsumexp(
        torch.stack(
            [teacher_logprobs + torch.log(torch.tensor(beta)), student_logprobs + torch.log1p(-torch.tensor(beta))]
        ),
        dim=0,
    )
    return beta * _kl_from_logprobs(teacher_logprobs, mixture) + (1 - beta) * _kl_from_logprobs(
        student_logprobs, mixture
    )


# Floor of a tail bucket's probability. The student's tail is 1 − Σ top-k, which rounding leaves at ~1e-7
# instead of 0 when k covers the vocabulary; the floor keeps log(0) out of the loss (its effect is < 1e-5).
TAIL_FLOOR = 1e-20
_LOG_TAIL_FLOOR = float(torch.log(torch.tensor(TAIL_FLOOR)))


def _log_tail(picked_logprobs: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ exp(picked)), floored. (n, k) -> (n, 1)

    From the k gathered log-probs only, so the tail costs O(k) per position instead of another pass over the
    vocabulary.
    """
    covered = torch.logsumexp(picked_logprobs, dim=-1, keepdim=True)  # (n, 1), ≤ 0
    return torch.log(torch.clamp(-torch.expm1(covered), min=TAIL_FLOOR))


def _chunk_terms(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    topk_logprobs: torch.Tensor | None,
    topk_ids: torch.Tensor | None,
    topk_tail: torch.Tensor | None,
    alpha: float,
    temperature: float,
    kind: Divergence,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ CE, Σ D) over a chunk of n positions; `weights` (n,) is 1 for labelled positions, else 0.

    One log-softmax over the vocabulary serves both the CE (at τ = 1) and the divergence: it is the only
    full-vocabulary pass of the cached path, which keeps the loss lean.
    """
    if temperature == 1.0:
        # fp32 log-probs from bf16 logits, the gradient back in bf16. Eager, PyTorch still converts the logits
        # to fp32 first; compiled (a GPU's, compiled_vocabulary_passes) the conversion fuses into the softmax.
        student_lp = F.log_softmax(logits, dim=-1, dtype=torch.float32)  # (n, V)
    else:
        student_lp = F.log_softmax(logits.float() / temperature, dim=-1)  # (n, V)
    safe_labels = labels.clamp(min=0).unsqueeze(-1)  # (n, 1); ignored rows are zero-weighted below
    topk = teacher_logits is None
    if topk and (topk_logprobs is None or topk_ids is None or topk_tail is None):
        raise ValueError("top-k teacher targets need log-probs, ids and the tail together")
    picked_label: torch.Tensor | None = None
    if topk and alpha > 0 and temperature == 1.0:
        # The label's and the top-k's log-probs in one gather: each gather's backward fills an (n, V) tensor
        # of zeros, the largest cost of this loss after the log-softmax (~20% of it on a CPU).
        assert topk_ids is not None  # topk: the three targets were checked together above
        both = student_lp.gather(-1, torch.cat([safe_labels, topk_ids.long()], dim=-1))  # (n, 1+k)
        picked_label, picked = both[:, 0], both[:, 1:]
    elif topk:
        assert topk_ids is not None  # topk: the three targets were checked together above
        picked = student_lp.gather(-1, topk_ids.long())  # (n, k)
    if alpha <= 0:
        ce = student_lp.new_zeros(())
    elif temperature == 1.0:
        if picked_label is None:
            picked_label = student_lp.gather(-1, safe_labels).squeeze(-1)
        ce = -(picked_label * weights).sum()
    else:
        ce = -(F.log_softmax(logits, dim=-1, dtype=torch.float32).gather(-1, safe_labels).squeeze(-1) * weights).sum()
    if not topk:
        assert teacher_logits is not None  # not topk means the teacher came as full logits
        teacher_lp = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (n, V)
        div = divergence(student_lp, teacher_lp, kind, beta)
    else:
        # topk: the three targets were checked together above
        assert topk_logprobs is not None
        assert topk_tail is not None
        student_collapsed = torch.cat([picked, _log_tail(picked)], dim=-1)  # (n, k+1)
        teacher_tail = torch.clamp(topk_tail.float(), min=_LOG_TAIL_FLOOR).unsqueeze(-1)  # (n, 1)
        # Renormalised: fp16 top-k values and the fp32 tail need not sum to exactly 1.
        teacher_collapsed = F.log_softmax(torch.cat([topk_logprobs.float(), teacher_tail], dim=-1), dim=-1)
        div = divergence(student_collapsed, teacher_collapsed, kind, beta)
    return ce, (div * weights).sum()


@dataclass(frozen=True)
class LossParts:
    total: torch.Tensor
    ce: torch.Tensor
    divergence: torch.Tensor
    positions: int


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    teacher_logits: torch.Tensor | None = None,
    teacher_topk_logprobs: torch.Tensor | None = None,
    teacher_topk_ids: torch.Tensor | None = None,
    teacher_topk_tail: torch.Tensor | None = None,
    alpha: float = 0.5,
    temperature: float = 1.0,
    kind: Divergence = "forward_kl",
    beta: float = 0.5,
    chunk_positions: int | None = None,
    positions: int | None = None,
) -> LossParts:
    """α·CE + (1 − α)·τ²·D, averaged over labelled positions.

    Shapes: student_logits (B, T, V) already aligned with labels (B, T) — position t predicts labels[t].
    The teacher is given aligned with the student, either as logits (B, T, V) or as the cache's top-k
    log-probs (B, T, k) with ids (B, T, k) and the log of the remaining mass (B, T) — see `teacher_topk`.
    Positions without a label contribute nothing. Packed rows are almost all labelled, so every position is
    computed and weighted by its mask rather than gathered: a gather would copy the (N, V) logits.
    `positions`, the number of labelled positions, may be given by a caller that counted them on the host
    (`PackedBatch.label_count`): counting them here makes the host wait for a GPU.
    """
    if (teacher_logits is None) == (teacher_topk_logprobs is None):
        raise ValueError("Give the teacher either as full logits or as top-k log-probs, not both.")
    if chunk_positions is None:
        chunk_positions = GPU_CHUNK_POSITIONS if student_logits.is_cuda else CPU_CHUNK_POSITIONS
    vocab = student_logits.shape[-1]
    logits = student_logits.reshape(-1, vocab)  # (B·T, V), a view
    flat_labels = labels.reshape(-1)  # (B·T,)
    weights = (flat_labels != IGNORE_INDEX).to(torch.float32)
    if positions is None:
        positions = int(weights.sum())
    if positions == 0:
        zero = student_logits.sum() * 0.0
        return LossParts(zero, zero.detach(), zero.detach(), 0)

    def rows(tensor: torch.Tensor | None, trailing: int) -> torch.Tensor | None:
        return None if tensor is None else tensor.reshape(-1, *tensor.shape[trailing:])

    teacher_full = rows(teacher_logits, 2)  # (B·T, V)
    topk_lp, topk_ids = rows(teacher_topk_logprobs, 2), rows(teacher_topk_ids, 2)  # (B·T, k)
    topk_tail = rows(teacher_topk_tail, 2)  # (B·T,)
    total_ce = logits.new_zeros((), dtype=torch.float32)
    total_div = logits.new_zeros((), dtype=torch.float32)
    count = logits.shape[0]
    # Static shapes: micro-batches are padded to one shape while compiled (regional_compile.padded_rows).
    chunk_terms = _on_gpu_compiled(_chunk_terms, logits, dynamic=False)
    for start in range(0, count, chunk_positions):
        part = slice(start, start + chunk_positions)
        args = (
            logits[part],
            flat_labels[part],
            weights[part],
            teacher_full[part] if teacher_full is not None else None,
            topk_lp[part] if topk_lp is not None else None,
            topk_ids[part] if topk_ids is not None else None,
            topk_tail[part] if topk_tail is not None else None,
            alpha,
            temperature,
            kind,
            beta,
        )
        if logits.requires_grad and count > chunk_positions:
            # Recompute the chunk's (n, V) temporaries in backward instead of keeping all chunks' alive.
            ce, div = checkpoint(_chunk_terms, *args, use_reentrant=False)
        else:
            ce, div = chunk_terms(*args)
        total_ce = total_ce + ce
        total_div = total_div + div
    ce_mean, div_mean = total_ce / positions, total_div / positions
    total = alpha * ce_mean + (1 - alpha) * temperature**2 * div_mean
    return LossParts(total=total, ce=ce_mean.detach(), divergence=div_mean.detach(), positions=positions)


def teacher_topk(
    teacher_logits: torch.Tensor, k: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's k most likely next tokens at temperature τ and the log of the mass left outside them.

    (..., V) -> log-probs (..., k) fp32, ids (..., k), tail (...) — the form the teacher cache stores.
    Top-k runs on the raw logits (same order as the log-probs; grouped on a GPU, see vocab_topk), the
    log-probs at τ = 1 come from one log-softmax with an fp32 output. On an H200, for 16k positions of a 152k
    vocabulary (bench/gpu_profile.py): torch.topk 20 ms, the grouped top-k 14 ms eager; the whole function
    31 ms eager and 5.8 ms compiled (compiled_vocabulary_passes), where torch.topk with the compiled
    log-softmax took 23 ms.
    """
    if _compiles(teacher_logits):
        # The number of kept positions changes from batch to batch (dynamic); the vocabulary never does.
        torch._dynamo.maybe_mark_dynamic(teacher_logits, 0)
    topk_logprobs = _on_gpu_compiled(_topk_logprobs, teacher_logits, dynamic=None)
    values, ids = topk_logprobs(teacher_logits, k, temperature)
    return values, ids, log_tail_mass(values)


def _topk_logprobs(logits: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs (..., k) fp32, ids (..., k)) of the k largest logits: (..., V) ->."""
    ids = vocabulary_topk(logits, k)[1]
    return _logprobs_at(logits, ids, temperature), ids


def _logprobs_at(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / τ) at `ids`, in fp32: (..., V), (..., k) -> (..., k)."""
    if temperature == 1.0:
        return F.log_softmax(logits, dim=-1, dtype=torch.float32).gather(-1, ids)
    scaled = logits.float() / temperature  # (..., V)
    return scaled.gather(-1, ids) - torch.logsumexp(scaled, dim=-1, keepdim=True)


def log_tail_mass(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ top-k probabilities), floored: (..., k) -> (...). For targets known only by their top-k."""
    return _log_tail(topk_logprobs.float()).squeeze(-1)
