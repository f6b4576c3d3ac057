"""Timestamps as the API gives them: whole seconds since the Unix epoch, as OpenAI's API does, on every object."""

from __future__ import annotations

from datetime import datetime


def unix_time(value: datetime | None) -> int | None:
    """`value` in whole seconds since the Unix epoch (None stays None)."""
    return int(value.timestamp()) if value else None
