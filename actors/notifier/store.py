"""The notifier's table (schema `notifier`): one row per delivery, with every attempt and its Deliver command.

A stored command holds a webhook's signing secret only sealed (`sealed_signing_secret`); `reseal`
seals the plaintext `signing_secret` of commands from before, and moves the ones that may still be
sent (not delivered) to the current key.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec

from actors._postgres import as_struct, as_structs
from bus.codec import decode, encode
from bus.secrets import SecretBox, SecretError
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

    async def reseal(self, box: SecretBox) -> int:
        """Seal the signing secrets of stored commands not sealed under the current key; how many were."""
        rows = await self.pool.fetch(
            """
            SELECT id, command FROM deliveries WHERE channel = 'webhook'
                AND (position('"signing_secret":"'::bytea IN command) > 0 OR status <> 'delivered')
            """
        )
        count = 0
        for row in rows:
            command = decode(bytes(row["command"]), Deliver)
            try:
                if command.signing_secret is not None:
                    sealed: str | None = box.seal(command.signing_secret)
                elif command.sealed_signing_secret is not None:
                    sealed = box.reseal(command.sealed_signing_secret)
                else:
                    sealed = None
            except SecretError:  # under a key no longer configured: its next attempt says so
                continue
            if sealed is None:
                continue
            resealed = msgspec.structs.replace(command, signing_secret=None, sealed_signing_secret=sealed)
            status = await self.pool.execute(
                "UPDATE deliveries SET command = $2 WHERE id = $1 AND command = $3",
                row["id"], encode(resealed), row["command"],
            )  # fmt: skip
            count += status == "UPDATE 1"
        return count

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
