"""The trigger actor: turns signed webhooks and bus events into FireTask commands for the scheduler.

**Webhooks** (Standard Webhooks). `register` makes a `whsec_` secret (returned once; a new
`register` replaces it). `ingest` checks, in one transaction holding the trigger's row: the task
has an enabled webhook trigger (else not_found), one `v1` signature is valid (unauthorized), the
timestamp is within ± tolerance (unauthorized), the body is a JSON object (invalid), the
`webhook-id` was not accepted before for this task (conflict); it records the receipt, publishes
FireTask (firing id from task + webhook id, `Nats-Msg-Id` = firing id) and only then commits. A
failed publish rolls the receipt back, so the sender's retry goes through; a commit lost after a
publish means the retry publishes again under the same firing id, which JetStream (duplicate
window) and the scheduler (unique firing id) both drop.

**Subject triggers.** Each has its own durable consumer `trigger-task-<task id>` (new messages
only, created before `register` answers) on the stream holding its subject, shared by every
replica, so events published while the actor is down fire when it is back. Only subjects kept by
a JetStream stream can trigger (core-NATS-only subjects are refused at `register`). Each event
is checked against the trigger's row (enabled, subject, filter) and fires with a firing id made
from the task and the event (its `Nats-Msg-Id`, else its stream position); firing ids already
recorded (table `firings`) are not published again, so a redelivered event fires once. A task
never fires on its own events (`ab.scheduler.evt.<tenant>.<its id>.…`): no trivial loops.

**Shared state.** Debounce (one firing, with the last event, `debounce_seconds` after the last)
and the per-minute limit (a sliding one-minute window of recorded firings; the excess is
dropped, counted in `triggers.dropped` and logged — a webhook over the limit is refused with
`unavailable` instead, so its sender retries) live in PostgreSQL, not in a replica's memory:
every replica sees the same limit and debounce, and a debounced firing survives a crash.

**Following tasks.** `register`/`unregister` calls and `TaskChanged` events (durable
`trigger-tasks`, shared) update the `triggers` table, which decides everything; each replica
starts or stops its listeners from it at once when it made the change, and every
`reconcile_s` otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from actors._postgres import Conn, open_pool
from actors._postgres import health as postgres_health
from actors.trigger import store
from actors.trigger.config import TriggerActorConfig
from actors.trigger.patterns import (
    CONSUMER_PREFIX,
    check_subject,
    consumer_name,
    event_firing_id,
    in_scope,
    matches,
    own_event,
    subject_matches,
    webhook_firing_id,
)
from actors.trigger.signatures import new_secret, verify
from actors.trigger.store import TriggerRow
from bus import subjects
from bus.actor import BACKOFF_S, Actor, Consumer, Delivery, Endpoint
from bus.config import BusConfig
from bus.errors import BusError
from bus.headers import Header, Trace
from bus.streams import SCHEDULER_EVT, ConsumerSpec
from schemas._base import Message
from schemas.errors import ErrorCode
from schemas.tasks import (
    FiredBy,
    FireTask,
    IngestWebhook,
    RegisterTrigger,
    TaskChanged,
    TaskType,
    TriggerConfig,
    TriggerRegistered,
    UnregisterTrigger,
    WebhookAccepted,
)

__all__ = ["TriggerActor"]

MIGRATIONS = Path(__file__).parent / "migrations"
MAX_DEBOUNCE_S = 24 * 3600.0
MAX_WEBHOOK_ID = 256
_UNIX_TIME = re.compile(r"^[0-9]{1,12}$")
log = structlog.get_logger("trigger")


class Outcome(enum.Enum):
    FIRED = "fired"  # FireTask published inside the caller's transaction (or earlier, for a redelivery)
    DEFERRED = "deferred"  # held for debounce
    LIMITED = "limited"  # over max_runs_per_minute


@dataclass(slots=True)
class Listener:
    """This replica pulling one subject trigger's consumer."""

    subject: str
    task: asyncio.Task[Any]


def _listens(row: TriggerRow | None) -> bool:
    return row is not None and row.enabled and row.subject is not None and in_scope(row.subject, row.tenant)


