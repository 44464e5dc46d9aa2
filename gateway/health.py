"""GET /health: NATS, JetStream write availability, and every actor's micro service health (with its PostgreSQL).

JetStream can be connected and still refuse writes: while a stream has no leader (an election after
a server died) or the meta group has none. So each stream the platform writes to is asked for its info,
which only its leader answers (and only while the meta group has a leader); any stream that does not
answer in time makes the platform unhealthy (503 with Retry-After).

`models` lists the circuit breaker of every model deployment that has failed (bus/breakers.py): an
open one does not make the platform unhealthy (it is up; a provider is not), but says until when
runs on it are refused.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from litestar import Response, get
from litestar.datastructures import State
from nats.js.errors import NotFoundError

from bus import keys, subjects
from bus.breakers import read_breakers
from bus.client import Bus
from bus.errors import BusError
from bus.headers import Trace
from bus.streams import ALL_STREAMS, IDEMPOTENCY_BUCKET
from gateway.errors import RETRY_AFTER_S
from gateway.state import gateway_of
from schemas.health import HealthCheck, HealthReport

__all__ = ["health"]

STREAM_CHECK_S = 2.0
STREAMS = (*(s.name for s in ALL_STREAMS), f"KV_{keys.BUCKET}", f"KV_{IDEMPOTENCY_BUCKET}")


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


async def _stream(bus: Bus, name: str) -> str:
    """'ok' when the stream's leader answers (so it can store a write), else why not."""
    try:
        info = await asyncio.wait_for(bus.js.stream_info(name), STREAM_CHECK_S)
    except TimeoutError:
        return "no leader answers"
    except NotFoundError:  # the API key bucket before the first key is made: nothing to write to yet
        return "ok" if name.startswith("KV_") else "missing"
    except Exception as e:  # the server's error (e.g. JetStream cluster not available), by type only
        return f"unavailable ({type(e).__name__})"
    if info.cluster is not None and not info.cluster.leader:
        return "no leader"
    return "ok"


async def _jetstream(bus: Bus) -> dict[str, str]:
    if not bus.nc.is_connected:
        return dict.fromkeys(STREAMS, "disconnected")
    return dict(zip(STREAMS, await asyncio.gather(*(_stream(bus, name) for name in STREAMS)), strict=True))


async def _models(bus: Bus) -> dict[str, Any]:
    try:
        states = await asyncio.wait_for(read_breakers(bus), STREAM_CHECK_S)
    except Exception as e:  # the bucket's stream is unavailable: said, by type only
        return {"error": f"unavailable ({type(e).__name__})"}
    now = time.time()
    breakers = {
        name: {
            "state": s.phase.value,
            "failures": s.failures,
            "retry_after_s": round(max((s.open_until if s.phase == "open" else s.probe_until) - now, 0.0), 1),
            "last_error": s.last_error,
        }
        for name, s in sorted(states.items())
        if s.phase != "closed" or s.failures
    }
    return {"open": sorted(n for n, b in breakers.items() if b["state"] != "closed"), "breakers": breakers}


@get("/health", tags=["health"], summary="Is every part up? 200 when all are, 503 otherwise")
async def health(state: State) -> Response[Any]:
    gw = gateway_of(state)
    nats_ok = gw.bus.nc.is_connected
    streams, models, *reports = await asyncio.gather(
        _jetstream(gw.bus), _models(gw.bus), *(_actor(state, a) for a in gw.config.actors)
    )
    actors = dict(zip(gw.config.actors, reports, strict=True))
    unavailable = {name: why for name, why in streams.items() if why != "ok"}
    ok = nats_ok and not unavailable and all(a["ok"] for a in actors.values())
    body = {
        "ok": ok,
        "nats": "ok" if nats_ok else "disconnected",
        "jetstream": "ok" if not unavailable else {"unavailable": unavailable},
        "actors": actors,
        "models": models,
    }
    headers = None if ok else {"Retry-After": str(RETRY_AFTER_S)}
    return Response(
        msgspec.json.encode(body), status_code=200 if ok else 503, media_type="application/json", headers=headers
    )
