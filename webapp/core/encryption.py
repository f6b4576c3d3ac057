"""Secrets at rest (teacher API keys and the like), encrypted with FIELD_ENCRYPTION_KEYS.

MultiFernet: the first key encrypts, every key decrypts, so keys rotate without downtime — prepend a new key
on every host, run `rotate` over the stored values, then drop the old key. The web process encrypts and
workers on other hosts decrypt, so every host needs the same list.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class DecryptionError(ValueError):
    """A stored secret no configured key can read (keys changed without rotation)."""


@lru_cache(maxsize=4)
def _multifernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is empty: secrets cannot be stored.")
    return MultiFernet([Fernet(key) for key in keys])


def _current() -> MultiFernet:
    return _multifernet(tuple(settings.FIELD_ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    return _current().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _current().decrypt(token.encode()).decode()
    except InvalidToken as error:
        raise DecryptionError(
            "A stored secret cannot be decrypted with FIELD_ENCRYPTION_KEYS: was a key removed before rotation?"
        ) from error


def rotate(token: str) -> str:
    """Re-encrypt `token` under the first (newest) key."""
    return _current().rotate(token.encode()).decode()
