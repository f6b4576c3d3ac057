"""Which URLs the server may send requests to on a tenant's behalf (teacher endpoints, webhooks).

A tenant who types a URL makes the server connect to it, so an unchecked URL lets them probe the server's own
network (SSRF). Link-local and cloud-metadata addresses are always refused; private and loopback addresses only
when the operator allows them (or lists the host). The name is resolved at each use, not only when saved, since
a name may point elsewhere by then.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

METADATA_HOSTS = {"169.254.169.254", "fd00:ec2::254", "metadata.google.internal", "100.100.100.200"}


@dataclass(frozen=True)
class OutboundPolicy:
    """The operator's rules for one kind of outbound URL, and the words the refusals use."""

    allow_private: bool
    allowed_hosts: Sequence[str]
    noun: str  # what the URL is, in the refusals: "teacher", "webhook"
    private_setting: str  # the setting that allows private addresses, named in the refusal
    hosts_setting: str  # the setting that lists allowed hosts, named in the refusal


def url_refusal(url: str, policy: OutboundPolicy) -> str | None:
    """Why the server must not connect to `url`, or None when it may."""
    checked = allowed_address(url, policy)
    return checked.refusal if isinstance(checked, Refusal) else None


@dataclass(frozen=True)
class Refusal:
    refusal: str


def allowed_address(url: str, policy: OutboundPolicy) -> str | Refusal:
    """An address `url`'s host resolves to, every one of them allowed; or why the server must not connect.

    A caller that connects to this address (not to the name again) cannot be turned to another one by a DNS
    answer that changes between the check and the connection (rebinding).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return Refusal("The endpoint must be an http(s) URL with a host.")
    host = parts.hostname.lower()
    allowed = [h.lower() for h in policy.allowed_hosts]
    if allowed and host not in allowed:
        return Refusal(f"{host} is not on this server's list of allowed {policy.noun} hosts.")
    if host in METADATA_HOSTS:
        return Refusal(f"Cloud metadata addresses cannot be {policy.noun}s.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
    except (OSError, ValueError):
        addresses = []
    if not addresses:
        return Refusal(f"The host {host} cannot be resolved.")
    for address in dict.fromkeys(addresses):
        ip = ipaddress.ip_address(str(address).split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 reaches 169.254.169.254: judge the IPv4 address
        if str(ip) in METADATA_HOSTS or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
            return Refusal(f"{host} resolves to {ip}, a link-local or reserved address: refused.")
        if (ip.is_private or ip.is_loopback) and not policy.allow_private and host not in allowed:
            return Refusal(
                f"{host} resolves to the private address {ip}: the operator must allow private endpoints "
                f"({policy.private_setting}) or list the host ({policy.hosts_setting})."
            )
    return str(addresses[0])
