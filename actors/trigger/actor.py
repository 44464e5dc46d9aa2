"""The trigger actor: turns signed webhooks and bus events into FireTask commands for the scheduler.

Webhooks (Standard Webhooks): the secret is made on `register` and returned once; `ingest`
verifies the signature (any of several, for key rotation), the timestamp (± tolerance) and that the
`webhook-id` was not seen before for the task, records it, then fires. Bus subjects: each subject
trigger has its own durable consumer (`trigger-<task id>`, new messages only) on the events stream
of its subject, shared by the replicas; a matching event fires the task with a firing id made from
the task and the event's stream sequence, so a redelivered event fires once. A trigger listens
only to its own tenant's events (`ab.<area>.evt.<tenant>.…`). Debounce and per-minute limits are
kept per replica, in memory: a debounced event not yet fired is lost if the replica dies.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import structlog
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from actors._postgres import health as postgres_health
from actors._postgres import open_pool
from actors.trigger.config import TriggerActorConfig
from actors.trigger.signatures import new_secret, verify
from bus import subjects
from bus.actor import Actor, Consumer, Delivery, Endpoint
from bus.config import BusConfig
from bus.errors import BusError
from bus.headers import Trace
from bus.streams import ALL_STREAMS, SCHEDULER_EVT, ConsumerSpec
from schemas._base import Message
from schemas.errors import ErrorCode
from schemas.tasks import (
    FiredBy,
    FireTask,
    IngestWebhook,
    RegisterTrigger,
    TaskChanged,
    TriggerConfig,
    TriggerRegistered,
    UnregisterTrigger,
    WebhookAccepted,
)

__all__ = ["TriggerActor", "event_stream", "matches"]

MIGRATIONS = Path(__file__).parent / "migrations"
STREAM_NAMES = {spec.name for spec in ALL_STREAMS}
log = structlog.get_logger("trigger")


def event_stream(subject: str, tenant: str) -> str:
    """The events stream a trigger subject lives in; BusError(invalid) if it is not the tenant's events."""
    parts = subject.split(".")
    if len(parts) < 5 or parts[0] != "ab" or parts[2] != "evt" or parts[3] != tenant:
        raise BusError(ErrorCode.INVALID, f"a trigger subject must start with ab.<area>.evt.{tenant}.")
    stream = f"AB_{parts[1].upper()}_EVT"
    if stream not in STREAM_NAMES:
        raise BusError(ErrorCode.INVALID, f"no event stream for {subject}")
    return stream


def matches(event: Any, expected: dict[str, str]) -> bool:
    """Every dotted path in `expected` leads to a value whose text equals the expected text."""
    for path, want in expected.items():
        value = event
        for key in path.split("."):
            if isinstance(value, dict) and key in value:
                value = value[key]
            elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
                value = value[int(key)]
            else:
                return False
        text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
        if text != want:
            return False
    return True


class SubjectTrigger:
    """One task's subject trigger on this replica: its consumer loop, debounce and rate limit."""

    def __init__(self, task_id: str, tenant: str, config: TriggerConfig) -> None:
        self.task_id = task_id
        self.tenant = tenant
        self.config = config
        self.loop: asyncio.Task[None] | None = None
        self.recent: collections.deque[float] = collections.deque()
        self.pending: asyncio.TimerHandle | None = None
        self.dropped = 0

    def allow(self) -> bool:
        limit = self.config.max_runs_per_minute
        if limit is None:
            return True
        now = time.monotonic()
        while self.recent and self.recent[0] < now - 60:
            self.recent.popleft()
        if len(self.recent) >= limit:
            self.dropped += 1
            return False
        self.recent.append(now)
        return True


