from __future__ import annotations

import pytest

from workers.ml.distill.corpus import split_by_document
from workers.ml.ingest.split import heldout_documents

KEYS = [f"doc-{number}.txt" for number in range(40)]


def test_it_holds_out_the_requested_fraction_deterministically() -> None:
    heldout = heldout_documents(KEYS, 0.2, seed=1)
    assert len(heldout) == 8
    assert heldout == heldout_documents(list(reversed(KEYS)), 0.2, seed=1)  # the order of the keys does not matter
    assert heldout != heldout_documents(KEYS, 0.2, seed=2)


def test_it_agrees_with_the_distill_corpus_split() -> None:
    snapshot = split_by_document([(key, ["chunk"]) for key in KEYS], 0.25, seed=3)
    assert heldout_documents(KEYS, 0.25, seed=3) == {chunk.doc_id for chunk in snapshot.heldout}


@pytest.mark.parametrize(
    ("count", "fraction", "expected"),
    [(2, 0.01, 1), (2, 0.99, 1), (1, 0.5, 0), (0, 0.5, 0), (10, 0.0, 0), (10, 0.5, 5), (3, 0.9, 2)],
)
def test_it_holds_out_at_least_one_and_never_all(count: int, fraction: float, expected: int) -> None:
    assert len(heldout_documents(KEYS[:count], fraction)) == expected


def test_a_repeated_key_is_one_document() -> None:
    assert heldout_documents(["a", "a", "b"], 0.5) == heldout_documents(["a", "b"], 0.5)


def test_it_refuses_a_fraction_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match="heldout_fraction"):
        heldout_documents(KEYS, 1.0)
