from __future__ import annotations

import pytest


@pytest.fixture
def private_webhooks(settings: pytest.FixtureRequest) -> None:
    """The receiver listens on 127.0.0.1: allowed, as an operator inside a company network would."""
    settings.WEBHOOK_ALLOW_PRIVATE = True


@pytest.fixture(autouse=True)
def _resolve_example_com(public_dns: None) -> None:
    """Every test here: *.example.com is public (tests/webapp/conftest.py)."""
