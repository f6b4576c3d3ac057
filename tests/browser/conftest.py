"""The browser tier: the real app served over HTTP (tests/webapp/api/live_stack.py) and driven in headless Chromium
by Playwright.

Chromium is Debian's (/usr/bin/chromium, installed by scripts/lib.sh `ensure_chromium`), never a Playwright
download. Screenshots of each step go to var/test-artifacts/screenshots/ (git-ignored), for a human to look at
when a run fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.webapp.api.live_stack import (  # noqa: F401 - fixtures
    engine_service,
    engine_url,
    expert_dirs,
    live_engine,
    model_cache_dir,
    web_url,
)

CHROMIUM = Path(os.environ.get("DISTILLERY_CHROMIUM", "/usr/bin/chromium"))
# The test machine has no network: without the background-networking flags Chromium keeps retrying refused
# connections (component updates, sync, QUIC probes) and a page load can hang behind them.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts" / "screenshots"


@pytest.fixture
def browser(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Headless Chromium, started after the test database is ready and closed before it is flushed.

    Playwright's sync API keeps an asyncio loop on the test's thread, which trips Django's async-safety check on
    every ORM call the test makes between browser steps; that ORM use is plain synchronous code, hence the flag.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: scripts/test.sh installs Debian's (ensure_chromium)")
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    return SCREENSHOTS
