"""Connecting to a checked address: the name stays in the request, no second lookup, no other host."""

from __future__ import annotations

import re

import httpx
import httpx2
import pytest

from tests.webapp.webhooks.receiver import Receiver, running_receiver
from workers.ml.pinned_http import pinned_transport, through_proxy


@pytest.fixture
def receiver() -> Receiver:
    with running_receiver() as running:
        yield running


def port_of(receiver: Receiver) -> int:
    return int(receiver.url.split(":")[2].split("/")[0])


@pytest.mark.parametrize("http", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_it_sends_a_request_for_the_name_to_the_checked_address(receiver: Receiver, http: object) -> None:
    url = f"http://hooks.invalid:{port_of(receiver)}/hook"  # .invalid never resolves (RFC 6761)

    with http.Client(transport=pinned_transport(url, "127.0.0.1", http=http)) as client:
        response = client.post(url, content=b"{}")

    assert response.status_code == 200
    assert receiver.requests[0].headers["host"] == f"hooks.invalid:{port_of(receiver)}"
    assert receiver.requests[0].path == "/hook"


def test_it_refuses_a_host_that_was_not_checked(receiver: Receiver) -> None:
    url = f"http://hooks.invalid:{port_of(receiver)}/hook"
    receiver.status, receiver.location = 302, "http://metadata.invalid/latest"

    with (
        httpx.Client(transport=pinned_transport(url, "127.0.0.1"), follow_redirects=True) as client,
        pytest.raises(httpx.ConnectError, match=re.escape("metadata.invalid was not checked; only hooks.invalid")),
    ):
        client.post(url, content=b"{}")
    assert len(receiver.requests) == 1  # the checked host was reached; the redirect's target never was


def test_it_leaves_the_name_to_a_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")

    assert through_proxy("https://hooks.example.com/h")
    assert pinned_transport("https://hooks.example.com/h", "93.184.216.34") is None
    assert not through_proxy("http://hooks.example.com/h")  # no proxy for plain http here
    monkeypatch.setenv("NO_PROXY", "example.com")
    assert not through_proxy("https://hooks.example.com/h")
    assert pinned_transport("https://hooks.example.com/h", None) is None
