from __future__ import annotations

from collections.abc import Iterator

import pytest

from webapp.accounts.throttle import LoginThrottle

# The Django test client signs in from 127.0.0.1; the cast's usernames and the signup test's.
USERNAMES = ("olivia", "adam", "mia", "oscar", "dora")


@pytest.fixture(autouse=True)
def _no_login_lockout() -> Iterator[None]:
    """Failed sign-ins are counted in Redis, which outlives a test: start and end every test with none."""

    def clear() -> None:
        for username in USERNAMES:
            LoginThrottle.for_attempt(username, "127.0.0.1").clear()

    clear()
    yield
    clear()
