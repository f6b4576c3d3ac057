"""Secrets for a local (non-production) run, generated once and persisted under DATA_DIR.

In production SECRET_KEY and FIELD_ENCRYPTION_KEYS come from the environment and are required: workers on
other hosts must decrypt what the web process encrypted, so the same keys must reach every host. For a
single-machine run we generate both on first start and keep them in DATA_DIR/secrets.json (mode 0600), so a
restart does not log everyone out nor make stored teacher API keys unreadable.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet

SECRETS_FILENAME = "secrets.json"


def load_or_create_local_secrets(data_dir: Path) -> dict[str, object]:
    """Return {"secret_key": str, "field_encryption_keys": [str]}, creating the file on first call.

    Creation is race-free across processes (web, workers, beat start together): O_EXCL makes exactly one
    process write the file; the others read what it wrote.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SECRETS_FILENAME
    if not path.exists():
        generated = {
            "secret_key": secrets.token_urlsafe(50),
            "field_encryption_keys": [Fernet.generate_key().decode()],
        }
        tmp = path.with_name(f".{SECRETS_FILENAME}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(generated, handle)
        try:
            # link() fails if another process won the race; then we read theirs.
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return json.loads(path.read_text())
