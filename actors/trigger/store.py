"""The trigger actor's tables (schema `trigger`). Functions take a connection the caller holds.

`triggers.secret` is the webhook's `whsec_` secret, sealed with the secret key (bus/secrets.py):
it is stored because verifying a signature needs it, and only a process holding the key can open
it. A row from before sealing holds it in plaintext until `reseal` runs at the actor's start.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from actors._postgres import Conn, as_struct, as_structs
from bus.secrets import SecretBox, SecretError
from schemas.tasks import FiredBy, TriggerConfig

__all__ = ["Pending", "TriggerRow", "reseal"]

_COLUMNS = "task_id, tenant, secret, config, enabled, dropped, task_updated_at"


@dataclass(frozen=True, slots=True)
class TriggerRow:
    task_id: str
    tenant: str
    secret: str | None  # sealed (SecretBox.open reads it)
    config: TriggerConfig
    enabled: bool
    dropped: int
    task_updated_at: datetime | None

    @property
    def subject(self) -> str | None:
        return self.config.subject

    @property
    def is_webhook(self) -> bool:
        return self.config.subject is None and self.secret is not None


@dataclass(frozen=True, slots=True)
class Pending:
    task_id: str
    firing_id: str
    fired_by: FiredBy
    event: dict[str, Any]
    trace: dict[str, str]


def _row(record: asyncpg.Record | None) -> TriggerRow | None:
    return as_struct(record, TriggerRow) if record is not None else None


async def get(conn: Conn, task_id: str, *, lock: bool = False, skip_locked: bool = False) -> TriggerRow | None:
    suffix = " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE" if lock else ""
    return _row(await conn.fetchrow(f"SELECT {_COLUMNS} FROM triggers WHERE task_id = $1{suffix}", task_id))


async def listening(conn: Conn) -> list[TriggerRow]:
    """Every enabled subject trigger."""
    records = await conn.fetch(
        f"SELECT {_COLUMNS} FROM triggers WHERE enabled AND config->>'subject' IS NOT NULL ORDER BY task_id"
    )
    return as_structs(records, TriggerRow)


async def register(
    conn: Conn, task_id: str, tenant: str, secret: str | None, config: TriggerConfig
) -> TriggerRow | None:
    """Insert or replace a trigger (enabled); a new secret replaces the old one, None keeps it.
    None if the task id is another tenant's."""
    record = await conn.fetchrow(
        f"""
        INSERT INTO triggers (task_id, tenant, secret, config, enabled) VALUES ($1, $2, $3, $4, true)
        ON CONFLICT (task_id) DO UPDATE
            SET config = EXCLUDED.config, secret = COALESCE(EXCLUDED.secret, triggers.secret), enabled = true
            WHERE triggers.tenant = EXCLUDED.tenant
        RETURNING {_COLUMNS}
        """,
        task_id, tenant, secret, msgspec.to_builtins(config),
    )  # fmt: skip
    return _row(record)


async def follow(
    conn: Conn, task_id: str, *, enabled: bool, config: TriggerConfig, task_updated_at: datetime
) -> TriggerRow | None:
    """Apply a task change; a disabled trigger forgets its debounced firing."""
    record = await conn.fetchrow(
        f"""
        UPDATE triggers SET enabled = $2, config = $3, task_updated_at = $4 WHERE task_id = $1
        RETURNING {_COLUMNS}
        """,
        task_id, enabled, msgspec.to_builtins(config), task_updated_at,
    )  # fmt: skip
    if not enabled:
        await conn.execute("DELETE FROM pending WHERE task_id = $1", task_id)
    return _row(record)


async def delete(conn: Conn, task_id: str, tenant: str) -> TriggerRow | None:
    """Remove a trigger (its debounced firing goes with it); receipts and firings age out."""
    record = await conn.fetchrow(
        f"DELETE FROM triggers WHERE task_id = $1 AND tenant = $2 RETURNING {_COLUMNS}", task_id, tenant
    )
    return _row(record)


async def reseal(conn: Conn, box: SecretBox) -> int:
    """Seal every secret not sealed under the current key yet (plaintext from before, or an older
    key); how many were. A row changed meanwhile (a new secret) is left as it is now."""
    count = 0
    for record in await conn.fetch("SELECT task_id, secret FROM triggers WHERE secret IS NOT NULL"):
        try:
            sealed = box.reseal(record["secret"])
        except SecretError:  # under a key no longer configured: verifying its webhooks fails, loudly
            continue
        if sealed is not None:
            status = await conn.execute(
                "UPDATE triggers SET secret = $2 WHERE task_id = $1 AND secret = $3",
                record["task_id"], sealed, record["secret"],
            )  # fmt: skip
            count += status == "UPDATE 1"
    return count


