"""One signed POST to a real HTTP server: what the receiver gets and how each kind of answer is read."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from openai import OpenAI
from standardwebhooks import Webhook, WebhookVerificationError

from tests.webapp.webhooks.receiver import Receiver, running_receiver, self_signed_tls
from webapp.webhooks.models import new_secret
from webapp.webhooks.sender import EXCERPT_BYTES, send

BODY = json.dumps({"type": "ping", "timestamp": "2026-11-29T12:00:00Z", "data": {"object": "ping"}})


def test_it_posts_a_body_that_standard_webhooks_and_openai_verify(receiver: Receiver) -> None:
    secret = new_secret()

    outcome = send(receiver.url, secret, "msg_1", BODY, timeout_s=5)

    assert outcome.ok
    assert outcome.status_code == 200
    assert outcome.excerpt == "thanks"
    [request] = receiver.requests
    assert request.path == "/hooks/distillery"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == "msg_1"
    assert Webhook(secret).verify(request.body, request.headers) == json.loads(BODY)
    OpenAI(api_key="unused").webhooks.verify_signature(request.body, request.headers, secret=secret)


def test_its_signature_fails_for_another_secret_or_an_altered_body(receiver: Receiver) -> None:
    secret = new_secret()
    send(receiver.url, secret, "msg_1", BODY, timeout_s=5)
    [request] = receiver.requests

    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(request.body.replace(b"ping", b"pong"), request.headers)


def test_it_reads_a_non_2xx_answer_as_a_failure_with_the_receivers_words(receiver: Receiver) -> None:
    receiver.status, receiver.reply = 503, b"maintenance " * 200

    outcome = send(receiver.url, new_secret(), "msg_1", BODY, timeout_s=5)

    assert not outcome.ok
    assert outcome.status_code == 503
    assert "HTTP 503" in outcome.error
    assert outcome.excerpt.startswith("maintenance")
    assert len(outcome.excerpt) <= EXCERPT_BYTES


def test_it_does_not_follow_a_redirect(receiver: Receiver) -> None:
    receiver.status, receiver.location = 301, "http://169.254.169.254/latest/meta-data"

    outcome = send(receiver.url, new_secret(), "msg_1", BODY, timeout_s=5)

    assert not outcome.ok
    assert outcome.status_code == 301
    assert "do not follow redirects" in outcome.error
    assert "169.254.169.254" in outcome.error
    assert len(receiver.requests) == 1


def test_it_gives_up_on_a_receiver_that_does_not_answer_in_time(receiver: Receiver) -> None:
    receiver.delay_s = 2.0

    outcome = send(receiver.url, new_secret(), "msg_1", BODY, timeout_s=0.3)

    assert not outcome.ok
    assert outcome.status_code is None
    assert outcome.error == "No answer within 0.3 s."


def test_it_reports_a_refused_connection() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    outcome = send(f"http://127.0.0.1:{port}/", new_secret(), "msg_1", BODY, timeout_s=2)

    assert not outcome.ok
    assert outcome.status_code is None
    assert outcome.error.startswith("Could not connect")


def test_it_connects_to_the_checked_address_without_resolving_the_name_again(receiver: Receiver) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    unresolvable = f"http://hooks.invalid:{port}/hooks/distillery"  # .invalid never resolves (RFC 6761)

    outcome = send(unresolvable, new_secret(), "msg_1", BODY, timeout_s=5, address="127.0.0.1")

    assert outcome.ok
    assert receiver.requests[0].headers["host"] == f"hooks.invalid:{port}"


def test_it_checks_the_certificate_against_the_name_when_pinned_to_an_address(tmp_path: Path) -> None:
    server_tls, client_trust = self_signed_tls(tmp_path, "hooks.test")
    with running_receiver(tls=server_tls, host="hooks.test") as tls_receiver:
        outcome = send(
            tls_receiver.url, new_secret(), "msg_1", BODY, timeout_s=5, address="127.0.0.1", verify=client_trust
        )
        assert outcome.ok, outcome.error
        assert tls_receiver.requests[0].headers["host"].startswith("hooks.test:")

        other_name = tls_receiver.url.replace("hooks.test", "other.test")  # the certificate does not hold it
        refused = send(other_name, new_secret(), "msg_2", BODY, timeout_s=5, address="127.0.0.1", verify=client_trust)
        assert not refused.ok
        assert "certificate" in refused.error.lower()
        assert len(tls_receiver.requests) == 1


def test_behind_an_outbound_proxy_it_leaves_the_name_to_the_proxy(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = receiver.url.split("/hooks")[0]  # the receiver plays the proxy: it records the absolute request URL
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy)

    outcome = send("http://hooks.invalid/h", new_secret(), "msg_1", BODY, timeout_s=5, address="203.0.113.9")

    assert outcome.ok
    assert receiver.requests[0].path == "http://hooks.invalid/h"  # the name went to the proxy, not the address
