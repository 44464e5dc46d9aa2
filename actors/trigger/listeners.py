"""Subject triggers: one durable consumer per trigger, consumed through the Actor base.

Each has its own durable consumer `trigger-task-<task id>` (new messages only, created before
`register` answers) on the stream holding its subject, shared by every replica, so events
published while the actor is down fire when it is back. Only subjects kept by a JetStream stream
can trigger (core-NATS-only subjects are refused at `register`). Each event is checked against
the trigger's row (enabled, subject, filter) and fires with a firing id made from the task and
the event (its `Nats-Msg-Id`, else its stream position); firing ids already recorded (table
`firings`) are not published again, so a redelivered event fires once. A task never fires on its
own events (`ab.scheduler.evt.<tenant>.<its id>.…`): no trivial loops.

The Actor base pulls each consumer, one event at a time (so a trigger fires in event order),
naks a failed event with backoff and dead-letters it after max_deliver. An event that is JSON
but not an object is acked and ignored; one that is not JSON does not decode, so the base
dead-letters it (nothing fires either way). A consumer deleted while its trigger still listens
is recreated by the next reconcile; one no enabled trigger owns is deleted by the sweep.
"""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import structlog
from nats.js.errors import NotFoundError

from actors.trigger import store
from actors.trigger.config import TriggerActorConfig
from actors.trigger.firings import Admission, Firings
from actors.trigger.patterns import CONSUMER_PREFIX, consumer_name, event_firing_id, listens_to, matches, own_event
from actors.trigger.store import TriggerRow
from bus import subjects
from bus.actor import Actor, Consumer, Delivery
from bus.errors import BusError
from bus.streams import ConsumerSpec, StreamSpec, ensure_consumer
from schemas.errors import ErrorCode
from schemas.tasks import FiredBy

__all__ = ["Listeners", "listens"]

CONSUMERS_PAGE = 256  # JetStream lists consumers in pages of this size
log = structlog.get_logger("trigger")


def listens(row: TriggerRow | None) -> bool:
    """Whether the trigger listens to a subject (enabled, with a subject inside its tenant's events)."""
    return row is not None and row.enabled and row.subject is not None and listens_to(row.subject, row.tenant)


def _fires_on(row: TriggerRow | None, subject: str, event: dict[str, object]) -> bool:
    return (
        row is not None
        and listens(row)
        and row.subject is not None
        and subjects.pattern_matches(row.subject, subject)
        and not own_event(subject, row.tenant, row.task_id)
        and matches(event, row.config.filter)
    )


