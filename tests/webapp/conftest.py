"""Two organizations and one user per role: the cast of every permission test.

org A: owner, admin, member.  org B: outsider (its owner) — must see none of A's objects (404).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from tests.webapp.webhooks.receiver import Receiver, running_receiver
from webapp.tenants.models import Membership, Organization
from webapp.tenants.permissions import Role

PASSWORD = "a-long-test-password-42"


@dataclass
class Cast:
    org: Organization
    other_org: Organization
    owner: Any
    admin: Any
    member: Any
    outsider: Any

    def client_for(self, who: str) -> Client:
        client = Client()
        if who != "anonymous":
            client.force_login(getattr(self, who))
        return client


def make_user(username: str, **extra: Any) -> Any:
    return get_user_model().objects.create_user(
        username=username, email=f"{username}@example.com", password=PASSWORD, **extra
    )


@pytest.fixture
def cast(db: None) -> Cast:
    owner, admin, member, outsider = (make_user(name) for name in ("olivia", "adam", "mia", "oscar"))
    org = Organization.create_with_owner(name="Acme", owner=owner)
    Membership.objects.create(organization=org, user=admin, role=Role.ADMIN)
    Membership.objects.create(organization=org, user=member, role=Role.MEMBER)
    other_org = Organization.create_with_owner(name="Globex", owner=outsider)
    return Cast(org=org, other_org=other_org, owner=owner, admin=admin, member=member, outsider=outsider)


@pytest.fixture
def public_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """*.example.com resolves to a public address (no DNS in tests); every other name resolves as usual."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".example.com"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real HTTP server that receives webhooks (tests/webapp/webhooks/receiver.py)."""
    with running_receiver() as running:
        yield running


@pytest.fixture
def fresh_rate_window() -> None:
    """The API rate limit counts per calendar minute (one Redis INCR): a test that needs its requests counted
    together starts with at least 15 s of the minute left, or waits for the next one."""
    left = 60 - time.time() % 60
    if left < 15:
        time.sleep(left + 0.1)
