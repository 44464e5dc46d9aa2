"""Event waits: a parked run's `wait_for_event` call, answered with the first matching event.

The executor asks `watch` (WatchEvent) when a run parks on the call; the wait is stored, and every replica
follows each pending subject wait with an ordered consumer from the time the wait was stored (so an event
published between the park and the watch is seen), checking each event against the wait's filter
(patterns.matches, as a subject trigger's). A webhook wait is checked when its task's webhook is ingested.
The first match, or the expiry (a sweep every `reconcile_s`), resolves it once (a conditional UPDATE), and
the replica that resolved it answers the executor with CallResolved on the run's `resolve` command subject.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import structlog

from actors.trigger import waits_store
from actors.trigger.patterns import check_subject, matches
from actors.trigger.waits_store import PendingWait
from bus import subjects
from bus.client import Bus
from bus.errors import BusError
from bus.headers import Trace
from schemas.approvals import CallResolved, WatchEvent, Watching
from schemas.errors import ErrorCode

__all__ = ["Waits"]

log = structlog.get_logger("trigger")
Key = tuple[str, int, str]


def _key(watch: WatchEvent) -> Key:
    return watch.run_id, watch.park, watch.tool_call_id


class Waits:
    def __init__(self, bus: Bus, pool: asyncpg.Pool, stream_of: Any) -> None:
        self.bus = bus
        self.pool = pool
        self.stream_of = stream_of  # subject pattern -> the stream keeping it (Listeners.stream_of)
        self.following: dict[Key, asyncio.Task[None]] = {}

    async def watch(self, watch: WatchEvent, trace: Trace) -> Watching:
        """Store the wait and follow it here at once (other replicas pick it up at their next reconcile)."""
        tenant = trace.tenant
        if (watch.subject is None) == (watch.webhook_task_id is None):
            raise BusError(ErrorCode.INVALID, "a wait names a subject or a task's webhook, not both nor neither")
        if watch.subject is not None:
            check_subject(watch.subject, tenant)
            await self.stream_of(watch.subject)
        async with self.pool.acquire() as conn:
            wait = await waits_store.store(conn, tenant, watch)
        if watch.subject is not None:
            self._follow(wait)
        return Watching(run_id=watch.run_id, tool_call_id=watch.tool_call_id)

    async def reconcile(self) -> None:
        """Follow every pending subject wait, and stop following those resolved (anywhere); answer the expired."""
        async with self.pool.acquire() as conn:
            for wait in await waits_store.expired(conn):
                await self._answer(wait, None, None)
            pending = await waits_store.pending(conn)
        keys = {_key(w.watch) for w in pending}
        for key in [k for k in self.following if k not in keys]:
            self.following.pop(key).cancel()
        for wait in pending:
            self._follow(wait)

    async def on_webhook(self, task_id: str, tenant: str, event: dict[str, Any]) -> None:
        """A webhook of `task_id` was received: it answers the waits on it whose filter it matches."""
        async with self.pool.acquire() as conn:
            waiting = await waits_store.webhook_waits(conn, task_id, tenant)
        for wait in waiting:
            if matches(event, wait.watch.filter):
                await self._resolve(wait, event, f"webhook of task {task_id}")

    async def stop(self) -> None:
        for task in self.following.values():
            task.cancel()
        for task in self.following.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.following.clear()

    def _follow(self, wait: PendingWait) -> None:
        key = _key(wait.watch)
        if key not in self.following or self.following[key].done():
            self.following[key] = asyncio.create_task(self._listen(wait), name=f"wait-{wait.watch.run_id}")

    async def _listen(self, wait: PendingWait) -> None:
        watch = wait.watch
        assert watch.subject is not None
        try:
            stream = await self.stream_of(watch.subject)
            async for env in self.bus.replay(stream, watch.subject, dict[str, Any], since=wait.created_at):
                if isinstance(env.body, dict) and matches(env.body, watch.filter):
                    await self._resolve(wait, env.body, env.subject)
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # the next reconcile follows it again
            log.exception("following an event wait failed", run_id=watch.run_id)

    async def _resolve(self, wait: PendingWait, event: dict[str, Any], subject: str) -> None:
        """Answer first, then mark it resolved: a crash in between answers again (deduped by the message id, and
        the executor takes one answer per call); the other way round could lose it."""
        await self._answer(wait, event, subject)
        async with self.pool.acquire() as conn:
            await waits_store.resolve(conn, wait.watch)

    async def _answer(self, wait: PendingWait, event: dict[str, Any] | None, subject: str | None) -> None:
        watch = wait.watch
        resolved = CallResolved(
            run_id=watch.run_id,
            park=watch.park,
            tool_call_id=watch.tool_call_id,
            event=event,
            subject=subject,
            timed_out=event is None,
        )
        command = subjects.executor_subrun_command(wait.tenant, watch.run_id, subjects.RunOrigin.RESOLVE)
        msg_id = f"{watch.run_id}:resolve:{watch.park}:{watch.tool_call_id}"
        await self.bus.publish(command, resolved, trace=Trace(tenant=wait.tenant, run_id=watch.run_id), msg_id=msg_id)
