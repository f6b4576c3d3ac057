"""Fixtures of the ingest tests: pure Python, no database; the chunker uses the real student tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from workers.ml import tiny


@pytest.fixture(scope="session")
def student_tokenizer(model_cache_dir: Path) -> Any:
    """SmolLM2's fast tokenizer, as the tiny models and the real student share it."""
    return tiny.load_tokenizer(model_cache_dir, lambda message: None)
