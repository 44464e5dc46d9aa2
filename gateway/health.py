"""GET /health: NATS, and every actor's micro service health (which includes its PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Response, get
from litestar.datastructures import State

from bus import subjects
from bus.errors import BusError
from bus.headers import Trace
from gateway.state import gateway_of
from schemas.health import HealthCheck, HealthReport

__all__ = ["health"]


async def _actor(state: State, name: str) -> dict[str, Any]:
    gw = gateway_of(state)
    try:
        report = await gw.bus.request(
            subjects.service(subjects.ActorName(name), "health"),
            HealthCheck(),
            HealthReport,
            trace=Trace(tenant="health"),
            timeout=2.0,
        )
    except BusError as e:
        return {"ok": False, "error": e.message}
    return {"ok": report.ok, "instance": report.instance, "checks": report.checks}


@get("/health", tags=["health"], summary="Is every part up? 200 when all are, 503 otherwise")
async def health(state: State) -> Response[Any]:
    gw = gateway_of(state)
    nats_ok = gw.bus.nc.is_connected
    actors = dict(
        zip(gw.config.actors, await asyncio.gather(*(_actor(state, a) for a in gw.config.actors)), strict=True)
    )
    ok = nats_ok and all(a["ok"] for a in actors.values())
    body = {"ok": ok, "nats": "ok" if nats_ok else "disconnected", "actors": actors}
    return Response(msgspec.json.encode(body), status_code=200 if ok else 503, media_type="application/json")
