"""The k largest logits over a vocabulary, for the teacher cache: torch.topk, or on a GPU a grouped top-k.

torch.topk over (N, V) logits is a radix selection: on an H200, 16k positions of a 152k vocabulary took 20 ms
(bench/gpu_profile.py), as long as a quarter of the 1.5B teacher's forward pass over them, and it is the
teacher pass's largest kernel after the matrix multiplies. The grouped top-k reads the logits once:

1. the maximum of each group of `group` consecutive logits: (N, V) -> (N, V / group), one reduction;
2. the k groups with the largest maxima: a top-k over V / group values;
3. a top-k over those groups' k · group logits, gathered: (N, k · group) -> (N, k).

Exact: the k largest logits are k distinct elements, so at most k groups hold a value above the k-th largest,
and each such group's maximum is above the k-th largest maximum; steps 2 and 3 therefore see every value
that belongs in the top k (with ties at the k-th value, enough of them). The values equal torch.topk's; ids
differ only between tied values, where torch.topk's choice is arbitrary too.

On a CPU torch.topk's partial sort is faster (SmolLM2's 49k vocabulary: 29 against 61 ms for 1,024
positions on 2 cores), so the grouped form runs on GPUs only.
"""

from __future__ import annotations

import torch

# 64 logits (128 bytes of bf16) per group: V / 64 maxima keep step 2 small (2,374 for a 152k vocabulary),
# and k · 64 candidates keep step 3 small (4,096 at k = 64).
GROUP = 64
GROUPED_DEVICE_TYPES = frozenset({"cuda"})


def vocabulary_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, ids) of the k largest logits along the last dim, largest first: (..., V) -> (..., k) each."""
    vocab = logits.shape[-1]
    # The grouped form pays where the vocabulary is much larger than its k · GROUP candidates.
    if logits.device.type in GROUPED_DEVICE_TYPES and vocab >= 4 * k * GROUP:
        return grouped_topk(logits, k)
    result = logits.topk(min(k, vocab), dim=-1)
    return result.values, result.indices


def grouped_topk(logits: torch.Tensor, k: int, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk's values (and, but for ties, ids) by group maxima: (..., V) -> (..., k), (..., k)."""
    vocab = logits.shape[-1]
    k = min(k, vocab)
    whole = vocab // group * group  # the last group may be short
    # A view, not a copy: the last dim (stride 1) split into (V // group, group).
    maxima = logits[..., :whole].unflatten(-1, (whole // group, group)).amax(-1)  # (..., V // group)
    if whole < vocab:
        maxima = torch.cat([maxima, logits[..., whole:].amax(-1, keepdim=True)], dim=-1)  # (..., G)
    top_groups = maxima.topk(min(k, maxima.shape[-1]), dim=-1).indices  # (..., k)
    offsets = torch.arange(group, device=logits.device)  # (group,)
    candidates = (top_groups.unsqueeze(-1) * group + offsets).flatten(-2)  # (..., k · group)
    in_vocabulary = candidates < vocab  # False only in a short last group
    values = logits.gather(-1, candidates.clamp(max=vocab - 1))  # (..., k · group)
    values = values.masked_fill(~in_vocabulary, float("-inf"))
    best = values.topk(k, dim=-1)  # (..., k)
    return best.values, candidates.gather(-1, best.indices)
