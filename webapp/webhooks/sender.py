"""Sending one signed webhook request: no database, no settings, so it is tested against a real HTTP server."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from workers.ml.pinned_http import pinned_transport

USER_AGENT = "Distillery-Webhooks/1"
# What is kept of a receiver's answer, for the delivery log: enough to read an error message, never a page.
EXCERPT_BYTES = 1000


@dataclass(frozen=True)
class SendOutcome:
    ok: bool
    status_code: int | None
    error: str
    excerpt: str


def signed_headers(secret: str, message_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
    """The Standard Webhooks headers of `body`: its id, the time of sending, and `v1,<HMAC-SHA256 in base64>`."""
    now = now or datetime.now(UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, now, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def send(
    url: str,
    secret: str,
    message_id: str,
    body: str,
    timeout_s: float,
    *,
    address: str | None = None,
    verify: ssl.SSLContext | bool = True,
) -> SendOutcome:
    """POST `body` to `url`, signed; any 2xx is delivered. With `address`, connect there instead of resolving the
    name again (the address the URL check approved; workers/ml/pinned_http.py). Redirects are not followed: one
    may lead off the checked host, and a receiver that moved should be given its new URL."""
    headers = signed_headers(secret, message_id, body)
    transport = pinned_transport(url, address, verify=verify)
    try:
        with (
            httpx.Client(timeout=timeout_s, follow_redirects=False, verify=verify, transport=transport) as client,
            client.stream("POST", url, content=body.encode(), headers=headers) as response,
        ):
            excerpt = b""
            for part in response.iter_bytes():
                excerpt += part
                if len(excerpt) >= EXCERPT_BYTES:
                    break
    except httpx.TimeoutException:
        return SendOutcome(False, None, f"No answer within {timeout_s:g} s.", "")
    except httpx.HTTPError as error:
        return SendOutcome(False, None, f"Could not connect: {error}", "")
    text = excerpt[:EXCERPT_BYTES].decode("utf-8", errors="replace")
    code = response.status_code
    if 200 <= code < 300:
        return SendOutcome(True, code, "", text)
    if response.is_redirect:
        where = response.headers.get("location", "?")
        return SendOutcome(
            False, code, f"Answered a redirect (HTTP {code}) to {where}: webhooks do not follow redirects.", text
        )
    return SendOutcome(False, code, f"Answered HTTP {code}; any 2xx status counts as delivered.", text)
