"""Refuse an unsafe production configuration at start-up, with every problem named at once.

Kept free of Django imports so settings.py can call it before Django is configured.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet

# Django's startproject template key prefix: a key starting with it was copied from a tutorial.
INSECURE_SECRET_PREFIX = "django-insecure"  # noqa: S105 (a prefix to refuse, not a secret)
MIN_SECRET_KEY_LENGTH = 50
# Django's own floor (check --deploy's security.W009): a long key of few distinct characters is not random.
MIN_SECRET_KEY_UNIQUE_CHARS = 5


def production_problems(
    *,
    debug: bool,
    secret_key: str | None,
    field_encryption_keys: Sequence[str] | None,
    allowed_hosts: Sequence[str],
    database_engine: str,
) -> list[str]:
    """Return a readable sentence per unsafe setting; an empty list means the configuration may serve."""
    problems: list[str] = []
    if debug:
        problems.append("DEBUG must be off in production (it leaks settings and source in error pages).")
    if not secret_key:
        problems.append("SECRET_KEY must be set in production.")
    elif (
        secret_key.startswith(INSECURE_SECRET_PREFIX)
        or len(secret_key) < MIN_SECRET_KEY_LENGTH
        or len(set(secret_key)) < MIN_SECRET_KEY_UNIQUE_CHARS
    ):
        problems.append(
            f"SECRET_KEY must be a random value of at least {MIN_SECRET_KEY_LENGTH} characters, "
            "not a default or example key."
        )
    if not field_encryption_keys:
        problems.append(
            "FIELD_ENCRYPTION_KEYS must be set in production, with the same value on every host "
            "(workers decrypt what the web process encrypted)."
        )
    else:
        for index, key in enumerate(field_encryption_keys):
            try:
                Fernet(key)
            except ValueError:
                problems.append(
                    f"FIELD_ENCRYPTION_KEYS[{index}] is not a Fernet key "
                    "(generate one with `python -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())'`)."
                )
    if not allowed_hosts or "*" in allowed_hosts:
        problems.append("ALLOWED_HOSTS must name the site's hosts in production (not empty, not '*').")
    if database_engine.endswith("sqlite3"):
        problems.append("DATABASE_URL must point at PostgreSQL in production; SQLite is for a local run only.")
    return problems
