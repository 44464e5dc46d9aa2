"""Outgoing URLs: only http(s), and never to private, loopback, link-local or otherwise internal addresses.

Checked when a URL is accepted (syntax) and again right before each request (every address the
name resolves to), so a DNS name cannot be pointed inward later. `AGENTBUS_OUTBOUND_ALLOW` lists
hosts or CIDRs exempt from the check (for development and tests: `127.0.0.1`, `localhost`).
Callers follow no redirect without checking its target again (the notifier follows none; the research
fetcher checks every hop), so a public URL cannot bounce inward either.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Allowlist", "UnsafeURL", "check_url", "check_url_syntax"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeURL(ValueError):
    """The URL must not be requested; the message says why."""


@dataclass(frozen=True, slots=True)
class Allowlist:
    hosts: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        hosts: set[str] = set()
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower())
        return cls(frozenset(hosts), tuple(networks))

    @classmethod
    def from_env(cls) -> Allowlist:
        return cls.parse(os.environ.get("AGENTBUS_OUTBOUND_ALLOW", ""))

    def allows_host(self, host: str) -> bool:
        return host.lower() in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def _internal(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast or address.is_reserved or address.is_unspecified


def check_url_syntax(url: str) -> str:
    """The URL's host, if it is an absolute http(s) URL; else UnsafeURL."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError:  # e.g. an unclosed IPv6 bracket: "http://[::1"
        raise UnsafeURL("the URL is malformed") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL(f"only http and https URLs are allowed, not {parts.scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise UnsafeURL("the URL has no host")
    if parts.username or parts.password:
        raise UnsafeURL("credentials in the URL are not allowed")
    return parts.hostname


async def check_url(url: str, allow: Allowlist) -> None:
    """UnsafeURL unless every address the URL's host resolves to is public (or allow-listed)."""
    host = check_url_syntax(url)
    if allow.allows_host(host):
        return
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        port = urlsplit(url).port or (443 if url.startswith("https") else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise UnsafeURL(f"cannot resolve {host}: {e}") from e
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for address in addresses:
        if _internal(address) and not allow.allows_address(address):
            raise UnsafeURL(f"{host} resolves to {address}, a private or internal address")
