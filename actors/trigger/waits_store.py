"""The trigger actor's table of event waits (trigger.waits): stored once, resolved once."""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec

from actors._postgres import Conn
from schemas.approvals import WatchEvent

__all__ = ["PendingWait", "expired", "pending", "resolve", "store", "webhook_waits"]


class PendingWait(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    watch: WatchEvent
    created_at: datetime


def _row(r: asyncpg.Record) -> PendingWait:
    watch = WatchEvent(
        run_id=r["run_id"],
        park=r["park"],
        tool_call_id=r["tool_call_id"],
        subject=r["subject"],
        webhook_task_id=r["webhook_task_id"],
        filter=r["filter"],
        expires_at=r["expires_at"],
    )
    return PendingWait(tenant=r["tenant"], watch=watch, created_at=r["created_at"])


async def store(conn: Conn, tenant: str, watch: WatchEvent) -> PendingWait:
    """Store the wait (again: unchanged); it as stored."""
    row = await conn.fetchrow(
        """
        INSERT INTO waits (run_id, park, tool_call_id, tenant, subject, webhook_task_id, filter, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (run_id, park, tool_call_id) DO UPDATE SET run_id = waits.run_id
        RETURNING *
        """,
        watch.run_id, watch.park, watch.tool_call_id, tenant, watch.subject, watch.webhook_task_id,
        watch.filter, watch.expires_at,
    )  # fmt: skip
    assert row is not None  # an insert or an update always returns the row
    return _row(row)


async def pending(conn: Conn) -> list[PendingWait]:
    """Every subject wait not resolved yet (what each replica follows)."""
    rows = await conn.fetch("SELECT * FROM waits WHERE resolved_at IS NULL AND subject IS NOT NULL")
    return [_row(r) for r in rows]


async def webhook_waits(conn: Conn, task_id: str, tenant: str) -> list[PendingWait]:
    rows = await conn.fetch(
        "SELECT * FROM waits WHERE resolved_at IS NULL AND webhook_task_id = $1 AND tenant = $2", task_id, tenant
    )
    return [_row(r) for r in rows]


async def resolve(conn: Conn, watch: WatchEvent) -> bool:
    """Mark the wait resolved; False if it was already (another replica, event or expiry came first)."""
    done = await conn.fetchval(
        """
        UPDATE waits SET resolved_at = now()
        WHERE run_id = $1 AND park = $2 AND tool_call_id = $3 AND resolved_at IS NULL
        RETURNING true
        """,
        watch.run_id,
        watch.park,
        watch.tool_call_id,
    )
    return bool(done)


async def expired(conn: Conn) -> list[PendingWait]:
    """Resolve every wait past its expiry: those (each is answered with a timeout)."""
    rows = await conn.fetch(
        """
        UPDATE waits SET resolved_at = now()
        WHERE (run_id, park, tool_call_id) IN (
            SELECT run_id, park, tool_call_id FROM waits WHERE resolved_at IS NULL AND expires_at <= now()
            ORDER BY expires_at LIMIT 500 FOR UPDATE SKIP LOCKED
        )
        RETURNING *
        """
    )
    return [_row(r) for r in rows]
