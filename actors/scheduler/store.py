"""The scheduler's tables: tasks and task runs. Functions take a connection the caller holds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg
import msgspec

from actors._postgres import Conn, as_struct, as_structs
from bus.secrets import SecretBox, SecretError
from schemas.runs import Usage
from schemas.tasks import (
    FiredBy,
    Task,
    TaskRun,
    TaskRunStatus,
)

__all__ = ["TaskRow", "reseal", "task_of", "task_row_of"]

OPEN = ("queued", "running")


@dataclass(frozen=True, slots=True)
class TaskRow:
    """A task as stored, with what only the scheduler sees (its notification secret)."""

    task: Task
    notification_secret: str  # sealed (bus/secrets.py)


def task_row_of(row: asyncpg.Record) -> TaskRow:
    return TaskRow(task=task_of(row), notification_secret=row["notification_secret"])


def task_of(row: asyncpg.Record) -> Task:
    return as_struct(row, Task, webhook_url=_webhook_path(row))


def _webhook_path(row: asyncpg.Record) -> str | None:
    """Where a webhook-triggered task takes its events (a task triggered by a bus subject has none)."""
    config = row["trigger_config"]
    if row["task_type"] != "triggered" or (isinstance(config, dict) and config.get("subject")):
        return None
    return f"/v1/tasks/webhooks/{row['id']}"


async def insert_task(conn: Conn, task: Task, secret: str) -> TaskRow | None:
    """Insert; None if the id exists (the caller decides whether that is a retry)."""
    row = await conn.fetchrow(
        """
        INSERT INTO tasks (id, tenant, task_type, prompt, agent, inputs, schedule_expression, interval_seconds,
            run_at, timezone, trigger_config, notification_config, thread, misfire_policy, overlap_policy,
            enabled, next_run_at, notification_secret, created_at, updated_at, pipeline)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $19, $20)
        ON CONFLICT (id) DO NOTHING RETURNING *
        """,
        task.id, task.tenant, task.task_type.value, task.prompt, task.agent, task.inputs, task.schedule_expression,
        task.interval_seconds, task.run_at, task.timezone, msgspec.to_builtins(task.trigger_config),
        msgspec.to_builtins(task.notification_config), task.thread, task.misfire_policy.value,
        task.overlap_policy.value, task.enabled, task.next_run_at, secret, task.created_at, task.pipeline,
    )  # fmt: skip
    return task_row_of(row) if row is not None else None


async def get_task(conn: Conn, task_id: str, tenant: str, *, lock: bool = False) -> TaskRow | None:
    sql = "SELECT * FROM tasks WHERE id = $1 AND tenant = $2" + (" FOR UPDATE" if lock else "")
    row = await conn.fetchrow(sql, task_id, tenant)
    return task_row_of(row) if row is not None else None


async def save_task(conn: Conn, task: Task) -> TaskRow:
    row = await conn.fetchrow(
        """
        UPDATE tasks SET prompt = $2, agent = $3, inputs = $4, schedule_expression = $5, interval_seconds = $6,
            run_at = $7, timezone = $8, trigger_config = $9, notification_config = $10, thread = $11,
            misfire_policy = $12, overlap_policy = $13, enabled = $14, next_run_at = $15, updated_at = $16
        WHERE id = $1 RETURNING *
        """,
        task.id, task.prompt, task.agent, task.inputs, task.schedule_expression, task.interval_seconds, task.run_at,
        task.timezone, msgspec.to_builtins(task.trigger_config), msgspec.to_builtins(task.notification_config),
        task.thread, task.misfire_policy.value, task.overlap_policy.value, task.enabled, task.next_run_at,
        task.updated_at,
    )  # fmt: skip
    assert row is not None
    return task_row_of(row)


async def delete_task(conn: Conn, task_id: str, tenant: str) -> TaskRow | None:
    row = await conn.fetchrow("DELETE FROM tasks WHERE id = $1 AND tenant = $2 RETURNING *", task_id, tenant)
    return task_row_of(row) if row is not None else None


async def list_tasks(
    conn: Conn, tenant: str, *, task_type: str | None, enabled: bool | None, limit: int, after: str | None
) -> list[Task]:
    rows = await conn.fetch(
        """
        SELECT * FROM tasks WHERE tenant = $1 AND ($2::text IS NULL OR task_type = $2)
          AND ($3::boolean IS NULL OR enabled = $3) AND ($4::text IS NULL OR id > $4)
        ORDER BY id LIMIT $5
        """,
        tenant, task_type, enabled, after, limit,
    )  # fmt: skip
    return [task_of(r) for r in rows]


async def due_tasks(conn: Conn, now: datetime, limit: int) -> list[TaskRow]:
    """Due tasks, locked so no other replica takes them until this transaction ends."""
    rows = await conn.fetch(
        """
        SELECT * FROM tasks WHERE enabled AND next_run_at <= $1
        ORDER BY next_run_at LIMIT $2 FOR UPDATE SKIP LOCKED
        """,
        now, limit,
    )  # fmt: skip
    return [task_row_of(r) for r in rows]


async def set_next(conn: Conn, task_id: str, next_run_at: datetime | None) -> None:
    await conn.execute("UPDATE tasks SET next_run_at = $2 WHERE id = $1", task_id, next_run_at)


async def next_due(conn: Conn) -> datetime | None:
    value: datetime | None = await conn.fetchval("SELECT min(next_run_at) FROM tasks WHERE enabled")
    return value


async def has_open_run(conn: Conn, task_id: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM task_runs WHERE task_id = $1 AND status = ANY($2)", task_id, OPEN))


async def insert_run(
    conn: Conn,
    *,
    run_id: str,
    task: Task,
    fired_by: FiredBy,
    now: datetime,
    scheduled_for: datetime | None = None,
    firing_id: str | None = None,
    event: dict[str, object] | None = None,
    status: TaskRunStatus = TaskRunStatus.QUEUED,
) -> TaskRun | None:
    """A new task run; None when this firing already has one (same slot or firing id)."""
    row = await conn.fetchrow(
        """
        INSERT INTO task_runs (id, task_id, tenant, fired_by, scheduled_for, firing_id, status, event, created_at,
            finished_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7::text, $8, $9::timestamptz,
            CASE WHEN $7::text = 'skipped' THEN $9::timestamptz END)
        ON CONFLICT DO NOTHING RETURNING *
        """,
        run_id, task.id, task.tenant, fired_by.value, scheduled_for, firing_id, status.value, event, now,
    )  # fmt: skip
    return as_struct(row, TaskRun) if row is not None else None


async def mark_started(conn: Conn, run_id: str, conversation_id: str, now: datetime) -> None:
    await conn.execute(
        """
        UPDATE task_runs SET status = 'running', conversation_id = $2, started_at = coalesce(started_at, $3)
        WHERE id = $1 AND status = 'queued'
        """,
        run_id, conversation_id, now,
    )  # fmt: skip


async def unstarted_runs(conn: Conn, before: datetime, limit: int) -> list[TaskRun]:
    rows = await conn.fetch(
        "SELECT * FROM task_runs WHERE status = 'queued' AND created_at < $1 ORDER BY created_at LIMIT $2",
        before, limit,
    )  # fmt: skip
    return as_structs(rows, TaskRun)


async def finish_run(
    conn: Conn,
    run_id: str,
    status: TaskRunStatus,
    *,
    output: str | None,
    error: str | None,
    usage: Usage,
    now: datetime,
) -> tuple[TaskRun, bool] | None:
    """(the run, whether this call finished it); None for a run id that is not a task run."""
    row = await conn.fetchrow(
        """
        UPDATE task_runs SET status = $2, output = $3, error = $4, usage = $5, finished_at = $6
        WHERE id = $1 AND status = ANY($7) RETURNING *
        """,
        run_id, status.value, output, error, msgspec.to_builtins(usage), now, OPEN,
    )  # fmt: skip
    if row is not None:
        return as_struct(row, TaskRun), True
    row = await conn.fetchrow("SELECT * FROM task_runs WHERE id = $1", run_id)
    return (as_struct(row, TaskRun), False) if row is not None else None


async def get_run(conn: Conn, run_id: str, tenant: str) -> TaskRun | None:
    row = await conn.fetchrow("SELECT * FROM task_runs WHERE id = $1 AND tenant = $2", run_id, tenant)
    return as_struct(row, TaskRun) if row is not None else None


async def list_runs(conn: Conn, task_id: str, *, limit: int, after: str | None = None) -> list[TaskRun]:
    rows = await conn.fetch(
        """
        SELECT * FROM task_runs WHERE task_id = $1 AND ($2::text IS NULL OR id < $2)
        ORDER BY id DESC LIMIT $3
        """,
        task_id, after, limit,
    )  # fmt: skip
    return as_structs(rows, TaskRun)


async def task_row(conn: Conn, task_id: str) -> TaskRow | None:
    row = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
    return task_row_of(row) if row is not None else None


async def reseal(conn: Conn, box: SecretBox) -> int:
    """Seal every notification secret not sealed under the current key yet (plaintext from before
    sealing, or an older key); how many were. One no configured key opens is left alone."""
    count = 0
    for record in await conn.fetch("SELECT id, notification_secret FROM tasks"):
        try:
            sealed = box.reseal(record["notification_secret"])
        except SecretError:
            continue
        if sealed is not None:
            status = await conn.execute(
                "UPDATE tasks SET notification_secret = $2 WHERE id = $1 AND notification_secret = $3",
                record["id"], sealed, record["notification_secret"],
            )  # fmt: skip
            count += status == "UPDATE 1"
    return count


async def lock_tenant(conn: Conn, tenant: str) -> None:
    """Hold the tenant's quota lock until the transaction ends: replicas count and insert one at a time."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('scheduler.quota:' || $1, 0))", tenant)


async def count_tasks(conn: Conn, tenant: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM tasks WHERE tenant = $1", tenant))


async def count_active_schedules(conn: Conn, tenant: str) -> int:
    """Enabled scheduled tasks that will fire again (a one-shot that has fired holds no schedule)."""
    sql = """SELECT count(*) FROM tasks
             WHERE tenant = $1 AND task_type = 'scheduled' AND enabled AND next_run_at IS NOT NULL"""
    return int(await conn.fetchval(sql, tenant))


async def task_counts(conn: Conn, tenant: str) -> tuple[int, int]:
    """How many tasks the tenant has, and how many are enabled (GET /v1/stats)."""
    row = await conn.fetchrow(
        "SELECT count(*) AS total, count(*) FILTER (WHERE enabled) AS enabled FROM tasks WHERE tenant = $1", tenant
    )
    assert row is not None
    return int(row["total"]), int(row["enabled"])
