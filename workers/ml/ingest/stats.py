"""Corpus statistics shown on the corpus page: chunk length histogram and language mix.

Languages come from py3langid on a deterministic, evenly spread sample (the same corpus always gives the same
mix, and a corpus sorted by language is still sampled across). Languages under 5 % are dropped as noise (a
short English-looking table row in a French corpus) and the remaining shares renormalised to sum to 1.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import py3langid

MIN_LANGUAGE_SHARE = 0.05
_LANGUAGE_SAMPLE_CHARS = 2000  # longer texts add time, not accuracy


def length_histogram(token_counts: Sequence[int], bins: int = 16) -> list[tuple[int, int, int]]:
    """(lo, hi, count) with inclusive integer bounds of equal width covering min..max; empty bins kept."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}.")
    if not token_counts:
        return []
    low, high = min(token_counts), max(token_counts)
    width = math.ceil((high - low + 1) / bins)
    used_bins = math.ceil((high - low + 1) / width)
    counts = Counter((count - low) // width for count in token_counts)
    return [(low + index * width, low + (index + 1) * width - 1, counts[index]) for index in range(used_bins)]


def _sample(texts: Sequence[str], size: int) -> list[str]:
    if len(texts) <= size:
        return list(texts)
    return [texts[index * len(texts) // size] for index in range(size)]


def detect_languages(texts: Sequence[str], sample: int = 200) -> dict[str, float]:
    """ISO 639-1 code -> share of the sampled texts, largest first; {} when there is no text."""
    votes = Counter(
        py3langid.classify(text[:_LANGUAGE_SAMPLE_CHARS])[0] for text in _sample(texts, sample) if text.strip()
    )
    total = sum(votes.values())
    kept = {language: count for language, count in votes.most_common() if count / total >= MIN_LANGUAGE_SHARE}
    kept_total = sum(kept.values())
    return {language: count / kept_total for language, count in kept.items()}
