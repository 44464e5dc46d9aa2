"""Firing a trigger: debounce, the per-minute limit, and the FireTask command it publishes.

Both live in PostgreSQL, not in a replica's memory: every replica sees the same limit and the
same debounced firing, and a debounced firing survives a crash. Debounce keeps one firing, with
the last event, until `debounce_seconds` after the last; the limit is a sliding one-minute window
of recorded firings, and a firing over it is dropped (counted in `triggers.dropped`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from typing import Any

import asyncpg
import structlog

from actors._postgres import Conn
from actors.trigger import store
from actors.trigger.config import TriggerActorConfig
from actors.trigger.store import TriggerRow
from bus import subjects
from bus.client import Bus
from bus.headers import Header, Trace
from schemas.tasks import FiredBy, FireTask

__all__ = ["Admission", "Firings"]

log = structlog.get_logger("trigger")


class Admission(enum.Enum):
    """What became of an event that matched its trigger."""

    FIRED = "fired"  # FireTask published inside the caller's transaction (or earlier, for a redelivery)
    DEFERRED = "deferred"  # held for debounce
    LIMITED = "limited"  # over max_runs_per_minute


class Firings:
    """Admits matching events as firings and fires the debounced ones when they are due."""

    def __init__(self, bus: Bus, pool: asyncpg.Pool, config: TriggerActorConfig) -> None:
        self.bus = bus
        self.pool = pool
        self.config = config
        self._wake = asyncio.Event()  # a debounced firing was recorded here

    def wake(self) -> None:
        """A debounced firing was committed: look at once, not at the next poll."""
        self._wake.set()

    async def admit(
        self,
        conn: Conn,
        row: TriggerRow,
        *,
        firing_id: str,
        fired_by: FiredBy,
        event: dict[str, Any],
        trace: Trace,
        ordinal: int,
    ) -> Admission:
        """Debounce or fire, inside the caller's transaction that holds the trigger's row."""
        if row.config.debounce_seconds > 0:
            await store.defer(
                conn, task_id=row.task_id, firing_id=firing_id, fired_by=fired_by, ordinal=ordinal, event=event,
                trace={"correlation_id": trace.correlation_id, "traceparent": trace.traceparent},
                delay_s=row.config.debounce_seconds,
            )  # fmt: skip
            return Admission.DEFERRED
        return await self.fire(conn, row, firing_id=firing_id, fired_by=fired_by, event=event, trace=trace)

    async def fire(
        self, conn: Conn, row: TriggerRow, *, firing_id: str, fired_by: FiredBy, event: dict[str, Any], trace: Trace
    ) -> Admission:
        """Record the firing within the per-minute limit and publish FireTask; the caller commits
        after this returns, so a recorded firing was published (a failed publish rolls the record
        back). A firing id already recorded (a redelivered event) is not published again."""
        if await store.was_fired(conn, row.task_id, firing_id):
            return Admission.FIRED
        limit = row.config.max_runs_per_minute
        if limit is not None and await store.fired_last_minute(conn, row.task_id) >= limit:
            return Admission.LIMITED
        await store.record_firing(conn, row.task_id, firing_id)
        fire = FireTask(task_id=row.task_id, firing_id=firing_id, fired_by=fired_by, event=event)
        subject = subjects.scheduler_command(row.tenant, row.task_id)
        await self.bus.publish(subject, fire, trace=trace, msg_id=firing_id)
        return Admission.FIRED

    async def dropped(self, conn: Conn, row: TriggerRow) -> None:
        """Count and log an event dropped over the limit."""
        dropped = await store.count_dropped(conn, row.task_id)
        log.info(
            "event dropped: trigger over its limit",
            task_id=row.task_id, limit=row.config.max_runs_per_minute, dropped=dropped,
        )  # fmt: skip

    async def debounce(self) -> None:
        """Fire debounced firings when due: this replica's at once, any replica's within a poll."""
        while True:
            self._wake.clear()
            wait: float | None = None
            try:
                await self._fire_due()
                async with self.pool.acquire() as conn:
                    wait = await store.next_due_in(conn)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("debounced firing failed; trying again")
            poll = self.config.debounce_poll_s
            delay = poll if wait is None else min(max(wait, 0.02), poll)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _fire_due(self) -> None:
        async with self.pool.acquire() as conn:
            for task_id in await store.due(conn, 50):
                async with conn.transaction():
                    row = await store.get(conn, task_id, skip_locked=True)  # the row first, as events lock it
                    if row is None:
                        continue  # another replica is at it (or the trigger is gone, and its firing with it)
                    pending = await store.take_due(conn, task_id)
                    if pending is None or not row.enabled:
                        continue
                    trace = Trace.from_headers(
                        {
                            Header.CORRELATION_ID.value: pending.trace.get("correlation_id", ""),
                            Header.TRACEPARENT.value: pending.trace.get("traceparent", ""),
                        },
                        tenant=row.tenant,
                    )
                    admitted = await self.fire(
                        conn, row, firing_id=pending.firing_id, fired_by=pending.fired_by, event=pending.event,
                        trace=trace.child(tenant=row.tenant),
                    )  # fmt: skip
                    if admitted is Admission.LIMITED:
                        await self.dropped(conn, row)
