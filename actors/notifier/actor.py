"""The notifier: one delivery per (task run, channel), retried on a schedule that survives restarts.

A Deliver command stays unacked in the work-queue stream until the delivery is done: a failed
attempt is recorded, then the handler raises `Retry(delay)` and JetStream redelivers the command
after the delay, to whichever replica is alive, also after a `kill -9`. The `deliveries` row says
what happened: a redelivered command for a delivered (or given-up) delivery is only acked, so
nothing is sent twice from here. The remaining window: a crash after the receiver accepted but
before the row says so sends once more, with the same idempotency id.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, assert_never

import asyncpg
import httpx
import structlog

from actors._outbound_http import http_client
from actors._postgres import health as postgres_health
from actors._postgres import open_pool
from actors.notifier.channels import SendAttempt, one_recipient, send_email, send_http
from actors.notifier.config import NotifierConfig
from actors.notifier.store import DeliveryStore
from bus import metrics, subjects
from bus.actor import Actor, Consumer, Delivery, Endpoint
from bus.config import BusConfig
from bus.errors import BusError, Reject, Retry
from bus.headers import Trace
from bus.streams import NOTIFIER_CMD, ConsumerSpec
from schemas._base import Message
from schemas.errors import ErrorCode
from schemas.notifier import (
    Channel,
    Deliver,
    DeliveryAttempt,
    DeliveryFinished,
    DeliveryList,
    DeliveryRecord,
    DeliveryStatus,
    DeliveryView,
    InAppNotification,
    ListDeliveries,
    NotifierCommand,
    RetryDelivery,
)

__all__ = ["NotifierActor"]

MIGRATIONS = Path(__file__).parent / "migrations"
log = structlog.get_logger("notifier")
LEASE_MARGIN_S = 30.0  # beyond the send timeout, before another replica may take over an attempt


class NotifierActor(Actor):
    name = subjects.ActorName.NOTIFIER
    description = "email, Slack, signed webhooks and in-app events, with retries and a delivery log"

    def __init__(self, bus_config: BusConfig, config: NotifierConfig) -> None:
        super().__init__(bus_config)
        self.config = config
        self._pool: asyncpg.Pool | None = None
        self._store: DeliveryStore | None = None
        self._http: httpx.AsyncClient | None = None

    @property
    def store(self) -> DeliveryStore:
        if self._store is None:
            raise RuntimeError("notifier actor is not started")
        return self._store

    def routes(self) -> Sequence[Consumer[Any] | Endpoint[Any]]:
        return (
            Consumer(
                ConsumerSpec(NOTIFIER_CMD, "notifier-cmd", subjects.notifier_commands()),
                NotifierCommand,
                self._on_command,
            ),
            Endpoint("list_deliveries", ListDeliveries, self._list),
            Endpoint("retry", RetryDelivery, self._retry_endpoint),
        )

    async def on_start(self) -> None:
        self._pool = await open_pool(self.config.database_url, schema="notifier", migrations=MIGRATIONS)
        self._store = DeliveryStore(self._pool)
        if resealed := await self._store.reseal(self.config.secrets):
            log.info("delivery commands' signing secrets sealed", count=resealed)
        self._http = http_client(self.config.allow, timeout=self.config.http_timeout_s)

    async def on_stop(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._pool is not None:
            await self._pool.close()

    async def health_checks(self) -> dict[str, str]:
        return await postgres_health(self._pool)

    # --- delivering --------------------------------------------------------------------------

    async def _on_command(self, command: Deliver | RetryDelivery, delivery: Delivery) -> None:
        match command:
            case Deliver():
                await self._handle_deliver(command, delivery)
            case RetryDelivery():
                await self._retry(command.delivery_id, delivery.trace)
            case _:
                assert_never(command)

    async def on_dead_letter(self, body: object | None, delivery: Delivery, reason: str) -> None:
        """A delivery given up on (its handler kept failing) is recorded `failed` with the reason and
        announced, so its log says so and a manual retry can send it again."""
        if not isinstance(body, Deliver):
            return
        record = await self.store.accept(body, delivery.tenant)
        if record.tenant != delivery.tenant or record.status is not DeliveryStatus.PENDING:
            return
        number = len(record.attempts) + 1
        attempt = DeliveryAttempt(number=number, at=datetime.now(UTC), ok=False, error=f"gave up: {reason}")
        finished = await self.store.record_attempt(body.delivery_id, attempt, DeliveryStatus.FAILED, None)
        subject = subjects.notifier_event(delivery.tenant, body.delivery_id, DeliveryStatus.FAILED.value)
        await self.bus.publish(
            subject, DeliveryFinished(delivery=finished), trace=delivery.trace, msg_id=f"{body.delivery_id}:{number}"
        )

    async def _handle_deliver(self, deliver: Deliver, delivery: Delivery) -> None:
        if deliver.channel is Channel.EMAIL and not one_recipient(deliver.target):
            raise Reject("an email delivery's target must be one address (no list, name or line break)")
        tenant = delivery.tenant
        record = await self.store.accept(deliver, tenant)
        if record.tenant != tenant or record.status is not DeliveryStatus.PENDING:
            return  # done already (or given up): nothing is sent twice
        leased = await self.store.lease(deliver.delivery_id, self.config.http_timeout_s + LEASE_MARGIN_S)
        if leased is None:  # another delivery of the same command is attempting it right now
            raise Retry("being attempted elsewhere", delay=1.0)
        number = len(leased.attempts) + 1
        sent = await self._attempt(deliver, tenant, delivery.trace, number)
        now = datetime.now(UTC)
        attempt = DeliveryAttempt(
            number=number,
            at=now,
            ok=sent.ok,
            status_code=sent.status_code,
            smtp_reply=sent.smtp_reply,
            error=sent.error,
            retry_after_s=sent.retry_after_s,
        )
        schedule = self.config.retry_schedule_s
        if sent.ok:
            status, delay = DeliveryStatus.DELIVERED, None
        elif sent.permanent or number > len(schedule):
            status, delay = DeliveryStatus.FAILED, None
        else:
            status, delay = DeliveryStatus.PENDING, max(schedule[number - 1], sent.retry_after_s or 0.0)
        next_at = datetime.fromtimestamp(now.timestamp() + delay, UTC) if delay is not None else None
        finished = await self.store.record_attempt(deliver.delivery_id, attempt, status, next_at)
        result = "retrying" if status is DeliveryStatus.PENDING else status.value  # delivered, failed
        metrics.DELIVERIES.labels(deliver.channel.value, result).inc()
        if delay is not None:
            raise Retry(f"attempt {number} failed: {sent.error}", delay=delay)
        subject = subjects.notifier_event(tenant, deliver.delivery_id, str(status.value))
        await self.bus.publish(
            subject, DeliveryFinished(delivery=finished), trace=delivery.trace, msg_id=f"{deliver.delivery_id}:{number}"
        )

    async def _attempt(self, deliver: Deliver, tenant: str, trace: Trace, number: int) -> SendAttempt:
        match deliver.channel:
            case Channel.EMAIL:
                return await send_email(self.config, deliver)
            case Channel.SLACK | Channel.WEBHOOK:
                assert self._http is not None
                return await send_http(self.config, deliver, self._http)
            case Channel.IN_APP:
                event = InAppNotification(
                    delivery_id=deliver.delivery_id,
                    task_run_id=deliver.task_run_id,
                    task_id=deliver.task_id,
                    title=deliver.title,
                    body=deliver.body,
                    payload=deliver.payload,
                )
                subject = subjects.notifier_event(tenant, deliver.delivery_id, "in_app")
                # one per attempt: a manual retry publishes it again, a redelivered attempt does not
                await self.bus.publish(subject, event, trace=trace, msg_id=f"{deliver.delivery_id}:in_app:{number}")
                return SendAttempt(ok=True)

    # --- the log and manual retries ----------------------------------------------------------

    async def _retry(self, delivery_id: str, trace: Trace) -> DeliveryRecord:
        """Send a failed delivery again: back to pending, its Deliver command enqueued anew."""
        found = await self.store.reopen(delivery_id, trace.tenant)
        if found is None:
            raise BusError(ErrorCode.NOT_FOUND, f"no delivery {delivery_id}")
        record, command, reopened = found
        if not reopened and record.status is not DeliveryStatus.FAILED:
            raise BusError(ErrorCode.CONFLICT, f"delivery {delivery_id} is {record.status}, not failed")
        subject = subjects.notifier_command(trace.tenant, delivery_id)
        await self.bus.publish(subject, command, trace=trace, msg_id=f"{delivery_id}:retry:{len(record.attempts)}")
        return record

    async def _retry_endpoint(self, request: RetryDelivery, trace: Trace) -> Message:
        return DeliveryView(delivery=await self._retry(request.delivery_id, trace))

    async def _list(self, query: ListDeliveries, trace: Trace) -> Message:
        return DeliveryList(deliveries=await self.store.of_run(trace.tenant, query.task_run_id))
