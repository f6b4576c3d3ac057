"""Failed sign-ins counted per username and per client IP in the cache (Redis); too many lock both out a while.

1. A failed attempt adds one to two counters, ``username`` and ``ip``. The first failure of a window creates
   the counter with the window as its lifetime (``cache.add``) and notes when it ends; later failures
   ``incr`` it, which keeps Redis's expiry, so the window runs from the first failure, not the last.
2. Before a sign-in is checked, either counter at the limit refuses it with the seconds left in its window
   (the view answers 429 with ``Retry-After``); the password is never tried, so guessing stops too.
3. A successful sign-in clears the username's counter only: clearing the IP's would let an attacker who owns
   one account reset the counter of the address they guess from.

Usernames are lower-cased (guesses cannot dodge the counter by case) and hashed (any length, no odd
characters in a cache key).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _fail_open(default: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Redis away: sign-ins go on unthrottled (logged) rather than the login page answering 500."""

    def decorate(method: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(method)
        def wrapped(*args: Any, **kwargs: Any) -> T:
            try:
                return method(*args, **kwargs)
            except redis.RedisError as error:
                logger.warning("login throttle skipped: the cache is unavailable (%s)", error)
                return default  # type: ignore[no-any-return]

        return wrapped

    return decorate


KEY_PREFIX = "login-fail"


def _keys(scope: str, value: str) -> tuple[str, str]:
    digest = hashlib.sha256(value.encode()).hexdigest()[:32]
    return f"{KEY_PREFIX}:{scope}:{digest}", f"{KEY_PREFIX}:{scope}:{digest}:until"


@dataclass(frozen=True)
class LoginThrottle:
    username: str
    ip: str | None

    @classmethod
    def for_attempt(cls, username: str, ip: str | None) -> LoginThrottle:
        return cls(username=username.strip().lower(), ip=ip)

    def _scopes(self) -> list[tuple[str, str]]:
        scopes = [("user", self.username)] if self.username else []
        if self.ip:
            scopes.append(("ip", self.ip))
        return scopes

    @_fail_open(None)
    def retry_after(self) -> int | None:
        """Seconds until a locked-out attempt may try again, or None when it may try now (one cache round trip)."""
        limit = int(settings.LOGIN_RATE_LIMIT_FAILURES)
        if limit <= 0:
            return None
        keys = [_keys(scope, value) for scope, value in self._scopes()]
        values = cache.get_many([key for pair in keys for key in pair])
        now = time.time()
        waits = [
            # The window's end is written just after its counter: in that gap, wait a whole window.
            max(1, math.ceil(values.get(until, now + settings.LOGIN_RATE_LIMIT_WINDOW_SECONDS) - now))
            for count, until in keys
            if int(values.get(count, 0)) >= limit
        ]
        return max(waits) if waits else None

    @_fail_open(None)
    def record_failure(self) -> None:
        window = int(settings.LOGIN_RATE_LIMIT_WINDOW_SECONDS)
        if int(settings.LOGIN_RATE_LIMIT_FAILURES) <= 0:
            return
        for scope, value in self._scopes():
            count_key, until_key = _keys(scope, value)
            if cache.add(count_key, 1, timeout=window):
                cache.set(until_key, time.time() + window, timeout=window)
                continue
            try:
                cache.incr(count_key)
            except ValueError:  # expired between add and incr: this failure opens a new window
                cache.set(count_key, 1, timeout=window)
                cache.set(until_key, time.time() + window, timeout=window)

    @_fail_open(None)
    def clear_username(self) -> None:
        if self.username:
            cache.delete_many(list(_keys("user", self.username)))

    @_fail_open(None)
    def clear(self) -> None:
        """Both counters (an operator unlocking someone; tests)."""
        cache.delete_many([key for scope, value in self._scopes() for key in _keys(scope, value)])
