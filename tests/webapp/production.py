"""The environment of a safely configured production deployment, for tests that start one in a subprocess."""

from __future__ import annotations

import secrets
from pathlib import Path

from cryptography.fernet import Fernet


def production_env(data_dir: Path) -> dict[str, str]:
    """Fresh keys, a named host, PostgreSQL and a data directory: what `DISTILLERY_ENV=production` requires."""
    return {
        "DISTILLERY_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "distillery.example.com",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/distillery",
        "DATA_DIR": str(data_dir),
    }
