"""API keys: `Authorization: Bearer <key>` → the key's tenant, cached briefly in the process."""

from __future__ import annotations

import time
from typing import Any

from litestar.connection import ASGIConnection
from litestar.di import NamedDependency

from bus import keys
from bus.client import Bus
from gateway.errors import ApiError
from schemas.errors import ErrorCode

__all__ = ["KeyCache", "Tenant", "presented_key"]

Tenant = NamedDependency[str]
"""A handler parameter `tenant: Tenant` is the tenant of the request's API key."""


class KeyCache:
    def __init__(self, bus: Bus, ttl_s: float) -> None:
        self.bus = bus
        self.ttl_s = ttl_s
        self._known: dict[str, tuple[str, float]] = {}

    async def tenant(self, key: str) -> str:
        now = time.monotonic()
        hit = self._known.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        record = await keys.lookup(self.bus, key)
        if record is None:
            raise ApiError(ErrorCode.UNAUTHORIZED, "unknown API key")
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[key] = (record.tenant, now + self.ttl_s)
        return record.tenant


def presented_key(connection: ASGIConnection[Any, Any, Any, Any], *, allow_query: bool = False) -> str:
    """The bearer key of a request (or, for a browser's WebSocket, its `api_key` query parameter)."""
    header = connection.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        return key.strip()
    if allow_query and connection.query_params.get("api_key"):
        return str(connection.query_params["api_key"])
    raise ApiError(ErrorCode.UNAUTHORIZED, "send an API key: Authorization: Bearer <key>")
