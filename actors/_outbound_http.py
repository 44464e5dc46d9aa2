"""HTTP clients for outgoing requests that connect only to addresses `resolve_checked` let through.

The check sits in the connection pool's network backend (`connect_tcp`), where httpcore opens a
TCP connection: the host name is resolved there once, every address is checked, and the
connection goes to one of those IP addresses. The request keeps its URL, so the Host header, the
TLS server name (SNI) and the certificate check are still for the host name. There is no second
DNS lookup to rebind, every redirect hop opens its own checked connection, and environment
proxies are ignored (a proxy would resolve the name itself).

`http_client` is an `httpx.AsyncClient` (webhooks, Slack, page fetches); `mcp_http_client` an
`httpx2.AsyncClient`, the fork the MCP SDK is built on. Written here, on httpcore's public
`AsyncNetworkBackend` hook, because the one PyPI package for it (drawbridge, 0.1.x in 2026) is too
young to depend on and is not a dependency of the project.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpcore2
import httpx
import httpx2

from actors._outbound import Allowlist, IPAddress, UnsafeURL, resolve_checked

__all__ = ["http_client", "mcp_http_client"]

# httpx's own defaults (httpx.Limits()), which its transport would have given the pool
POOL_LIMITS: dict[str, Any] = {"max_connections": 100, "max_keepalive_connections": 20, "keepalive_expiry": 5.0}


async def _addresses(host: str, port: int, allow: Allowlist, timeout: float | None) -> list[IPAddress]:
    try:
        async with asyncio.timeout(timeout):
            return await resolve_checked(host, port, allow)
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"resolving {host} took longer than {timeout} seconds") from None


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's anyio backend, connecting only to checked addresses of the host."""

    def __init__(self, allow: Allowlist) -> None:
        self.allow = allow
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        failure: Exception = httpcore.ConnectError(f"no address for {host}")
        for address in await _addresses(host, port, self.allow, timeout):
            try:
                return await self._inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                failure = e  # the next address, as a client trying each of a name's addresses would
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise UnsafeURL("outgoing requests do not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class CheckedBackend2(httpcore2.AsyncNetworkBackend):
    """The same for httpcore2 (httpx2's core)."""

    def __init__(self, allow: Allowlist) -> None:
        self.allow = allow
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        failure: Exception = httpcore2.ConnectError(f"no address for {host}")
        try:
            addresses = await _addresses(host, port, self.allow, timeout)
        except httpcore.ConnectTimeout as e:
            raise httpcore2.ConnectTimeout(str(e)) from None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as e:
                failure = e
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.AsyncNetworkStream:
        raise UnsafeURL("outgoing requests do not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def http_client(
    allow: Allowlist, *, timeout: float, verify: ssl.SSLContext | None = None, **kwargs: Any
) -> httpx.AsyncClient:
    """An httpx client whose every connection goes to a checked address. `verify`: the TLS context
    (default: the system's CAs, the host name checked); `kwargs`: httpx.AsyncClient's."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    # httpx takes no network backend: its pool is replaced by the same pool on the checked backend
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=verify or httpx.create_ssl_context(trust_env=False),
        network_backend=CheckedBackend(allow),
        **POOL_LIMITS,
    )
    return httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False, **kwargs)


def mcp_http_client(allow: Allowlist, *, headers: dict[str, str] | None = None) -> httpx2.AsyncClient:
    """An httpx2 client for an MCP server over HTTP, on the checked backend; timeouts as the MCP SDK's."""
    transport = httpx2.AsyncHTTPTransport(trust_env=False)
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=httpx2.create_ssl_context(trust_env=False), network_backend=CheckedBackend2(allow), **POOL_LIMITS
    )
    return httpx2.AsyncClient(
        transport=transport,
        headers=headers,
        timeout=httpx2.Timeout(30.0, read=300.0),
        trust_env=False,
        follow_redirects=True,
    )
