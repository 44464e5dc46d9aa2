"""The executor's table: one row per run (executor.runs)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import msgspec

from actors._postgres import as_struct, as_structs
from bus.codec import decode_union, encode
from schemas.runs import STATUS_OF_END, RunCancelled, RunCompleted, RunEnd, RunFailed, RunRecord, RunRequest, Usage

__all__ = ["Begun", "RunStore"]


@dataclass(frozen=True, slots=True)
class Begun:
    attempt: int
    cancel_requested: bool  # the run's own cancel, or its parent run's
    end: RunEnd | None  # set when the run already ended (a redelivery, or cancelled before it came)


class RunStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def begin(self, req: RunRequest, *, tenant: str, model: str, offline: bool) -> Begun | None:
        """Record the run as running (attempt + 1 if it was already); None if another tenant owns the id."""
        row = await self.pool.fetchrow(
            """
            INSERT INTO runs (id, tenant, agent, model, offline, status, conversation_id, parent_run_id, started_at)
            VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, now())
            ON CONFLICT (id) DO UPDATE SET
                attempt = CASE WHEN runs.status = 'running' THEN runs.attempt + 1 ELSE runs.attempt END,
                agent = EXCLUDED.agent, model = EXCLUDED.model, offline = EXCLUDED.offline,
                conversation_id = EXCLUDED.conversation_id, parent_run_id = EXCLUDED.parent_run_id,
                started_at = COALESCE(runs.started_at, now())
            WHERE runs.tenant = EXCLUDED.tenant
            RETURNING attempt, result, cancel_requested OR EXISTS (
                SELECT FROM runs parent
                WHERE parent.id = runs.parent_run_id AND parent.tenant = runs.tenant AND parent.cancel_requested
            ) AS cancel_requested
            """,
            req.run_id, tenant, req.agent, model, offline, req.conversation_id, req.parent_run_id,
        )  # fmt: skip
        if row is None:
            return None
        end = decode_union(row["result"], RunEnd) if row["result"] is not None else None
        return Begun(attempt=row["attempt"], cancel_requested=row["cancel_requested"], end=end)

    async def finish(self, run_id: str, end: RunEnd, usage: Usage) -> None:
        error = end.error.message if isinstance(end, RunFailed) else None
        await self.pool.execute(
            """
            UPDATE runs SET status = $2, usage = $3, error = $4, result = $5, finished_at = now(),
                model = COALESCE($6, model)
            WHERE id = $1 AND status = 'running'
            """,
            run_id, STATUS_OF_END[type(end)].value, msgspec.to_builtins(usage), error, encode(end),
            end.model if isinstance(end, RunCompleted) and end.model else None,
        )  # fmt: skip

    async def give_up(self, req: RunRequest, tenant: str, failed: RunFailed, *, over_an_end: bool) -> RunEnd | None:
        """A dead-lettered request: record its run `failed`, unless it ended already (then its recorded end)
        or `over_an_end` (its recorded end cannot be announced). None if another tenant owns the id."""
        row = await self.pool.fetchrow(
            """
            INSERT INTO runs (id, tenant, agent, status, conversation_id, parent_run_id, error, result, finished_at)
            VALUES ($1, $2, $3, 'failed', $4, $5, $6, $7, now())
            ON CONFLICT (id) DO UPDATE SET
                status = 'failed', error = EXCLUDED.error, result = EXCLUDED.result, finished_at = now()
            WHERE runs.tenant = EXCLUDED.tenant AND (runs.status = 'running' OR $8)
            RETURNING result
            """,
            req.run_id, tenant, req.agent, req.conversation_id, req.parent_run_id, failed.error.message,
            encode(failed), over_an_end,
        )  # fmt: skip
        if row is None:
            row = await self.pool.fetchrow("SELECT result FROM runs WHERE id = $1 AND tenant = $2", req.run_id, tenant)
        if row is None or row["result"] is None:
            return None
        end: RunEnd = decode_union(row["result"], RunEnd)
        return end

    async def request_cancel(self, run_id: str, tenant: str, reason: str) -> tuple[RunRecord, list[str]] | None:
        """Mark a run, and every run under it still running, for cancelling: the run's record and the ids
        of those under it. A run not seen yet gets a tombstone, so it ends cancelled on arrival."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE runs SET cancel_requested = true WHERE id = $1 AND tenant = $2 RETURNING *", run_id, tenant
            )
            if row is None:
                row = await conn.fetchrow(
                    """
                    INSERT INTO runs (id, tenant, agent, status, cancel_requested, error, result, finished_at)
                    VALUES ($1, $2, '', 'cancelled', true, $3, $4, now())
                    ON CONFLICT (id) DO NOTHING RETURNING *
                    """,
                    run_id, tenant, reason, encode(RunCancelled(run_id=run_id, reason=reason)),
                )  # fmt: skip
                return (as_struct(row, RunRecord), []) if row is not None else None
            below = await conn.fetch(
                """
                WITH RECURSIVE below AS (
                    SELECT id FROM runs WHERE parent_run_id = $1 AND tenant = $2
                    UNION
                    SELECT r.id FROM runs r JOIN below b ON r.parent_run_id = b.id WHERE r.tenant = $2
                )
                UPDATE runs SET cancel_requested = true
                WHERE id IN (SELECT id FROM below) AND status = 'running' RETURNING id
                """,
                run_id, tenant,
            )  # fmt: skip
        return as_struct(row, RunRecord), [r["id"] for r in below]

    async def tree(self, run_id: str, tenant: str) -> list[RunRecord]:
        """The run and all its descendants, breadth first (empty if the run is not this tenant's).
        `run_id` may also name what is not a run but parents runs (a research job): its runs and theirs."""
        rows = await self.pool.fetch(
            """
            WITH RECURSIVE tree AS (
                SELECT runs.*, 0 AS depth FROM runs
                WHERE tenant = $2 AND (id = $1 OR (parent_run_id = $1 AND NOT EXISTS (SELECT FROM runs WHERE id = $1)))
                UNION ALL
                SELECT r.*, t.depth + 1 FROM runs r JOIN tree t ON r.parent_run_id = t.id WHERE r.tenant = $2
            )
            SELECT * FROM tree ORDER BY depth, created_at, id
            """,
            run_id, tenant,
        )  # fmt: skip
        return as_structs(rows, RunRecord)

    async def get(self, run_id: str, tenant: str) -> RunRecord | None:
        row = await self.pool.fetchrow("SELECT * FROM runs WHERE id = $1 AND tenant = $2", run_id, tenant)
        return as_struct(row, RunRecord) if row is not None else None
