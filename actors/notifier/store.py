"""The notifier's table (schema `notifier`): one row per delivery, with every attempt and its Deliver command."""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec

from actors._postgres import as_struct, as_structs
from bus.codec import decode, encode
from schemas.notifier import Deliver, DeliveryAttempt, DeliveryRecord, DeliveryStatus

__all__ = ["DeliveryStore"]


class DeliveryStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def accept(self, deliver: Deliver, tenant: str) -> DeliveryRecord:
        """The delivery's row, inserted `pending` if it is new (a redelivered command finds the first)."""
        row = await self.pool.fetchrow(
            """
            INSERT INTO deliveries (id, tenant, task_run_id, task_id, channel, target, status, command)
            VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7)
            ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id RETURNING *
            """,
            deliver.delivery_id, tenant, deliver.task_run_id, deliver.task_id, deliver.channel.value,
            deliver.target, encode(deliver),
        )  # fmt: skip
        assert row is not None
        return as_struct(row, DeliveryRecord)

    async def lease(self, delivery_id: str, seconds: float) -> DeliveryRecord | None:
        """Take the pending delivery for one attempt of at most `seconds`; None while another holds it."""
        row = await self.pool.fetchrow(
            """
            UPDATE deliveries SET lease_until = now() + make_interval(secs => $2)
            WHERE id = $1 AND status = 'pending' AND (lease_until IS NULL OR lease_until < now()) RETURNING *
            """,
            delivery_id, seconds,
        )  # fmt: skip
        return as_struct(row, DeliveryRecord) if row is not None else None

    async def record_attempt(
        self, delivery_id: str, attempt: DeliveryAttempt, status: DeliveryStatus, next_attempt_at: datetime | None
    ) -> DeliveryRecord:
        """Append the attempt, set the status it led to and release the lease."""
        row = await self.pool.fetchrow(
            """
            UPDATE deliveries SET status = $2, attempts = attempts || $3::jsonb, next_attempt_at = $4,
                lease_until = NULL, delivered_at = CASE WHEN $2 = 'delivered' THEN $5::timestamptz END
            WHERE id = $1 RETURNING *
            """,
            delivery_id, status.value, [msgspec.to_builtins(attempt)], next_attempt_at, attempt.at,
        )  # fmt: skip
        assert row is not None
        return as_struct(row, DeliveryRecord)

    async def reopen(self, delivery_id: str, tenant: str) -> tuple[DeliveryRecord, Deliver, bool] | None:
        """Put a failed delivery back to pending: its row, its Deliver command and whether it was
        reopened (False: it was not failed). None if the tenant has no such delivery."""
        row = await self.pool.fetchrow(
            """
            UPDATE deliveries SET status = 'pending', next_attempt_at = now()
            WHERE id = $1 AND tenant = $2 AND status = 'failed' RETURNING *
            """,
            delivery_id, tenant,
        )  # fmt: skip
        reopened = row is not None
        if row is None:
            row = await self.pool.fetchrow(
                "SELECT * FROM deliveries WHERE id = $1 AND tenant = $2", delivery_id, tenant
            )
            if row is None:
                return None
        return as_struct(row, DeliveryRecord), decode(bytes(row["command"]), Deliver), reopened

    async def of_run(self, tenant: str, task_run_id: str) -> list[DeliveryRecord]:
        rows = await self.pool.fetch(
            "SELECT * FROM deliveries WHERE tenant = $1 AND task_run_id = $2 ORDER BY created_at, id",
            tenant, task_run_id,
        )  # fmt: skip
        return as_structs(rows, DeliveryRecord)
