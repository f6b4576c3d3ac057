"""Byte sizes as people write them ("20 GB", "500 MB", "1.5 GiB") in forms, and back.

The pages show sizes with Django's `filesizeformat`, which counts a KB as 1,024 bytes; a size typed in the same
units means what the pages show, so KB/MB/GB/TB and KiB/MiB/GiB/TiB are both powers of 1,024 here.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms

UNITS = {"": 0, "b": 0, "k": 1, "kb": 1, "kib": 1, "m": 2, "mb": 2, "mib": 2, "g": 3, "gb": 3, "gib": 3}
UNITS |= {"t": 4, "tb": 4, "tib": 4}
MAX_BYTES = 2**60  # 1,048,576 TB: far beyond any disk, well inside a signed 64-bit column
SIZE = re.compile(r"^\s*(?P<number>\d+(?:[.,]\d+)?)\s*(?P<unit>[a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in `text` ("20 GB", "512MB", "1.5 GiB", "1000"); ValueError with a readable reason otherwise."""
    match = SIZE.match(text)
    if not match:
        raise ValueError(f"“{text.strip()}” is not a size: write a number and a unit, e.g. 20 GB or 500 MB.")
    unit = match["unit"].lower()
    if unit not in UNITS:
        raise ValueError(f"Unknown unit “{match['unit']}”: use B, KB, MB, GB or TB.")
    try:
        number = Decimal(match["number"].replace(",", "."))
    except InvalidOperation as error:  # the pattern admits only digits, so this is a safeguard
        raise ValueError(f"“{match['number']}” is not a number.") from error
    return int(number * 1024 ** UNITS[unit])


def format_size(size: int) -> str:
    """The largest unit that writes `size` exactly ("20 GB", "1536 MB", "1000 B"), so that it parses back."""
    for power, unit in ((4, "TB"), (3, "GB"), (2, "MB"), (1, "KB")):
        if size and size % 1024**power == 0:
            return f"{size // 1024**power} {unit}"
    return f"{size} B"


class ByteSizeField(forms.CharField):
    """A size in bytes, typed with a unit; `None` when left empty."""

    def prepare_value(self, value: Any) -> Any:
        return format_size(int(value)) if isinstance(value, int) else value

    def to_python(self, value: Any) -> int | None:  # type: ignore[override]
        text = super().to_python(value)
        if not text:
            return None
        try:
            size = parse_size(text)
        except ValueError as error:
            raise forms.ValidationError(str(error), code="invalid") from error
        if size <= 0:
            raise forms.ValidationError("The size must be more than 0 bytes.", code="min_value")
        if size > MAX_BYTES:  # a 64-bit column holds it; beyond, the database would refuse the save
            raise forms.ValidationError(f"The size must be at most {format_size(MAX_BYTES)}.", code="max_value")
        return size
