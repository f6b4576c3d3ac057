"""Settings for the test suite: the real PostgreSQL and Redis, defaults for a developer's bare `pytest`.

scripts/test.sh exports the same values (and starts the services); anything set in the environment wins.
"""

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/distillery")
# Redis database 15: tests never share queues with a dev stack on database 0.
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("DATA_DIR", str(_REPO / "var" / "test"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The ingest task's tokenizer comes from the same cache the ML tests use (converted once per machine).
os.environ.setdefault(
    "MODEL_CACHE_DIR", os.environ.get("DISTILLERY_TEST_MODEL_CACHE") or str(_REPO / "var" / "test-model-cache")
)

from webapp.settings import *  # noqa: E402, F403

# Password hashing dominates a suite that logs users in; the production hasher is not under test here.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
