from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.test import override_settings

from webapp.core.encryption import DecryptionError, decrypt, encrypt, rotate

OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def test_it_round_trips_a_secret_without_storing_the_plaintext() -> None:
    token = encrypt("sk-live-123")
    assert "sk-live-123" not in token
    assert decrypt(token) == "sk-live-123"


def test_it_rotates_to_a_new_key_and_still_reads_old_tokens() -> None:
    with override_settings(FIELD_ENCRYPTION_KEYS=[OLD]):
        old_token = encrypt("sk-live-123")
    with override_settings(FIELD_ENCRYPTION_KEYS=[NEW, OLD]):
        assert decrypt(old_token) == "sk-live-123"
        new_token = rotate(old_token)
    with override_settings(FIELD_ENCRYPTION_KEYS=[NEW]):
        assert decrypt(new_token) == "sk-live-123"
        with pytest.raises(DecryptionError, match="rotation"):
            decrypt(old_token)