# --- webhooks ------------------------------------------------------------------------------------


async def record_receipt(conn: Conn, task_id: str, webhook_id: str) -> bool:
    """False if this webhook id was already accepted for this task."""
    inserted = await conn.fetchval(
        "INSERT INTO receipts (task_id, webhook_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
        task_id, webhook_id,
    )  # fmt: skip
    return inserted is not None


# --- firings, the per-minute limit and debounce --------------------------------------------------


async def was_fired(conn: Conn, task_id: str, firing_id: str) -> bool:
    found = await conn.fetchval("SELECT true FROM firings WHERE task_id = $1 AND firing_id = $2", task_id, firing_id)
    return found is not None


async def fired_last_minute(conn: Conn, task_id: str) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM firings WHERE task_id = $1 AND fired_at > now() - interval '60 seconds'", task_id
    )
    return count


async def record_firing(conn: Conn, task_id: str, firing_id: str) -> None:
    await conn.execute(
        "INSERT INTO firings (task_id, firing_id) VALUES ($1, $2) ON CONFLICT DO NOTHING", task_id, firing_id
    )


async def count_dropped(conn: Conn, task_id: str) -> int:
    dropped: int = await conn.fetchval(
        "UPDATE triggers SET dropped = dropped + 1 WHERE task_id = $1 RETURNING dropped", task_id
    )
    return dropped


async def defer(
    conn: Conn,
    *,
    task_id: str,
    firing_id: str,
    fired_by: FiredBy,
    ordinal: int,
    event: dict[str, Any],
    trace: dict[str, str],
    delay_s: float,
) -> None:
    """Hold the trigger's firing until `delay_s` after this event; a later event replaces it."""
    await conn.execute(
        """
        INSERT INTO pending AS p (task_id, firing_id, fired_by, ordinal, event, trace, due_at)
        VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp() + make_interval(secs => $7))
        ON CONFLICT (task_id) DO UPDATE SET
            firing_id = CASE WHEN EXCLUDED.ordinal >= p.ordinal THEN EXCLUDED.firing_id ELSE p.firing_id END,
            fired_by = CASE WHEN EXCLUDED.ordinal >= p.ordinal THEN EXCLUDED.fired_by ELSE p.fired_by END,
            event = CASE WHEN EXCLUDED.ordinal >= p.ordinal THEN EXCLUDED.event ELSE p.event END,
            trace = CASE WHEN EXCLUDED.ordinal >= p.ordinal THEN EXCLUDED.trace ELSE p.trace END,
            ordinal = greatest(EXCLUDED.ordinal, p.ordinal),
            due_at = greatest(EXCLUDED.due_at, p.due_at)
        """,
        task_id, firing_id, fired_by.value, ordinal, event, trace, delay_s,
    )  # fmt: skip


async def due(conn: Conn, limit: int) -> list[str]:
    """Triggers whose debounced firing is due (no lock: the caller locks each in turn)."""
    rows = await conn.fetch(
        "SELECT task_id FROM pending WHERE due_at <= clock_timestamp() ORDER BY due_at LIMIT $1", limit
    )
    return [r["task_id"] for r in rows]


async def take_due(conn: Conn, task_id: str) -> Pending | None:
    record = await conn.fetchrow(
        """
        DELETE FROM pending WHERE task_id = $1 AND due_at <= clock_timestamp()
        RETURNING task_id, firing_id, fired_by, event, trace
        """,
        task_id,
    )
    return as_struct(record, Pending) if record is not None else None


async def next_due_in(conn: Conn) -> float | None:
    """Seconds until the earliest debounced firing is due (negative: overdue); None if there is none."""
    value = await conn.fetchval("SELECT EXTRACT(EPOCH FROM (min(due_at) - clock_timestamp())) FROM pending")
    return float(value) if value is not None else None


async def prune(conn: Conn, keep_s: float) -> None:
    """Forget receipts and firings older than `keep_s` (always longer than a minute and the replay window)."""
    await conn.execute("DELETE FROM receipts WHERE received_at < now() - make_interval(secs => $1)", keep_s)
    await conn.execute("DELETE FROM firings WHERE fired_at < now() - make_interval(secs => $1)", keep_s)
