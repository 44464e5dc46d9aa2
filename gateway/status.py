"""GET /v1/status: the operator's view of the running platform (what `agentbus status` shows).

- `actors`: every replica of every actor, found by NATS micro service discovery (a PING on
  `$SRV.PING.agentbus-<actor>`, every reply gathered for DISCOVERY_S, not just the first), each asked for
  its own health on `ab.<actor>.svc.health.<instance id>` (bus/actor.py registers it beside the shared
  `health`), so one sick replica among healthy ones shows. An actor with no replica is not ok.
- `consumers`: the backlog of every durable consumer of the platform's streams (JetStream consumer info:
  pending, ack pending, redelivered). The subject triggers' consumers (`trigger-task-<task id>`, one per
  task of any tenant) are summed into one line, so no tenant's task ids show.
- `dead_letters`: how many of the caller tenant's letters AB_DLQ holds, per actor (gateway/dead_letters.py).
- `models`: the circuit breakers, as GET /health shows them (gateway/health.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import structlog
from litestar import get
from nats.aio.msg import Msg
from nats.js.api import ConsumerInfo

from bus import subjects
from bus.errors import BusError
from bus.streams import ALL_STREAMS
from gateway.caller import Caller
from gateway.dead_letters import tenant_counts
from gateway.health import _models
from gateway.state import Gateway
from schemas.health import HealthCheck, HealthReport
from schemas.status import ActorStatus, ConsumerBacklog, PlatformStatus, ReplicaStatus

__all__ = ["DISCOVERY_S", "read_status"]

log = structlog.get_logger("gateway")
DISCOVERY_S = 0.5  # how long PING replies are gathered: every replica on a healthy bus answers within ms
HEALTH_S = 2.0
CONSUMER_PAGE = 256  # JetStream lists consumers this many at a time
TRIGGER_TASKS = "trigger-task-"


class _Ping(msgspec.Struct, frozen=True):
    id: str
    name: str
    metadata: dict[str, str] = {}


def service_name(actor: str) -> str:
    return f"agentbus-{actor}"  # as bus/actor.py names each actor's micro service


async def _discover(gw: Gateway, actor: str) -> list[_Ping]:
    """Every replica that answers a PING within DISCOVERY_S."""
    nc = gw.bus.nc
    inbox = nc.new_inbox()
    replies: list[_Ping] = []

    async def collect(msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            replies.append(msgspec.json.decode(msg.data, type=_Ping))

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(subjects.micro_ping(service_name(actor)), b"", reply=inbox)
        await asyncio.sleep(DISCOVERY_S)
    finally:
        await sub.unsubscribe()
    return sorted({p.id: p for p in replies}.values(), key=lambda p: p.metadata.get("instance", p.id))


async def _replica(gw: Gateway, caller: Caller, actor: str, ping: _Ping) -> ReplicaStatus:
    instance = ping.metadata.get("instance", ping.id)
    try:
        report = await gw.bus.request(
            subjects.instance_health(subjects.ActorName(actor), ping.id),
            HealthCheck(),
            HealthReport,
            trace=caller.trace,
            timeout=HEALTH_S,
        )
    except BusError as e:  # discovered, yet not answering for its health: a replica in trouble
        return ReplicaStatus(instance=instance, ok=False, checks={"health": e.message})
    return ReplicaStatus(instance=report.instance or instance, ok=report.ok, checks=report.checks)


async def _actor(gw: Gateway, caller: Caller, actor: str) -> ActorStatus:
    pings = await _discover(gw, actor)
    replicas = list(await asyncio.gather(*(_replica(gw, caller, actor, p) for p in pings)))
    return ActorStatus(ok=bool(replicas) and all(r.ok for r in replicas), replicas=replicas)


async def _consumers(gw: Gateway) -> list[ConsumerBacklog]:
    backlogs: list[ConsumerBacklog] = []
    for spec in ALL_STREAMS:
        infos: list[ConsumerInfo] = []
        while True:
            page = await gw.bus.js.consumers_info(spec.name, offset=len(infos) or None)
            infos += page
            if len(page) < CONSUMER_PAGE:
                break
        triggers = [0, 0, 0]
        for info in sorted(infos, key=lambda i: i.name):
            if not info.config.durable_name:  # a reader's ephemeral consumer (a stream being followed)
                continue
            counts = (info.num_pending or 0, info.num_ack_pending or 0, info.num_redelivered or 0)
            if info.name.startswith(TRIGGER_TASKS):
                triggers = [a + b for a, b in zip(triggers, counts, strict=True)]
                continue
            backlogs.append(
                ConsumerBacklog(
                    stream=spec.name,
                    consumer=info.name,
                    pending=counts[0],
                    ack_pending=counts[1],
                    redelivered=counts[2],
                )
            )
        if any(i.name.startswith(TRIGGER_TASKS) and i.config.durable_name for i in infos):
            pending, ack_pending, redelivered = triggers
            backlogs.append(
                ConsumerBacklog(
                    stream=spec.name,
                    consumer=f"{TRIGGER_TASKS}*",
                    pending=pending,
                    ack_pending=ack_pending,
                    redelivered=redelivered,
                )
            )
    return backlogs


@get(
    "/v1/status",
    tags=["status"],
    summary="Every actor's replicas and their health, consumer backlogs, the "
    "tenant's dead letters per actor, and the models' circuit breakers",
)
async def read_status(caller: Caller) -> PlatformStatus:
    gw = caller.gateway
    started = time.perf_counter()
    actors, consumers, dead, models = await asyncio.gather(
        asyncio.gather(*(_actor(gw, caller, a) for a in gw.config.actors)),
        _consumers(gw),
        tenant_counts(gw, caller.tenant),
        _models(gw.bus),
    )
    log.debug("status gathered", ms=round((time.perf_counter() - started) * 1000, 1))
    return PlatformStatus(
        actors=dict(zip(gw.config.actors, actors, strict=True)), consumers=consumers, dead_letters=dead, models=models
    )
