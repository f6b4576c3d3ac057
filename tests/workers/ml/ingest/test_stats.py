from __future__ import annotations

import pytest

from workers.ml.ingest.stats import detect_languages, length_histogram

ENGLISH = "The committee approved the annual budget after a long discussion about the new library."
FRENCH = "Le comité a approuvé le budget annuel après une longue discussion sur la nouvelle bibliothèque."
GERMAN = "Der Ausschuss hat den Jahreshaushalt nach einer langen Diskussion über die neue Bibliothek genehmigt."


def test_it_bins_lengths_into_equal_width_inclusive_ranges() -> None:
    assert length_histogram([1, 2, 3, 4, 5, 6, 7, 8], bins=4) == [(1, 2, 2), (3, 4, 2), (5, 6, 2), (7, 8, 2)]
    assert length_histogram([10, 10, 250], bins=3) == [(10, 90, 2), (91, 171, 0), (172, 252, 1)]


def test_every_length_lands_in_exactly_one_bin() -> None:
    counts = [3, 17, 17, 64, 128, 200, 255, 256, 256, 1]
    histogram = length_histogram(counts)
    assert len(histogram) <= 16
    assert sum(count for _, _, count in histogram) == len(counts)
    for value in counts:
        assert sum(low <= value <= high for low, high, _ in histogram) == 1


def test_it_gives_one_bin_when_all_lengths_are_equal() -> None:
    assert length_histogram([7, 7, 7]) == [(7, 7, 3)]


def test_it_gives_no_bins_without_lengths() -> None:
    assert length_histogram([]) == []
    with pytest.raises(ValueError, match="bins"):
        length_histogram([1], bins=0)


def test_it_measures_the_language_mix() -> None:
    shares = detect_languages([ENGLISH] * 6 + [FRENCH] * 4)
    assert shares == pytest.approx({"en": 0.6, "fr": 0.4})
    assert list(shares) == ["en", "fr"]  # largest first


def test_it_drops_languages_under_five_percent_and_renormalises() -> None:
    shares = detect_languages([ENGLISH] * 30 + [GERMAN])
    assert shares == {"en": 1.0}


def test_it_samples_deterministically_across_the_whole_corpus() -> None:
    texts = [ENGLISH] * 300 + [FRENCH] * 300  # sorted by language: a head-only sample would see English only
    shares = detect_languages(texts, sample=50)
    assert shares == pytest.approx({"en": 0.5, "fr": 0.5})
    assert detect_languages(texts, sample=50) == shares


def test_it_gives_no_languages_without_text() -> None:
    assert detect_languages([]) == {}
    assert detect_languages(["", "   "]) == {}
