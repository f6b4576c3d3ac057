from __future__ import annotations

import random
import unicodedata

import pytest

from workers.ml.ingest.normalise import normalise_text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a\r\nb\rc\n", "a\nb\nc"),
        ("cafe\u0301", "caf\u00e9"),  # NFC composes
        ("x\u00b2 \ufb01le \u00bd", "x\u00b2 \ufb01le \u00bd"),  # not NFKC: ², ﬁ and ½ keep their meaning
        ("a\x00b\x07c\x1bd\x7fe\x9ff", "abcdef"),
        ("page one\x0cpage two", "page one\npage two"),  # a form feed separates, it does not glue
        ("line\u2028next\u2029para", "line\nnext\n\npara"),
        ("a \t  b\t\tc", "a b c"),
        ("trailing   \nspaces \t\nend", "trailing\nspaces\nend"),
        ("p1\n\n\n\n\np2\n \n \n\np3", "p1\n\np2\n\np3"),
        ("  \n\n  padded  \n\n ", "padded"),
        ("\ufeffbom at start", "bom at start"),
        ("", ""),
        (" \n\t\r\n", ""),
    ],
)
def test_it_normalises(raw: str, expected: str) -> None:
    assert normalise_text(raw) == expected


def test_it_keeps_tabs_and_newlines_as_the_only_control_characters_before_collapsing() -> None:
    text = normalise_text("a\tb\nc")
    assert text == "a b\nc"
    assert not any(unicodedata.category(char) == "Cc" and char != "\n" for char in text)


def test_it_is_idempotent() -> None:
    rng = random.Random(3)
    alphabet = "ab é\u0301\u0300\t\n\r\x00\x0b\x0c\x85\u2028\u2029\ufeff\u00a0  \n\n\u200d👍🏽ﬁ"
    samples = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(2000)]
    for sample in samples:
        once = normalise_text(sample)
        assert normalise_text(once) == once, repr(sample)


def test_it_leaves_no_run_of_blank_lines_or_trailing_spaces() -> None:
    text = normalise_text("a  \n\n\n\n b \n\n\n\t\nc ")
    assert "\n\n\n" not in text
    assert all(line == line.rstrip(" ") for line in text.split("\n"))