class Listeners:
    """This replica's consumers of subject triggers, kept in line with the triggers table."""

    def __init__(self, host: Actor, pool: asyncpg.Pool, firings: Firings, config: TriggerActorConfig) -> None:
        self.host = host
        self.pool = pool
        self.firings = firings
        self.config = config
        self.listening: dict[str, str] = {}  # task id -> the subject this replica consumes for it
        self._streams: dict[str, str] = {}  # subject pattern -> the stream holding it
        # apply, reconcile and sweep one at a time: a reconcile that read the table before a change
        # is done before the change is applied, and no two of them add or remove one durable at once
        self._changing = asyncio.Lock()

    async def stream_of(self, subject: str) -> str:
        """The stream keeping `subject`; BusError(invalid) if no stream does."""
        if subject not in self._streams:
            try:
                self._streams[subject] = await self.host.bus.js.find_stream_name_by_subject(subject)
            except NotFoundError:
                raise BusError(
                    ErrorCode.INVALID,
                    f"no JetStream stream keeps {subject}: only stored events can trigger a task",
                ) from None
        return self._streams[subject]

    async def apply(self, before: TriggerRow | None, after: TriggerRow | None) -> None:
        """Bring the trigger's consumer in line with its change: created (before the caller answers,
        so no event is missed), moved to a new subject, or deleted."""
        async with self._changing:
            await self._apply(before, after)

    async def _apply(self, before: TriggerRow | None, after: TriggerRow | None) -> None:
        if before is not None and listens(before):
            assert before.subject is not None
            if not listens(after) or (after is not None and after.subject != before.subject):
                await self._forget(before.task_id, before.subject)
        if after is not None and listens(after):
            assert after.subject is not None
            await self._listen(after.task_id, after.subject)

    async def reconcile(self) -> None:
        """Consume exactly the enabled subject triggers in the table, recreating consumers that went away."""
        async with self._changing:
            await self._reconcile()

    async def _reconcile(self) -> None:
        async with self.pool.acquire() as conn:
            rows = await store.listening(conn)
        wanted = {r.task_id: r.subject for r in rows if listens(r) and r.subject is not None}
        for task_id, subject in list(self.listening.items()):
            if wanted.get(task_id) != subject:
                await self._stop(task_id)
        streams: dict[str, str] = {}
        for task_id, subject in wanted.items():
            try:
                streams[task_id] = await self.stream_of(subject)
            except BusError:
                log.warning("no stream keeps a trigger's subject any more", task_id=task_id, subject=subject)
        present = await self._trigger_consumers(set(streams.values()))
        for task_id, stream in streams.items():
            if self.listening.get(task_id) != wanted[task_id] or (stream, consumer_name(task_id)) not in present:
                await self._listen(task_id, wanted[task_id])

    async def sweep(self) -> None:
        """Delete trigger consumers no enabled trigger owns (left by a crash between the table and
        JetStream, or by a reconcile that raced a delete). Consumers are listed before the table is
        read: a consumer is only ever created after its trigger's row was committed."""
        async with self._changing:
            await self._sweep()

    async def _sweep(self) -> None:
        streams = [info.config.name for info in await self.host.bus.js.streams_info()]
        found = await self._trigger_consumers({s for s in streams if s is not None})
        if not found:
            return
        async with self.pool.acquire() as conn:
            rows = {r.task_id: r for r in await store.listening(conn) if listens(r)}
        for stream, name in found:
            row = rows.get(name.removeprefix(CONSUMER_PREFIX))
            if row is not None and row.subject is not None:
                try:
                    if await self.stream_of(row.subject) == stream:
                        continue
                except BusError:
                    pass
            log.info("removing an orphaned trigger consumer", stream=stream, consumer=name)
            await self.host.remove_consumer(name, delete_from=stream)

    async def on_event(self, task_id: str, raw: msgspec.Raw, delivery: Delivery) -> None:
        """Fire the trigger for one event if the table, not this replica's memory, says it should."""
        event = msgspec.json.decode(raw)
        if not isinstance(event, dict):
            return  # not an object: nothing a filter or a prompt could use
        admitted: Admission | None = None
        async with self.pool.acquire() as conn:
            if not _fires_on(await store.get(conn, task_id), delivery.subject, event):
                return
            async with conn.transaction():
                row = await store.get(conn, task_id, lock=True)
                if row is None or not _fires_on(row, delivery.subject, event):
                    return
                stored_at = delivery.timestamp.isoformat() if delivery.timestamp is not None else ""
                firing_id = event_firing_id(task_id, delivery.stream, delivery.msg_id, delivery.stream_seq, stored_at)
                admitted = await self.firings.admit(
                    conn, row, firing_id=firing_id, fired_by=FiredBy.EVENT, event=event,
                    trace=delivery.trace.child(tenant=row.tenant), ordinal=delivery.stream_seq,
                )  # fmt: skip
                if admitted is Admission.LIMITED:
                    await self.firings.dropped(conn, row)
        if admitted is Admission.DEFERRED:
            self.firings.wake()

    async def _listen(self, task_id: str, subject: str) -> None:
        """Create (or update) the trigger's consumer and consume it here; a consumer that went away is recreated."""
        stream = await self.stream_of(subject)
        spec = ConsumerSpec(StreamSpec(stream, ()), consumer_name(task_id), subject, deliver_new=True)
        if self.listening.get(task_id) == subject:
            # consumed here already: only (re)create it in JetStream, and the pull here resumes on its
            # own; replacing the pull would cancel its loop, which a message arriving at that moment
            # can keep running (Python 3.11's wait_for may swallow the cancel)
            await ensure_consumer(self.host.bus.js, self.host.bus_config, spec)
            return

        async def handle(raw: msgspec.Raw, delivery: Delivery) -> None:
            await self.on_event(task_id, raw, delivery)

        # one at a time: a trigger fires in the order of its events
        await self.host.add_consumer(Consumer(spec, msgspec.Raw, handle, concurrency=1))
        self.listening[task_id] = subject

    async def _stop(self, task_id: str) -> None:
        """Stop consuming here; the consumer stays for the other replicas (or the one that deletes it)."""
        self.listening.pop(task_id, None)
        await self.host.remove_consumer(consumer_name(task_id))

    async def _forget(self, task_id: str, subject: str) -> None:
        """Stop consuming and delete the consumer: the trigger no longer listens to `subject`."""
        self.listening.pop(task_id, None)
        try:
            stream: str | None = await self.stream_of(subject)
        except BusError:
            stream = None
        await self.host.remove_consumer(consumer_name(task_id), delete_from=stream)

    async def _trigger_consumers(self, streams: set[str]) -> set[tuple[str, str]]:
        """(stream, consumer) of every trigger consumer on `streams`."""
        found: set[tuple[str, str]] = set()
        for stream in sorted(streams):
            offset = 0
            while True:
                page = await self.host.bus.js.consumers_info(stream, offset=offset)
                found |= {(stream, c.name) for c in page if c.name.startswith(CONSUMER_PREFIX)}
                if len(page) < CONSUMERS_PAGE:
                    break
                offset += len(page)
        return found
