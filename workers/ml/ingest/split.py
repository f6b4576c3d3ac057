"""Train / held-out split by whole documents, so no held-out text leaks into training through a neighbour chunk.

One rule for the ingest pipeline and the CLI (`workers.ml.distill.corpus.split_by_document` calls this): rank the
documents by a seeded SHA-256 of their key and, in that order, hold out each one that keeps the held-out share of
chunks within `heldout_fraction` (a document that would overshoot it is skipped, a smaller one later may fit);
at least one document when there are two or more and the fraction is positive (the smallest, if none fits),
never all of them. Weighing by chunks matters for small corpora: with five files, holding out "10 % of the
documents" meant one whole file, a third of the text when that file was the largest. Deterministic for the same
documents and sizes; adding documents may move others across the split (not required to be stable).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence


def heldout_documents(
    keys: Sequence[str], heldout_fraction: float, seed: int = 0, sizes: Mapping[str, int] | None = None
) -> set[str]:
    """The keys of the held-out documents. `sizes`: chunks per key (a missing key or 0 counts as 1; None: all 1)."""
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}.")
    unique = list(dict.fromkeys(keys))  # a key listed twice is still one document
    if heldout_fraction == 0 or len(unique) < 2:
        return set()
    ranked = sorted(unique, key=lambda key: hashlib.sha256(f"{seed}:{key}".encode()).hexdigest())
    size = {key: max(int((sizes or {}).get(key, 1)), 1) for key in ranked}
    budget = heldout_fraction * sum(size.values())
    heldout: list[str] = []
    held = 0
    for key in ranked:
        if held + size[key] <= budget and len(heldout) < len(ranked) - 1:
            heldout.append(key)
            held += size[key]
    if not heldout:
        heldout.append(min(ranked, key=size.__getitem__))  # the first of the smallest, in hash order
    return set(heldout)
