"""Fixtures of the pure ML tests: no database, no Celery, only files and torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workers.ml.catalog import CatalogConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """Converted model caches, kept between runs so a machine converts the packaged models once.

    CI points DISTILLERY_TEST_MODEL_CACHE at a cached directory; developers get <repo>/var/test-model-cache.
    The tiny models' tokenizer is extracted there too.
    """
    configured = os.environ.get("DISTILLERY_TEST_MODEL_CACHE")
    path = Path(configured) if configured else REPO_ROOT / "var" / "test-model-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def cpu_catalog(model_cache_dir: Path) -> CatalogConfig:
    """A catalog on the CPU (fp32), whatever the machine has, so results do not depend on a GPU."""
    return CatalogConfig(cache_dir=model_cache_dir, device="cpu")
