"""Sizes typed with units, counted as the pages count them (Django's filesizeformat: 1 KB = 1,024 bytes)."""

from __future__ import annotations

import pytest
from django import forms
from django.template.defaultfilters import filesizeformat

from webapp.core.sizes import ByteSizeField, format_size, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1000", 1000),
        ("1000 B", 1000),
        ("20 GB", 20 * 2**30),
        ("20gb", 20 * 2**30),
        ("500 MB", 500 * 2**20),
        ("1.5 GiB", 1536 * 2**20),
        ("1,5 GB", 1536 * 2**20),
        ("2 T", 2 * 2**40),
        ("  64 kb ", 64 * 1024),
    ],
)
def test_it_parses_sizes_with_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "reason"),
    [("lots", "is not a size"), ("-5 GB", "is not a size"), ("5 parsecs", "Unknown unit"), ("GB", "is not a size")],
)
def test_it_refuses_what_is_not_a_size_and_says_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_size(text)


@pytest.mark.parametrize("size", [1, 1000, 1024, 1536 * 2**20, 20 * 2**30, 3 * 2**40, 20 * 2**30 + 1])
def test_it_formats_a_size_exactly_so_that_it_parses_back(size: int) -> None:
    assert parse_size(format_size(size)) == size


def test_it_writes_a_round_size_in_the_unit_the_pages_show() -> None:
    assert format_size(20 * 2**30) == "20 GB"
    assert filesizeformat(20 * 2**30) == "20.0\u00a0GB"  # the same 20 GB on the pages


def test_the_field_gives_none_for_empty_and_refuses_zero_and_the_absurd() -> None:
    field = ByteSizeField(required=False)
    assert field.clean("") is None
    assert field.clean("2 MB") == 2 * 2**20
    with pytest.raises(forms.ValidationError, match="more than 0 bytes"):
        field.clean("0 GB")
    with pytest.raises(forms.ValidationError, match="at most 1048576 TB"):
        field.clean("99999999 TB")  # more than the database's 64-bit column holds
