"""Train / held-out split by whole documents, so no held-out text leaks into training through a neighbour chunk.

The rule is `workers.ml.distill.corpus.split_by_document`'s, so the ingest pipeline and the CLI agree: rank the
keys by a seeded SHA-256, hold out the first round(n × fraction), at least one when there are two or more
documents and the fraction is positive, never all of them. Deterministic for the same set of keys; adding
documents may move others across the split (not required to be stable).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def heldout_documents(keys: Sequence[str], heldout_fraction: float, seed: int = 0) -> set[str]:
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}.")
    unique = list(dict.fromkeys(keys))  # a key listed twice is still one document
    ranked = sorted(unique, key=lambda key: hashlib.sha256(f"{seed}:{key}".encode()).hexdigest())
    count = round(len(ranked) * heldout_fraction)
    if heldout_fraction > 0 and len(ranked) > 1:
        count = min(max(count, 1), len(ranked) - 1)
    return set(ranked[:count])
