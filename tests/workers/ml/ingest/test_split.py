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


@pytest.mark.parametrize("seed", range(5))
def test_it_weighs_documents_by_their_chunks(seed: int) -> None:
    # Five files, one of them most of the text: "10 %" must not set aside that file (10 of 14 chunks).
    sizes = {"handbook.pdf": 10, "a.txt": 1, "b.txt": 1, "c.txt": 1, "d.txt": 1}

    heldout = heldout_documents(list(sizes), 0.1, seed=seed, sizes=sizes)

    assert len(heldout) == 1
    assert "handbook.pdf" not in heldout


def test_it_holds_out_the_smallest_document_when_none_fits_the_fraction() -> None:
    sizes = {"a.txt": 5, "b.txt": 3, "c.txt": 8}

    assert heldout_documents(list(sizes), 0.1, sizes=sizes) == {"b.txt"}
    # A larger fraction takes documents in hash order while they fit: never more than it, never all of them.
    for fraction in (0.3, 0.5, 0.7, 0.9):
        heldout = heldout_documents(list(sizes), fraction, sizes=sizes)
        assert 0 < sum(sizes[key] for key in heldout) <= fraction * 16
        assert len(heldout) < 3


def test_the_distill_corpus_split_weighs_by_chunks_too() -> None:
    documents = [("handbook", ["chunk"] * 10), *((f"note-{n}", ["chunk"]) for n in range(4))]

    snapshot = split_by_document(documents, 0.1, seed=0)

    sizes = {doc_id: len(chunks) for doc_id, chunks in documents}
    assert {chunk.doc_id for chunk in snapshot.heldout} == heldout_documents(list(sizes), 0.1, sizes=sizes)
    assert (len(snapshot.heldout), len(snapshot.train)) == (1, 13)


def test_a_repeated_key_is_one_document() -> None:
    assert heldout_documents(["a", "a", "b"], 0.5) == heldout_documents(["a", "b"], 0.5)


def test_it_refuses_a_fraction_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match="heldout_fraction"):
        heldout_documents(KEYS, 1.0)
