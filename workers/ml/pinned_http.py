"""HTTP to an address checked in advance (the defence against DNS rebinding).

A caller that refuses private addresses (SSRF) resolves a URL's host and checks every address. If the HTTP client
then resolved the name again, a DNS server could answer differently the second time and send the request into
the server's own network. A pinned transport connects to the checked address instead, while the request keeps
the URL's Host header and, over HTTPS, its TLS server name, so the certificate is still checked against the name.
Requests to any other host are refused: nothing checked them. Behind a proxy from the environment (HTTP_PROXY,
HTTPS_PROXY) nothing is pinned: the proxy resolves the name itself.
"""

from __future__ import annotations

import urllib.request
from functools import cache
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import httpx


@cache
def _pinned_transport_class(http: ModuleType) -> type:
    """A transport class of the `http` library (httpx, or httpx2 under the openai client): the two share the API
    but not their classes, so a transport must come from the library of the client that uses it."""

    # The base comes from the module passed in, which mypy cannot see into (a ModuleType's attributes are unknown).
    class PinnedTransport(http.HTTPTransport):  # type: ignore[name-defined,misc]
        """Sends requests for `host` to `address`; refuses any other host (a redirect there was never checked)."""

        def __init__(self, host: str, address: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.host = host
            self.address = address

        def handle_request(self, request: Any) -> Any:
            if request.url.host != self.host:
                raise http.ConnectError(f"{request.url.host} was not checked; only {self.host} may be reached.")
            # The Host header was set from the URL when the request was built; it stays the name.
            if request.url.scheme == "https":
                request.extensions = {**request.extensions, "sni_hostname": self.host}
            request.url = request.url.copy_with(host=self.address)
            return super().handle_request(request)

    return PinnedTransport


def through_proxy(url: str) -> bool:
    """Whether the environment sends `url` through an outbound proxy (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY),
    as httpx would. The proxy resolves the name itself, so there is no address to pin; guarding what it reaches
    is its job (and an address in the tunnel would fail the certificate check)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    # Undocumented in CPython and so missing from typeshed's stubs; urllib.request has it since Python 3.2.
    return not urllib.request.proxy_bypass_environment(parts.hostname or "")  # type: ignore[attr-defined]


def pinned_transport(url: str, address: str | None, *, http: ModuleType = httpx, **kwargs: Any) -> Any:
    """A transport of the `http` library that pins `url`'s host to `address` (keyword arguments: its
    HTTPTransport's); None when there is nothing to pin: no address, or a proxy from the environment takes the
    request (a client uses the environment's proxies only when it is given no transport)."""
    if address is None or through_proxy(url):
        return None
    return _pinned_transport_class(http)(http.URL(url).host, address, **kwargs)