class TriggerActor(Actor):
    name = subjects.ActorName.TRIGGER
    description = "signed webhooks and bus events that fire triggered tasks"

    def __init__(self, bus_config: BusConfig, config: TriggerActorConfig) -> None:
        super().__init__(bus_config)
        self.config = config
        self._pool: Any = None
        self._subject_triggers: dict[str, SubjectTrigger] = {}

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
        for row in await self._pool.fetch("SELECT * FROM triggers WHERE secret IS NULL"):
            self._listen(row["task_id"], row["tenant"], msgspec.convert(row["config"], TriggerConfig))

    async def on_stop(self) -> None:
        for trigger in list(self._subject_triggers.values()):
            self._stop_listening(trigger.task_id)
        if self._pool is not None:
            await self._pool.close()

    async def health_checks(self) -> dict[str, str]:
        return await postgres_health(self._pool)

    # --- registration ------------------------------------------------------------------------

    async def _register(self, cmd: RegisterTrigger, trace: Trace) -> Message:
        config = cmd.config
        if config.subject is not None:
            event_stream(config.subject, trace.tenant)
        secret = None if config.subject is not None else new_secret()
        row = await self._pool.fetchrow(
            """
            INSERT INTO triggers (task_id, tenant, secret, config) VALUES ($1, $2, $3, $4)
            ON CONFLICT (task_id) DO UPDATE SET config = EXCLUDED.config WHERE triggers.tenant = EXCLUDED.tenant
            RETURNING (xmax = 0) AS created
            """,
            cmd.task_id, trace.tenant, secret, msgspec.to_builtins(config),
        )  # fmt: skip
        if row is None:
            raise BusError(ErrorCode.CONFLICT, f"task id {cmd.task_id} is taken")
        if config.subject is not None:
            self._listen(cmd.task_id, trace.tenant, config)
        return TriggerRegistered(task_id=cmd.task_id, webhook_secret=secret if row["created"] else None)

    async def _unregister(self, cmd: UnregisterTrigger, trace: Trace) -> Message:
        await self._drop(cmd.task_id, trace.tenant)
        return TriggerRegistered(task_id=cmd.task_id)

    async def _drop(self, task_id: str, tenant: str) -> None:
        await self._pool.execute("DELETE FROM triggers WHERE task_id = $1 AND tenant = $2", task_id, tenant)
        trigger = self._stop_listening(task_id)
        if trigger is not None and trigger.config.subject is not None:
            with contextlib.suppress(Exception):
                await self.bus.js.delete_consumer(event_stream(trigger.config.subject, tenant), f"trigger-{task_id}")

    async def _on_task_changed(self, changed: TaskChanged, delivery: Delivery) -> None:
        task = changed.task
        if changed.deleted:
            await self._drop(task.id, task.tenant)
        elif not task.enabled:
            self._stop_listening(task.id)
        elif task.trigger_config is not None and task.trigger_config.subject is not None:
            known = await self._pool.fetchval("SELECT 1 FROM triggers WHERE task_id = $1", task.id)
            if known:
                self._listen(task.id, task.tenant, task.trigger_config)

    # --- webhooks ----------------------------------------------------------------------------

    async def _ingest(self, hook: IngestWebhook, trace: Trace) -> Message:
        # the webhook URL names only the task (ids are unique): the trigger's row says whose it is
        row = await self._pool.fetchrow(
            "SELECT secret, tenant FROM triggers WHERE task_id = $1 AND secret IS NOT NULL", hook.task_id
        )
        secret = row["secret"] if row is not None else None
        tenant: str = row["tenant"] if row is not None else ""
        if secret is None:
            raise BusError(ErrorCode.NOT_FOUND, f"no webhook for task {hook.task_id}")
        try:
            sent = int(hook.webhook_timestamp)
        except ValueError:
            raise BusError(ErrorCode.UNAUTHORIZED, "webhook-timestamp is not a Unix time") from None
        if abs(time.time() - sent) > self.config.tolerance_s:
            raise BusError(ErrorCode.UNAUTHORIZED, "webhook-timestamp is outside the allowed window (5 minutes)")
        body = hook.body.encode()
        if not verify(secret, hook.webhook_id, hook.webhook_timestamp, body, hook.webhook_signature):
            raise BusError(ErrorCode.UNAUTHORIZED, "no valid webhook-signature")
        try:
            event = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise BusError(ErrorCode.INVALID, "the webhook body must be a JSON object") from None
        if not isinstance(event, dict):
            raise BusError(ErrorCode.INVALID, "the webhook body must be a JSON object")
        recorded = await self._pool.fetchval(
            "INSERT INTO receipts (task_id, webhook_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1",
            hook.task_id, hook.webhook_id,
        )  # fmt: skip
        if recorded is None:
            raise BusError(ErrorCode.CONFLICT, f"webhook-id {hook.webhook_id} was already received")
        firing_id = "wh-" + hashlib.sha256(f"{hook.task_id}\n{hook.webhook_id}".encode()).hexdigest()[:40]
        fire = FireTask(task_id=hook.task_id, firing_id=firing_id, fired_by=FiredBy.WEBHOOK, event=event)
        try:
            subject = subjects.scheduler_command(tenant, hook.task_id)
            await self.bus.publish(subject, fire, trace=trace.child(tenant=tenant), msg_id=firing_id)
        except Exception:  # not accepted: let the sender's retry through
            await self._pool.execute(
                "DELETE FROM receipts WHERE task_id = $1 AND webhook_id = $2", hook.task_id, hook.webhook_id
            )
            raise
        await self._pool.execute(
            "DELETE FROM receipts WHERE received_at < $1",
            datetime.fromtimestamp(time.time() - self.config.receipts_keep_s, UTC),
        )
        return WebhookAccepted(task_id=hook.task_id, firing_id=firing_id)

    # --- bus subjects ------------------------------------------------------------------------

    def _listen(self, task_id: str, tenant: str, config: TriggerConfig) -> None:
        self._stop_listening(task_id)
        trigger = SubjectTrigger(task_id, tenant, config)
        trigger.loop = self.spawn(self._consume(trigger), name=f"trigger-{task_id}")
        self._subject_triggers[task_id] = trigger

    def _stop_listening(self, task_id: str) -> SubjectTrigger | None:
        trigger = self._subject_triggers.pop(task_id, None)
        if trigger is not None:
            if trigger.loop is not None:
                trigger.loop.cancel()
            if trigger.pending is not None:
                trigger.pending.cancel()
        return trigger

    async def _consume(self, trigger: SubjectTrigger) -> None:
        subject = trigger.config.subject
        assert subject is not None
        stream = event_stream(subject, trigger.tenant)
        durable = f"trigger-{trigger.task_id}"
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=subject,
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.bus_config.ack_wait_s,
        )
        sub = await self.bus.js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
        try:
            while True:
                try:
                    msgs = await sub.fetch(batch=16, timeout=5.0)
                except (TimeoutError, NatsTimeoutError):
                    continue
                for msg in msgs:
                    await self._on_event(trigger, msg.data, msg.metadata.sequence.stream)
                    await msg.ack()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_event(self, trigger: SubjectTrigger, data: bytes, seq: int) -> None:
        try:
            event = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return
        if not isinstance(event, dict) or not matches(event, trigger.config.filter):
            return
        firing_id = f"ev-{trigger.task_id}-{seq}"
        if trigger.config.debounce_seconds > 0:
            if trigger.pending is not None:
                trigger.pending.cancel()
            trigger.pending = asyncio.get_running_loop().call_later(
                trigger.config.debounce_seconds, lambda: self.spawn(self._fire(trigger, event, firing_id))
            )
            return
        await self._fire(trigger, event, firing_id)

    async def _fire(self, trigger: SubjectTrigger, event: dict[str, Any], firing_id: str) -> None:
        trigger.pending = None
        if not trigger.allow():
            log.info("trigger over its limit: event dropped", task_id=trigger.task_id, dropped=trigger.dropped)
            return
        fire = FireTask(task_id=trigger.task_id, firing_id=firing_id, fired_by=FiredBy.EVENT, event=event)
        subject = subjects.scheduler_command(trigger.tenant, trigger.task_id)
        await self.bus.publish(subject, fire, trace=Trace(tenant=trigger.tenant), msg_id=firing_id)