def _check_config(config: TriggerConfig) -> None:
    if not 0 <= config.debounce_seconds <= MAX_DEBOUNCE_S:
        raise BusError(ErrorCode.INVALID, f"debounce_seconds must be between 0 and {int(MAX_DEBOUNCE_S)}")
    if config.max_runs_per_minute is not None and config.max_runs_per_minute < 1:
        raise BusError(ErrorCode.INVALID, "max_runs_per_minute must be at least 1 (or null: no limit)")
    if any("" in path.split(".") for path in config.filter):
        raise BusError(ErrorCode.INVALID, "a filter key is a dotted path of non-empty names")


class TriggerActor(Actor):
    name = subjects.ActorName.TRIGGER
    description = "signed webhooks and bus events that fire triggered tasks"

    def __init__(self, bus_config: BusConfig, config: TriggerActorConfig) -> None:
        super().__init__(bus_config)
        self.config = config
        self._pool: asyncpg.Pool | None = None
        self._listeners: dict[str, Listener] = {}
        self._streams: dict[str, str] = {}  # subject pattern -> the stream holding it
        self._wake = asyncio.Event()  # a debounced firing was recorded here

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("trigger actor is not started")
        return self._pool

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
        )

    async def on_start(self) -> None:
        self._pool = await open_pool(self.config.database_url, schema="trigger", migrations=MIGRATIONS)
        await self._reconcile()
        self.spawn(self._debouncer(), name="trigger-debouncer")
        self.spawn(self._maintain(), name="trigger-maintenance")

    async def on_stop(self) -> None:
        self._listeners.clear()  # their tasks are the actor's own: stop() has cancelled them
        if self._pool is not None:
            await self._pool.close()

    async def health_checks(self) -> dict[str, str]:
        return await postgres_health(self._pool)

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
            await self._stream_of(config.subject)
        secret = new_secret() if config.subject is None else None
        async with self.pool.acquire() as conn, conn.transaction():
            before = await store.get(conn, cmd.task_id, lock=True)
            after = await store.register(conn, cmd.task_id, tenant, secret, config)
        if after is None:
            raise BusError(ErrorCode.CONFLICT, f"task id {cmd.task_id} is taken")
        await self._apply(before, after)
        return TriggerRegistered(task_id=cmd.task_id, webhook_secret=secret)

    async def _unregister(self, cmd: UnregisterTrigger, trace: Trace) -> Message:
        """Idempotent: unregistering what is not there (or another tenant's) changes nothing."""
        await self._remove(cmd.task_id, trace.tenant)
        return TriggerRegistered(task_id=cmd.task_id)

    async def _remove(self, task_id: str, tenant: str) -> None:
        async with self.pool.acquire() as conn:
            before = await store.delete(conn, task_id, tenant)
        await self._apply(before, None)

    async def _on_task_changed(self, changed: TaskChanged, delivery: Delivery) -> None:
        task = changed.task
        if changed.deleted:
            await self._remove(task.id, task.tenant)
            return
        if task.task_type is not TaskType.TRIGGERED or task.trigger_config is None:
            return
        config: TriggerConfig | None = task.trigger_config
        if task.trigger_config.subject is not None and not in_scope(task.trigger_config.subject, task.tenant):
            log.error("a task change names a subject outside its tenant: the trigger keeps its config", task_id=task.id)
            config = None  # the scheduler validates through `register` only on create
        async with self.pool.acquire() as conn, conn.transaction():
            before = await store.get(conn, task.id, lock=True)
            if before is None or before.tenant != task.tenant:
                return  # not registered here (only `register` hands out webhook secrets)
            if before.task_updated_at is not None and before.task_updated_at > task.updated_at:
                return  # an older change, delivered late
            after = await store.follow(
                conn, task.id, enabled=task.enabled, config=config or before.config, task_updated_at=task.updated_at
            )
        await self._apply(before, after)

    async def _apply(self, before: TriggerRow | None, after: TriggerRow | None) -> None:
        """Bring consumers and this replica's listeners in line with a trigger's change."""
        if before is not None and _listens(before):
            assert before.subject is not None
            if not _listens(after) or (after is not None and after.subject != before.subject):
                self._stop(before.task_id)
                await self._drop_consumer(before.task_id, before.subject)
        if after is not None and _listens(after):
            assert after.subject is not None
            await self._ensure_consumer(after.task_id, after.subject)  # before answering: no event is missed
            current = self._listeners.get(after.task_id)
            if current is None or current.subject != after.subject:
                self._start(after.task_id, after.subject)

    # --- webhooks --------------------------------------------------------------------------------

    async def _ingest(self, hook: IngestWebhook, trace: Trace) -> Message:
        # The webhook URL names only the task (task ids are unique across tenants) and carries no
        # API key: the trigger's row says whose task it is, and its secret is the authentication.
        outcome: Outcome | None = None
        firing_id = webhook_firing_id(hook.task_id, hook.webhook_id)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await store.get(conn, hook.task_id, lock=True)
            if row is None or not row.enabled or not row.is_webhook or row.secret is None:
                raise BusError(ErrorCode.NOT_FOUND, f"no webhook for task {hook.task_id}")
            body = hook.body.encode()
            if not verify(row.secret, hook.webhook_id, hook.webhook_timestamp, body, hook.webhook_signature):
                raise BusError(ErrorCode.UNAUTHORIZED, "no valid webhook-signature for this task's secret")
            sent = self._check_timestamp(hook.webhook_timestamp)
            if len(hook.webhook_id) > MAX_WEBHOOK_ID:
                raise BusError(ErrorCode.INVALID, f"webhook-id is longer than {MAX_WEBHOOK_ID} characters")
            try:
                event = msgspec.json.decode(body)
            except msgspec.DecodeError:
                event = None
            if not isinstance(event, dict):
                raise BusError(ErrorCode.INVALID, "the webhook body must be a JSON object")
            if not await store.record_receipt(conn, hook.task_id, hook.webhook_id):
                raise BusError(ErrorCode.CONFLICT, f"webhook-id {hook.webhook_id} was already received")
            if matches(event, row.config.filter):  # else: received (not sent again), starts nothing
                outcome = await self._admit(
                    conn, row, firing_id=firing_id, fired_by=FiredBy.WEBHOOK, event=event,
                    trace=trace.child(tenant=row.tenant), ordinal=sent,
                )  # fmt: skip
                if outcome is Outcome.LIMITED:
                    log.info("webhook refused: trigger over its limit", task_id=row.task_id)
                    raise BusError(
                        ErrorCode.UNAVAILABLE,
                        f"task {row.task_id} is over its limit of {row.config.max_runs_per_minute} runs per minute;"
                        " send it again later",
                    )
        if outcome is Outcome.DEFERRED:
            self._wake.set()
        return WebhookAccepted(task_id=hook.task_id, firing_id=firing_id)

    def _check_timestamp(self, text: str) -> int:
        if not _UNIX_TIME.match(text):
            raise BusError(ErrorCode.UNAUTHORIZED, "webhook-timestamp is not a Unix time in seconds")
        sent = int(text)
        skew = time.time() - sent
        tolerance = self.config.tolerance_s
        if skew > tolerance:
            raise BusError(
                ErrorCode.UNAUTHORIZED,
                f"webhook-timestamp is {int(skew)} s old; at most {int(tolerance)} s are allowed (replay protection)",
            )
        if skew < -tolerance:
            raise BusError(
                ErrorCode.UNAUTHORIZED,
                f"webhook-timestamp is {int(-skew)} s in the future; at most {int(tolerance)} s are allowed",
            )
        return sent

    # --- firing ----------------------------------------------------------------------------------

    async def _admit(
        self,
        conn: Conn,
        row: TriggerRow,
        *,
        firing_id: str,
        fired_by: FiredBy,
        event: dict[str, Any],
        trace: Trace,
        ordinal: int,
    ) -> Outcome:
        """Debounce or fire, inside the caller's transaction that holds the trigger's row."""
        if row.config.debounce_seconds > 0:
            await store.defer(
                conn, task_id=row.task_id, firing_id=firing_id, fired_by=fired_by, ordinal=ordinal, event=event,
                trace={"correlation_id": trace.correlation_id, "traceparent": trace.traceparent},
                delay_s=row.config.debounce_seconds,
            )  # fmt: skip
            return Outcome.DEFERRED
        return await self._fire(conn, row, firing_id=firing_id, fired_by=fired_by, event=event, trace=trace)

    async def _fire(
        self, conn: Conn, row: TriggerRow, *, firing_id: str, fired_by: FiredBy, event: dict[str, Any], trace: Trace
    ) -> Outcome:
        """Record the firing within the per-minute limit and publish FireTask; the caller commits
        after this returns, so a recorded firing was published (a failed publish rolls the record
        back). A firing id already recorded (a redelivered event) is not published again."""
        if await store.was_fired(conn, row.task_id, firing_id):
            return Outcome.FIRED
        limit = row.config.max_runs_per_minute
        if limit is not None and await store.fired_last_minute(conn, row.task_id) >= limit:
            return Outcome.LIMITED
        await store.record_firing(conn, row.task_id, firing_id)
        fire = FireTask(task_id=row.task_id, firing_id=firing_id, fired_by=fired_by, event=event)
        subject = subjects.scheduler_command(row.tenant, row.task_id)
        await self.bus.publish(subject, fire, trace=trace, msg_id=firing_id)
        return Outcome.FIRED

    async def _dropped(self, conn: Conn, row: TriggerRow) -> None:
        dropped = await store.count_dropped(conn, row.task_id)
        log.info(
            "event dropped: trigger over its limit",
            task_id=row.task_id, limit=row.config.max_runs_per_minute, dropped=dropped,
        )  # fmt: skip

    async def _debouncer(self) -> None:
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
                    outcome = await self._fire(
                        conn, row, firing_id=pending.firing_id, fired_by=pending.fired_by, event=pending.event,
                        trace=trace.child(tenant=row.tenant),
                    )  # fmt: skip
                    if outcome is Outcome.LIMITED:
                        await self._dropped(conn, row)

    # --- subject triggers ------------------------------------------------------------------------

    async def _stream_of(self, subject: str) -> str:
        if subject not in self._streams:
            try:
                self._streams[subject] = await self.bus.js.find_stream_name_by_subject(subject)
            except NotFoundError:
                raise BusError(
                    ErrorCode.INVALID,
                    f"no JetStream stream keeps {subject}: only stored events can trigger a task",
                ) from None
        return self._streams[subject]

    async def _ensure_consumer(self, task_id: str, subject: str) -> str:
        stream = await self._stream_of(subject)
        config = ConsumerConfig(
            durable_name=consumer_name(task_id),
            filter_subject=subject,
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.bus_config.ack_wait_s,
            max_deliver=-1,  # counted here, then dead-lettered with the reason
            max_ack_pending=1000,
        )
        await self.bus.js.add_consumer(stream, config)  # creates, or updates the one there
        return stream

    async def _drop_consumer(self, task_id: str, subject: str) -> None:
        try:
            stream = await self._stream_of(subject)
        except BusError:
            return
        with contextlib.suppress(NotFoundError):
            await self.bus.js.delete_consumer(stream, consumer_name(task_id))

    def _start(self, task_id: str, subject: str) -> None:
        self._stop(task_id)
        self._listeners[task_id] = Listener(subject, self.spawn(self._listen(task_id), name=f"trigger-{task_id}"))

    def _stop(self, task_id: str) -> None:
        listener = self._listeners.pop(task_id, None)
        if listener is not None:
            listener.task.cancel()

    async def _reconcile(self) -> None:
        """Listen to exactly the enabled subject triggers in the table."""
        async with self.pool.acquire() as conn:
            rows = await store.listening(conn)
        wanted = {r.task_id: r.subject for r in rows if _listens(r)}
        for task_id, listener in list(self._listeners.items()):
            if wanted.get(task_id) != listener.subject:
                self._stop(task_id)
        for task_id, subject in wanted.items():
            if task_id not in self._listeners and subject is not None:
                self._start(task_id, subject)

    async def _listen(self, task_id: str) -> None:
        """Pull the trigger's durable consumer until the trigger stops listening; recreate the
        consumer if it went away while the trigger still listens."""
        me = asyncio.current_task()
        while True:
            async with self.pool.acquire() as conn:
                row = await store.get(conn, task_id)
            if row is None or not _listens(row) or row.subject is None:
                listener = self._listeners.get(task_id)
                if listener is not None and listener.task is me:
                    del self._listeners[task_id]
                return
            try:
                stream = await self._ensure_consumer(task_id, row.subject)
                sub = await self.bus.js.pull_subscribe_bind(durable=consumer_name(task_id), stream=stream)
                try:
                    await self._pull(task_id, sub)
                finally:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # consumer deleted, NATS reconnecting, PostgreSQL away: look again
                log.info("trigger listener restarting", task_id=task_id, error=repr(e))
                await asyncio.sleep(self.config.retry_s)

    async def _pull(self, task_id: str, sub: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                msgs = await sub.fetch(batch=16, timeout=5.0)
            except (TimeoutError, NatsTimeoutError):
                continue
            for msg in msgs:
                await self._settle(task_id, msg)

    async def _settle(self, task_id: str, msg: Msg) -> None:
        """Handle one event and ack it; nak it on failure; dead-letter it after max_deliver tries."""
        meta = msg.metadata
        try:
            await self._on_event(task_id, msg)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception as e:
            if meta.num_delivered >= self.bus_config.max_deliver:
                delivery = Delivery(
                    subject=msg.subject,
                    stream_seq=meta.sequence.stream,
                    num_delivered=meta.num_delivered,
                    trace=Trace.from_headers(msg.headers),
                )
                reason = f"trigger {task_id}: failed {meta.num_delivered} times: {e!r}"
                await self._dead_letter(msg, None, delivery, reason)
            else:
                log.exception("trigger event failed", task_id=task_id, subject=msg.subject)
                await msg.nak(delay=BACKOFF_S[min(meta.num_delivered, len(BACKOFF_S)) - 1])
        else:
            await msg.ack()

    def _fires_on(self, row: TriggerRow | None, subject: str, event: dict[str, Any]) -> bool:
        return (
            row is not None
            and _listens(row)
            and row.subject is not None
            and subject_matches(row.subject, subject)
            and not own_event(subject, row.tenant, row.task_id)
            and matches(event, row.config.filter)
        )

    async def _on_event(self, task_id: str, msg: Msg) -> None:
        try:
            event = msgspec.json.decode(msg.data)
        except msgspec.DecodeError:
            return  # not JSON: nothing a filter or a prompt could use
        if not isinstance(event, dict):
            return
        meta = msg.metadata
        headers = msg.headers or {}
        outcome: Outcome | None = None
        async with self.pool.acquire() as conn:
            row = await store.get(conn, task_id)  # the table, not this replica's memory, decides
            if not self._fires_on(row, msg.subject, event):
                return
            async with conn.transaction():
                row = await store.get(conn, task_id, lock=True)
                if row is None or not self._fires_on(row, msg.subject, event):
                    return
                firing_id = event_firing_id(
                    task_id, meta.stream, headers.get(Header.MSG_ID.value), meta.sequence.stream,
                    meta.timestamp.isoformat(),
                )  # fmt: skip
                trace = Trace.from_headers(headers, tenant=row.tenant).child(tenant=row.tenant)
                outcome = await self._admit(
                    conn, row, firing_id=firing_id, fired_by=FiredBy.EVENT, event=event, trace=trace,
                    ordinal=meta.sequence.stream,
                )  # fmt: skip
                if outcome is Outcome.LIMITED:
                    await self._dropped(conn, row)
        if outcome is Outcome.DEFERRED:
            self._wake.set()

    # --- upkeep ----------------------------------------------------------------------------------

    async def _maintain(self) -> None:
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(self.config.reconcile_s)
            try:
                await self._reconcile()
                if time.monotonic() - last_sweep >= self.config.sweep_s:
                    last_sweep = time.monotonic()
                    async with self.pool.acquire() as conn:
                        await store.prune(conn, self.config.receipts_keep)
                    await self._sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("trigger upkeep failed")

    async def _sweep(self) -> None:
        """Delete trigger consumers no enabled trigger owns (left by a crash between the table and
        JetStream, or by a listener that raced a delete). Consumers are listed before the table is
        read: a consumer is only ever created after its trigger's row was committed."""
        found: list[tuple[str, str]] = []
        for info in await self.bus.js.streams_info():
            stream = info.config.name
            if stream is None:
                continue
            offset = 0
            while True:
                page = await self.bus.js.consumers_info(stream, offset=offset)
                found += [(stream, c.name) for c in page if c.name.startswith(CONSUMER_PREFIX)]
                if len(page) < 256:
                    break
                offset += len(page)
        if not found:
            return
        async with self.pool.acquire() as conn:
            rows = {r.task_id: r for r in await store.listening(conn) if _listens(r)}
        for stream, name in found:
            row = rows.get(name.removeprefix(CONSUMER_PREFIX))
            if row is not None and row.subject is not None:
                with contextlib.suppress(BusError):
                    if await self._stream_of(row.subject) == stream:
                        continue
            log.info("removing an orphaned trigger consumer", stream=stream, consumer=name)
            with contextlib.suppress(NotFoundError):
                await self.bus.js.delete_consumer(stream, name)
