"""Abuse and bad input at the edge: sign-in lockout, security headers, CSRF on every browser form, check --deploy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import SESSION_KEY
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from tests.webapp.conftest import PASSWORD, Cast
from tests.webapp.production import production_env
from webapp.accounts.throttle import LoginThrottle
from webapp.tenants.models import AuditEvent

REPO_ROOT = Path(__file__).resolve().parents[2]
# Documentation addresses (RFC 5737): each test signs in from its own, so counters never meet.
IP_A, IP_B, IP_C, IP_D = "192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.13"
USERNAMES = ("olivia", "adam", "mia", "oscar", "nobody-1", "nobody-2", "nobody-3")
LIMIT = 3


@pytest.fixture(autouse=True)
def _fresh_login_counters(settings: Any) -> Iterator[None]:
    settings.LOGIN_RATE_LIMIT_FAILURES = LIMIT
    settings.LOGIN_RATE_LIMIT_WINDOW_SECONDS = 900

    def clear() -> None:
        for ip in (IP_A, IP_B, IP_C, IP_D, "127.0.0.1"):
            for username in USERNAMES:
                LoginThrottle.for_attempt(username, ip).clear()

    clear()
    yield
    clear()


def _sign_in(username: str, password: str, ip: str) -> tuple[Client, object]:
    client = Client(REMOTE_ADDR=ip)
    response = client.post(reverse("accounts:login"), {"username": username, "password": password})
    return client, response


# ---------------------------------------------------------------- sign-in lockout


@pytest.mark.django_db
def test_it_locks_a_username_out_after_too_many_failures_even_with_the_right_password(cast: Cast) -> None:
    for _ in range(LIMIT):
        _, response = _sign_in("mia", "wrong", IP_A)
        assert response.status_code == 200  # type: ignore[attr-defined]

    # Another address, the right password: still refused, and not checked (no session, no audit entry).
    client, response = _sign_in("mia", PASSWORD, IP_B)
    assert response.status_code == 429  # type: ignore[attr-defined]
    assert 0 < int(response["Retry-After"]) <= 900  # type: ignore[index]
    assert "Too many failed sign-ins" in response.content.decode()  # type: ignore[attr-defined]
    assert SESSION_KEY not in client.session
    assert AuditEvent.objects.filter(action=AuditEvent.Action.LOGIN_FAILED, target="mia").count() == LIMIT

    # Other accounts from that address are unaffected.
    _, response = _sign_in("olivia", PASSWORD, IP_B)
    assert response.status_code == 302  # type: ignore[attr-defined]


@pytest.mark.django_db
def test_it_locks_an_address_out_after_failures_on_many_usernames(cast: Cast) -> None:
    for username in ("nobody-1", "nobody-2", "nobody-3"):
        _sign_in(username, "guess", IP_A)

    client, response = _sign_in("olivia", PASSWORD, IP_A)
    assert response.status_code == 429  # type: ignore[attr-defined]
    assert SESSION_KEY not in client.session
    _, response = _sign_in("olivia", PASSWORD, IP_B)
    assert response.status_code == 302  # type: ignore[attr-defined]


@pytest.mark.django_db
def test_it_clears_the_username_counter_on_a_successful_sign_in(cast: Cast) -> None:
    for _ in range(LIMIT - 1):
        _sign_in("mia", "wrong", IP_A)
    _, response = _sign_in("mia", PASSWORD, IP_B)
    assert response.status_code == 302  # type: ignore[attr-defined]
    # Without the reset these would make LIMIT + 1 failures for mia.
    for _ in range(LIMIT - 1):
        _sign_in("mia", "wrong", IP_C)
    _, response = _sign_in("mia", PASSWORD, IP_D)
    assert response.status_code == 302  # type: ignore[attr-defined]


@pytest.mark.django_db
def test_it_counts_usernames_regardless_of_case(cast: Cast) -> None:
    for name in ("Mia", "MIA", "mia"):
        _sign_in(name, "wrong", IP_A)
    _, response = _sign_in("mia", PASSWORD, IP_B)
    assert response.status_code == 429  # type: ignore[attr-defined]


@pytest.mark.django_db
def test_it_does_not_count_a_form_missing_its_password(cast: Cast) -> None:
    for _ in range(LIMIT + 1):
        _sign_in("mia", "", IP_A)
    _, response = _sign_in("mia", PASSWORD, IP_A)
    assert response.status_code == 302  # type: ignore[attr-defined]


# ---------------------------------------------------------------- headers


@pytest.mark.django_db
def test_it_sends_the_security_headers_on_a_page(cast: Cast) -> None:
    response = cast.client_for("owner").get(reverse("core:home"))
    assert response.status_code == 200
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    policy = dict(directive.partition(" ")[::2] for directive in response["Content-Security-Policy"].split("; "))
    assert policy["script-src"] == "'self'"
    assert policy["object-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("who", "method", "url", "headers"),
    [
        ("anonymous", "get", "/accounts/login/", {}),
        ("owner", "get", "/", {}),
        ("owner", "get", "/jobs/", {"HX-Request": "true", "HX-Target": "jobs-table"}),  # htmx partial
        ("owner", "get", "/corpora/999999/", {}),  # 404 page
        ("anonymous", "get", "/v1/models", {}),  # API JSON error (401)
        ("anonymous", "get", "/admin/login/", {}),
        ("anonymous", "get", "/static/css/app.css", {}),  # WhiteNoise
    ],
)
def test_it_sends_the_content_security_policy_on_every_kind_of_response(
    cast: Cast, who: str, method: str, url: str, headers: dict[str, str]
) -> None:
    response = getattr(cast.client_for(who), method)(url, headers=headers)
    assert response.status_code < 500
    assert "script-src 'self';" in response["Content-Security-Policy"], (url, response.status_code)


@pytest.mark.django_db
def test_it_sends_the_content_security_policy_on_a_csrf_refusal(cast: Cast) -> None:
    client = Client(enforce_csrf_checks=True)
    response = client.post(reverse("accounts:login"), {"username": "mia", "password": PASSWORD})
    assert response.status_code == 403
    assert "Content-Security-Policy" in response


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
INLINE_HANDLER = re.compile(r"\son[a-z]+\s*=|hx-on|javascript:", re.IGNORECASE)


def test_it_keeps_scripts_out_of_the_templates() -> None:
    """script-src 'self' would block inline code; a new template must load its script from static/."""
    offenders = []
    for template in sorted((REPO_ROOT / "templates").rglob("*.html")):
        text = template.read_text()
        if INLINE_SCRIPT.search(text) or INLINE_HANDLER.search(text):
            offenders.append(str(template.relative_to(REPO_ROOT)))
    assert offenders == []


# ---------------------------------------------------------------- CSRF on every browser form

# Token-authenticated, cookie-less and csrf_exempt by design; the admin is Django's own.
NOT_BROWSER_FORMS = {"api", "openai", "admin"}


def _browser_routes() -> list[tuple[str, str]]:
    """(name, URL) of every named route outside NOT_BROWSER_FORMS, path parameters filled with placeholders."""
    routes: list[tuple[str, str]] = []

    def walk(patterns: list[URLPattern | URLResolver], namespace: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                if entry.namespace in NOT_BROWSER_FORMS:
                    continue
                walk(entry.url_patterns, f"{namespace}{entry.namespace}:" if entry.namespace else namespace)
            elif entry.name:
                # An int for an id (CSRF refuses before the view looks it up), a word for anything else.
                kwargs = {
                    name: 1 if type(converter).__name__ == "IntConverter" else "x"
                    for name, converter in entry.pattern.converters.items()
                }
                name = f"{namespace}{entry.name}"
                routes.append((name, reverse(name, kwargs=kwargs)))

    walk(get_resolver().url_patterns, "")
    return routes


def test_it_finds_the_browser_forms_it_checks() -> None:
    names = {name for name, _ in _browser_routes()}
    assert {"accounts:login", "accounts:logout", "tenants:token-revoke", "corpora:file-upload"} <= names
    assert "experts:playground-stream" in names
    assert not any(name.startswith(("api:", "openai:", "admin:")) for name in names)


@pytest.mark.django_db
def test_it_refuses_every_browser_post_without_a_csrf_token(cast: Cast) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(cast.owner)
    client.get(reverse("core:home"))  # the CSRF cookie is set; only the token in the request is missing
    unprotected = []
    for name, url in _browser_routes():
        response = client.post(url, {"name": "x"})
        if response.status_code != 403 or b"CSRF verification failed" not in response.content:
            unprotected.append((name, url, response.status_code))
    assert unprotected == []


# ---------------------------------------------------------------- check --deploy


def _check_deploy(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "FIELD_ENCRYPTION_KEYS", "DEBUG"}}
    env = {**clean, "DJANGO_SETTINGS_MODULE": "webapp.settings", **production_env(tmp_path), **extra}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_it_passes_check_deploy_with_production_defaults(tmp_path: Path) -> None:
    result = _check_deploy(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_it_passes_check_deploy_when_a_tls_proxy_redirects_and_sends_hsts(tmp_path: Path) -> None:
    result = _check_deploy(tmp_path, BEHIND_TLS_PROXY="1", SECURE_SSL_REDIRECT="0", SECURE_HSTS_SECONDS="0")
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_warns_in_check_deploy_when_plain_http_has_no_proxy(tmp_path: Path) -> None:
    result = _check_deploy(tmp_path, SECURE_SSL_REDIRECT="0", SECURE_HSTS_SECONDS="0")
    assert result.returncode != 0
    assert "security.W008" in result.stderr + result.stdout
    assert "security.W004" in result.stderr + result.stdout


def test_sign_in_still_works_when_the_cache_is_away(cast: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    from webapp.accounts import throttle

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("Connection refused")

    for name in ("get_many", "add", "incr", "set", "delete_many"):
        monkeypatch.setattr(throttle.cache, name, unreachable)
    wrong = Client().post(reverse("accounts:login"), {"username": cast.member.username, "password": "wrong-one"})
    assert wrong.status_code == 200  # the form's error, not a 500
    right = Client().post(reverse("accounts:login"), {"username": cast.member.username, "password": PASSWORD})
    assert right.status_code == 302
    monkeypatch.undo()
