"""API keys: `Authorization: Bearer <key>` → the key's tenant, cached briefly in the process.

While JetStream cannot answer (a failover), a key resolved before is trusted a while longer
(`stale_s`) rather than refusing a known client; an unknown one gets 503 with Retry-After.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from litestar.connection import ASGIConnection

from bus import keys
from bus.client import Bus
from bus.errors import BusError
from gateway.errors import ApiError
from schemas.errors import ErrorCode

__all__ = ["KeyCache", "presented_key"]

log = structlog.get_logger("gateway")


class KeyCache:
    def __init__(self, bus: Bus, ttl_s: float, *, stale_s: float = 600.0) -> None:
        self.bus = bus
        self.ttl_s = ttl_s
        self.stale_s = stale_s
        self._known: dict[str, tuple[str, float]] = {}

    async def tenant(self, key: str) -> str:
        now = time.monotonic()
        hit = self._known.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            record = await keys.lookup(self.bus, key)
        except BusError as e:
            if e.code is ErrorCode.UNAVAILABLE and hit is not None and hit[1] + self.stale_s > now:
                log.warning("API key store unavailable: trusting a key resolved before", tenant=hit[0])
                return hit[0]
            raise
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
