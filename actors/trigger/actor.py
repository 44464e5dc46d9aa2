"""The trigger actor: turns signed webhooks and bus events into FireTask commands for the scheduler.

- `webhooks.py`: signed webhooks (`register` makes a `whsec_` secret, returned once; a new
  `register` replaces it), checked and fired in one transaction.
- `listeners.py`: subject triggers, one durable consumer per trigger, consumed through the
  Actor base.
- `waits.py`: runs parked on `wait_for_event`, answered with the first matching event or webhook, or
  their timeout.
- `firings.py`: debounce and the per-minute limit, shared by every replica through PostgreSQL,
  and the FireTask a firing publishes.

**Following tasks.** `register`/`unregister` calls and `TaskChanged` events (durable
`trigger-tasks`, shared) update the `triggers` table, which decides everything; each replica
starts or stops its consumers from it at once when it made the change, and every `reconcile_s`
otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from actors._postgres import health as postgres_health
from actors._postgres import open_pool
from actors.trigger import store
from actors.trigger.config import TriggerActorConfig
from actors.trigger.firings import Firings
from actors.trigger.listeners import Listeners
from actors.trigger.patterns import check_subject, listens_to
from actors.trigger.signatures import new_secret
from actors.trigger.waits import Waits
from actors.trigger.webhooks import Webhooks
from bus import subjects
from bus.actor import Actor, Consumer, Delivery, Endpoint
from bus.config import BusConfig
from bus.errors import BusError
from bus.headers import Trace
from bus.streams import SCHEDULER_EVT, ConsumerSpec
from schemas._base import Message
from schemas.approvals import WatchEvent
from schemas.errors import ErrorCode
from schemas.tasks import (
    IngestWebhook,
    RegisterTrigger,
    TaskChanged,
    TaskType,
    TriggerConfig,
    TriggerRegistered,
    UnregisterTrigger,
)

__all__ = ["TriggerActor"]

MIGRATIONS = Path(__file__).parent / "migrations"
log = structlog.get_logger("trigger")


@dataclass(frozen=True, slots=True)
class _Parts:
    """What the actor opens at start."""

    pool: asyncpg.Pool
    firings: Firings
    webhooks: Webhooks
    listeners: Listeners
    waits: Waits


def _check_config(config: TriggerConfig) -> None:
    # the bounds of debounce_seconds and max_runs_per_minute are declared on TriggerConfig
    if any("" in path.split(".") for path in config.filter):
        raise BusError(ErrorCode.INVALID, "a filter key is a dotted path of non-empty names")


class TriggerActor(Actor):
    name = subjects.ActorName.TRIGGER
    description = "signed webhooks and bus events that fire triggered tasks"

    def __init__(self, bus_config: BusConfig, config: TriggerActorConfig) -> None:
        super().__init__(bus_config)
        self.config = config
        self._parts: _Parts | None = None

    @property
    def parts(self) -> _Parts:
        if self._parts is None:
            raise RuntimeError("trigger actor is not started")
        return self._parts

    @property
    def listeners(self) -> Listeners:
        return self.parts.listeners

    def routes(self) -> Sequence[Consumer[Any] | Endpoint[Any]]:
        return (
            Consumer(
                ConsumerSpec(SCHEDULER_EVT, "trigger-tasks", subjects.scheduler_changes_all(), deliver_new=True),
                TaskChanged,
                self._on_task_changed,
            ),
            Endpoint("register", RegisterTrigger, self._register),
            Endpoint("unregister", UnregisterTrigger, self._unregister),
            Endpoint("ingest", IngestWebhook, self._ingest),
            Endpoint("watch", WatchEvent, self._watch),
        )

    async def on_start(self) -> None:
        pool = await open_pool(self.config.database_url, schema="trigger", migrations=MIGRATIONS)
        async with pool.acquire() as conn:
            if resealed := await store.reseal(conn, self.config.secrets):
                log.info("webhook secrets sealed under the current key", count=resealed)
        firings = Firings(self.bus, pool, self.config)
        listeners = Listeners(self, pool, firings, self.config)
        waits = Waits(self.bus, pool, listeners.stream_of)
        self._parts = _Parts(
            pool=pool,
            firings=firings,
            webhooks=Webhooks(pool, firings, self.config, received=waits.on_webhook),
            listeners=listeners,
            waits=waits,
        )
        await self.listeners.reconcile()
        await waits.reconcile()
        self.spawn(firings.debounce(), name="trigger-debouncer")
        self.spawn(self._maintain(), name="trigger-maintenance")
        self.spawn(self._keep_waits(), name="trigger-waits")

    async def on_stop(self) -> None:
        if self._parts is not None:  # stop() has already stopped the consumers and the owned tasks
            await self._parts.waits.stop()
            await self._parts.pool.close()

    async def health_checks(self) -> dict[str, str]:
        return await postgres_health(self._parts.pool if self._parts is not None else None)

    # --- registration --------------------------------------------------------------------------

    async def _register(self, cmd: RegisterTrigger, trace: Trace) -> Message:
        tenant = trace.tenant
        try:
            subjects.token(cmd.task_id)
            subjects.token(tenant)
        except subjects.InvalidToken as e:
            raise BusError(ErrorCode.INVALID, str(e)) from None
        config = cmd.config
        _check_config(config)
        if config.subject is not None:
            check_subject(config.subject, tenant)
            await self.listeners.stream_of(config.subject)
        secret = new_secret() if config.subject is None else None
        async with self.parts.pool.acquire() as conn, conn.transaction():
            before = await store.get(conn, cmd.task_id, lock=True)
            sealed = self.config.secrets.seal(secret) if secret is not None else None
            after = await store.register(conn, cmd.task_id, tenant, sealed, config)
        if after is None:
            raise BusError(ErrorCode.CONFLICT, f"task id {cmd.task_id} is taken")
        await self.listeners.apply(before, after)
        return TriggerRegistered(task_id=cmd.task_id, webhook_secret=secret)

    async def _unregister(self, cmd: UnregisterTrigger, trace: Trace) -> Message:
        """Idempotent: unregistering what is not there (or another tenant's) changes nothing."""
        await self._remove(cmd.task_id, trace.tenant)
        return TriggerRegistered(task_id=cmd.task_id)

    async def _remove(self, task_id: str, tenant: str) -> None:
        async with self.parts.pool.acquire() as conn:
            before = await store.delete(conn, task_id, tenant)
        await self.listeners.apply(before, None)

    async def _on_task_changed(self, changed: TaskChanged, delivery: Delivery) -> None:
        task = changed.task
        if changed.deleted:
            await self._remove(task.id, task.tenant)
            return
        if task.task_type is not TaskType.TRIGGERED or task.trigger_config is None:
            return
        config: TriggerConfig | None = task.trigger_config
        if task.trigger_config.subject is not None and not listens_to(task.trigger_config.subject, task.tenant):
            log.error("a task change names a subject outside its tenant: the trigger keeps its config", task_id=task.id)
            config = None  # the scheduler validates through `register` only on create
        async with self.parts.pool.acquire() as conn, conn.transaction():
            before = await store.get(conn, task.id, lock=True)
            if before is None or before.tenant != task.tenant:
                return  # not registered here (only `register` hands out webhook secrets)
            if before.task_updated_at is not None and before.task_updated_at > task.updated_at:
                return  # an older change, delivered late
            after = await store.follow(
                conn, task.id, enabled=task.enabled, config=config or before.config, task_updated_at=task.updated_at
            )
        await self.listeners.apply(before, after)

    async def _ingest(self, hook: IngestWebhook, trace: Trace) -> Message:
        return await self.parts.webhooks.ingest(hook, trace)

    async def _watch(self, watch: WatchEvent, trace: Trace) -> Message:
        return await self.parts.waits.watch(watch, trace)

    # --- upkeep ----------------------------------------------------------------------------------

    async def _keep_waits(self) -> None:
        """Event waits: answer the expired, follow the new ones stored by other replicas."""
        while True:
            await asyncio.sleep(self.config.waits_s)
            try:
                await self.parts.waits.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("keeping the event waits failed")

    async def _maintain(self) -> None:
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(self.config.reconcile_s)
            try:
                await self.listeners.reconcile()
                if time.monotonic() - last_sweep >= self.config.sweep_s:
                    last_sweep = time.monotonic()
                    async with self.parts.pool.acquire() as conn:
                        await store.prune(conn, self.config.receipts_keep)
                    await self.listeners.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("trigger upkeep failed")
