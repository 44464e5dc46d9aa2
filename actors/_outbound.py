"""Outgoing URLs: only http(s), and never to private, loopback, link-local or otherwise internal addresses.

Checked when a URL is accepted (syntax, and what it resolves to now) and again when a connection is
opened: `resolve_checked` resolves the host once, checks every address it got, and the HTTP clients
in `actors/_outbound_http.py` then connect to those very addresses, so a DNS answer that changes
between the check and the connection (DNS rebinding) cannot point a request inward.

Refused: everything Python's `ipaddress` does not call global (private, loopback, link-local, CGNAT,
documentation, benchmarking, ...), multicast, reserved and unspecified addresses, IPv4-mapped IPv6
addresses of those, and the IPv6 transition prefixes that can reach an IPv4 address behind a
gateway: 6to4 (`2002::/16`) and NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`).

`AGENTBUS_OUTBOUND_ALLOW` lists hosts or CIDRs exempt from the check (for development and tests:
`127.0.0.1`, `localhost`, or an internal MCP server's name). An allowed host name is still resolved
once and connected to at what it resolved to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = [
    "Allowlist",
    "IPAddress",
    "Resolver",
    "UnsafeURL",
    "check_url",
    "check_url_syntax",
    "internal",
    "resolve_checked",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""(host, port) -> the addresses the host name resolves to, as text."""

TRANSITION_NETWORKS = (
    ipaddress.IPv6Network("2002::/16"),  # 6to4: the next 32 bits are an IPv4 address
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64, well-known prefix (RFC 6052)
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # NAT64, local-use prefix (RFC 8215)
)


class UnsafeURL(ValueError):
    """The URL must not be requested; the message says why."""


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answer (getaddrinfo), each address once, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True, slots=True)
class Allowlist:
    """The outbound rules: hosts and networks exempt from the check, and how host names are resolved."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    resolver: Resolver = field(default=system_resolver, compare=False)  # a test may answer as it likes

    @classmethod
    def parse(cls, text: str, *, resolver: Resolver = system_resolver) -> Allowlist:
        hosts: set[str] = set()
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower())
        return cls(frozenset(hosts), tuple(networks), resolver)

    @classmethod
    def from_env(cls) -> Allowlist:
        return cls.parse(os.environ.get("AGENTBUS_OUTBOUND_ALLOW", ""))

    def allows_host(self, host: str) -> bool:
        return host.lower() in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def internal(address: IPAddress) -> bool:
    """True for an address an outgoing request must not reach (see the module's docstring)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return internal(address.ipv4_mapped)
        if any(address in network for network in TRANSITION_NETWORKS):
            return True
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


async def resolve_checked(host: str, port: int, allow: Allowlist) -> list[IPAddress]:
    """The addresses to connect to for `host`: resolved once, every one checked; UnsafeURL if any of
    them is internal and not allow-listed (or the name does not resolve)."""
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        try:
            answer = await allow.resolver(host, port)
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in answer]  # without an IPv6 zone
        except (OSError, ValueError) as e:  # socket.gaierror is an OSError
            raise UnsafeURL(f"cannot resolve {host}: {e}") from e
        if not addresses:
            raise UnsafeURL(f"cannot resolve {host}: no addresses") from None
        if allow.allows_host(host):
            return addresses
    for address in addresses:
        if internal(address) and not allow.allows_address(address) and not allow.allows_host(host):
            raise UnsafeURL(f"{host} resolves to {address}, a private or internal address")
    return addresses


async def check_url(url: str, allow: Allowlist) -> None:
    """UnsafeURL unless the URL is http(s) and every address its host resolves to now is public (or
    allow-listed). Only a check when the URL is accepted: the connection checks again."""
    host = check_url_syntax(url)
    port = urlsplit(url).port or (443 if url.startswith("https") else 80)
    await resolve_checked(host, port, allow)
