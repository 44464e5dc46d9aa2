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
from typing import Any

import httpx
import msgspec

from actors._postgres import health as postgres_health
from actors._postgres import open_pool
from actors.notifier.channels import Outcome, send_email, send_http
from actors.notifier.config import NotifierConfig
from bus import subjects
from bus.actor import Actor, Consumer, Delivery, Endpoint
from bus.codec import decode, encode
from bus.config import BusConfig
from bus.errors import BusError, Retry
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
LEASE_MARGIN_S = 30.0  # beyond the send timeout, before another replica may take over an attempt


def _record(row: Any) -> DeliveryRecord:
    return DeliveryRecord(
        id=row["id"],
        tenant=row["tenant"],
        task_run_id=row["task_run_id"],
        task_id=row["task_id"],
        channel=Channel(row["channel"]),
        target=row["target"],
        status=DeliveryStatus(row["status"]),
        attempts=msgspec.convert(row["attempts"], list[DeliveryAttempt]),
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        delivered_at=row["delivered_at"],
    )


class NotifierActor(Actor):
    name = subjects.ActorName.NOTIFIER
    description = "email, Slack, signed webhooks and in-app events, with retries and a delivery log"

    def __init__(self, bus_config: BusConfig, config: NotifierConfig) -> None:
        super().__init__(bus_config)
        self.config = config
        self._pool: Any = None
        self._http: httpx.AsyncClient | None = None

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
        self._http = httpx.AsyncClient(timeout=self.config.http_timeout_s)

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

    async def _handle_deliver(self, deliver: Deliver, delivery: Delivery) -> None:
        tenant = delivery.tenant
        row = await self._pool.fetchrow(
            """
            INSERT INTO deliveries (id, tenant, task_run_id, task_id, channel, target, status, command)
            VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7)
            ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id RETURNING *
            """,
            deliver.delivery_id, tenant, deliver.task_run_id, deliver.task_id, deliver.channel.value,
            deliver.target, encode(deliver),
        )  # fmt: skip
        if row["tenant"] != tenant or row["status"] != DeliveryStatus.PENDING:
            return  # done already (or given up): nothing is sent twice
        row = await self._pool.fetchrow(
            """
            UPDATE deliveries SET lease_until = now() + make_interval(secs => $2)
            WHERE id = $1 AND status = 'pending' AND (lease_until IS NULL OR lease_until < now()) RETURNING *
            """,
            deliver.delivery_id, self.config.http_timeout_s + LEASE_MARGIN_S,
        )  # fmt: skip
        if row is None:  # another delivery of the same command is attempting it right now
            raise Retry("being attempted elsewhere", delay=1.0)
        number = len(row["attempts"]) + 1
        outcome = await self._attempt(deliver, tenant, delivery.trace)
        now = datetime.now(UTC)
        attempt = DeliveryAttempt(
            number=number,
            at=now,
            ok=outcome.ok,
            status_code=outcome.status_code,
            smtp_reply=outcome.smtp_reply,
            error=outcome.error,
            retry_after_s=outcome.retry_after_s,
        )
        schedule = self.config.retry_schedule_s
        if outcome.ok:
            status, delay = DeliveryStatus.DELIVERED, None
        elif outcome.permanent or number > len(schedule):
            status, delay = DeliveryStatus.FAILED, None
        else:
            status, delay = DeliveryStatus.PENDING, max(schedule[number - 1], outcome.retry_after_s or 0.0)
        next_at = datetime.fromtimestamp(now.timestamp() + delay, UTC) if delay is not None else None
        row = await self._pool.fetchrow(
            """
            UPDATE deliveries SET status = $2, attempts = attempts || $3::jsonb, next_attempt_at = $4,
                lease_until = NULL, delivered_at = CASE WHEN $2 = 'delivered' THEN $5::timestamptz END
            WHERE id = $1 RETURNING *
            """,
            deliver.delivery_id, status.value, [msgspec.to_builtins(attempt)], next_at, now,
        )  # fmt: skip
        if delay is not None:
            raise Retry(f"attempt {number} failed: {outcome.error}", delay=delay)
        finished = DeliveryFinished(delivery=_record(row))
        subject = subjects.notifier_event(tenant, deliver.delivery_id, str(status.value))
        await self.bus.publish(subject, finished, trace=delivery.trace, msg_id=f"{deliver.delivery_id}:{number}")

    async def _attempt(self, deliver: Deliver, tenant: str, trace: Trace) -> Outcome:
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
                await self.bus.publish(subject, event, trace=trace, msg_id=f"{deliver.delivery_id}:in_app")
                return Outcome(ok=True)

    # --- the log and manual retries ----------------------------------------------------------

    async def _retry(self, delivery_id: str, trace: Trace) -> DeliveryRecord:
        """Send a failed delivery again: back to pending, its Deliver command enqueued anew."""
        row = await self._pool.fetchrow(
            """
            UPDATE deliveries SET status = 'pending', next_attempt_at = now()
            WHERE id = $1 AND tenant = $2 AND status = 'failed' RETURNING *
            """,
            delivery_id, trace.tenant,
        )  # fmt: skip
        if row is None:
            row = await self._pool.fetchrow(
                "SELECT * FROM deliveries WHERE id = $1 AND tenant = $2", delivery_id, trace.tenant
            )
            if row is None:
                raise BusError(ErrorCode.NOT_FOUND, f"no delivery {delivery_id}")
            if row["status"] != "failed":
                raise BusError(ErrorCode.CONFLICT, f"delivery {delivery_id} is {row['status']}, not failed")
        command = decode(bytes(row["command"]), Deliver)
        subject = subjects.notifier_command(trace.tenant, delivery_id)
        await self.bus.publish(subject, command, trace=trace, msg_id=f"{delivery_id}:retry:{len(row['attempts'])}")
        return _record(row)

    async def _retry_endpoint(self, request: RetryDelivery, trace: Trace) -> Message:
        return DeliveryView(delivery=await self._retry(request.delivery_id, trace))

    async def _list(self, query: ListDeliveries, trace: Trace) -> Message:
        rows = await self._pool.fetch(
            "SELECT * FROM deliveries WHERE tenant = $1 AND task_run_id = $2 ORDER BY created_at, id",
            trace.tenant, query.task_run_id,
        )  # fmt: skip
        return DeliveryList(deliveries=[_record(r) for r in rows])
