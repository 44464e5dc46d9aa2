"""The executor's table: one row per run (executor.runs)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import asyncpg
import msgspec

from actors._postgres import Conn, as_struct, as_structs
from bus.codec import decode_union, encode
from schemas.runs import (
    STATUS_OF_END,
    ListRuns,
    RunCancelled,
    RunCompleted,
    RunEnd,
    RunFailed,
    RunRecord,
    RunRequest,
    Usage,
)
from schemas.usage import UsageGrouping

__all__ = ["Begun", "RunStore", "RunsFull", "Spend", "UsageStore", "UsageSums"]


class RunsFull(Exception):
    """The tenant has as many runs running as its `concurrent_runs` quota allows."""

    def __init__(self, running: int) -> None:
        super().__init__(f"{running} runs are running")
        self.running = running


@dataclass(frozen=True, slots=True)
class Begun:
    attempt: int
    cancel_requested: bool  # the run's own cancel, or its parent run's
    end: RunEnd | None  # set when the run already ended (a redelivery, or cancelled before it came)
    waiting: bool = False  # parked: it goes on when its calls are decided (schemas/approvals.py), not now


@dataclass(frozen=True, slots=True)
class Spend:
    """A tenant's spend (tokens, priced dollars) today and this month, as of `today` (a UTC date)."""

    day_tokens: int
    day_usd: float
    month_tokens: int
    month_usd: float
    today: date


class RunStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def begin(
        self, req: RunRequest, *, tenant: str, model: str, offline: bool, max_running: int = 0
    ) -> Begun | None:
        """Record the run as running (attempt + 1 if it was already); None if another tenant owns the id.
        With `max_running` (the tenant's `concurrent_runs` quota), RunsFull when the tenant already has that many
        runs running on any replica (a run's own sub-runs not counted): counted and recorded under a per-tenant
        lock, so replicas cannot race past it."""
        if not max_running:  # one statement: no BEGIN and COMMIT round trips around it
            return await self._begin(self.pool, req, tenant=tenant, model=model, offline=offline)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('executor.runs:' || $1, 0))", tenant)
            count = await conn.fetchval(
                """
                SELECT count(*) FROM runs WHERE tenant = $1 AND status = 'running' AND id <> $2
                  AND NOT EXISTS (SELECT FROM runs parent WHERE parent.id = runs.parent_run_id)
                """,
                tenant, req.run_id,
            )  # fmt: skip
            if count >= max_running:
                raise RunsFull(count)
            return await self._begin(conn, req, tenant=tenant, model=model, offline=offline)

    @staticmethod
    async def _begin(
        conn: Conn | asyncpg.Pool, req: RunRequest, *, tenant: str, model: str, offline: bool
    ) -> Begun | None:
        row = await conn.fetchrow(
            """
            INSERT INTO runs (id, tenant, agent, model, offline, status, conversation_id, parent_run_id, task_id,
                              started_at)
            VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, $8, now())
            ON CONFLICT (id) DO UPDATE SET
                attempt = CASE WHEN runs.status = 'running' THEN runs.attempt + 1 ELSE runs.attempt END,
                agent = EXCLUDED.agent, model = EXCLUDED.model, offline = EXCLUDED.offline,
                conversation_id = EXCLUDED.conversation_id, parent_run_id = EXCLUDED.parent_run_id,
                task_id = EXCLUDED.task_id,
                started_at = COALESCE(runs.started_at, now())
            WHERE runs.tenant = EXCLUDED.tenant
            RETURNING attempt, result, status = 'waiting' AS waiting, cancel_requested OR EXISTS (
                SELECT FROM runs parent
                WHERE parent.id = runs.parent_run_id AND parent.tenant = runs.tenant AND parent.cancel_requested
            ) AS cancel_requested
            """,
            req.run_id, tenant, req.agent, model, offline, req.conversation_id, req.parent_run_id, req.task_id,
        )  # fmt: skip
        if row is None:
            return None
        end = decode_union(row["result"], RunEnd) if row["result"] is not None else None
        return Begun(attempt=row["attempt"], cancel_requested=row["cancel_requested"], end=end, waiting=row["waiting"])

    async def finish(self, run_id: str, end: RunEnd, usage: Usage) -> None:
        """Record the end, add what the run spent to its tenant's spend of the day, and drop its journal
        (actors/executor/journal.py: nothing will replay it), in one statement."""
        error = end.error.message if isinstance(end, RunFailed) else None
        await self.pool.execute(
            """
            WITH done AS (
                UPDATE runs SET status = $2, usage = $3, error = $4, result = $5, finished_at = now(),
                    model = COALESCE($6, model)
                WHERE id = $1 AND status = 'running'
                RETURNING tenant
            ), forgotten AS (
                DELETE FROM journal WHERE run_id = $1
            )
            INSERT INTO spend_daily (tenant, day, tokens, usd)
            SELECT tenant, (now() AT TIME ZONE 'UTC')::date, $7::bigint, $8::float8 FROM done
            WHERE $7::bigint > 0 OR $8::float8 > 0
            ON CONFLICT (tenant, day) DO UPDATE
                SET tokens = spend_daily.tokens + EXCLUDED.tokens, usd = spend_daily.usd + EXCLUDED.usd
            """,
            run_id, STATUS_OF_END[type(end)].value, msgspec.to_builtins(usage), error, encode(end),
            end.model if isinstance(end, RunCompleted) and end.model else None,
            usage.input_tokens + usage.output_tokens, usage.priced_cost_usd,
        )  # fmt: skip

    async def spend(self, tenant: str) -> Spend:
        """What the tenant's finished runs spent today and this month (UTC, by the database's clock)."""
        row = await self.pool.fetchrow(
            """
            WITH today AS (SELECT (now() AT TIME ZONE 'UTC')::date AS day)
            SELECT COALESCE(sum(tokens) FILTER (WHERE s.day = today.day), 0)::bigint AS day_tokens,
                COALESCE(sum(usd) FILTER (WHERE s.day = today.day), 0)::float8 AS day_usd,
                COALESCE(sum(tokens), 0)::bigint AS month_tokens,
                COALESCE(sum(usd), 0)::float8 AS month_usd,
                min(today.day) AS today
            FROM today LEFT JOIN spend_daily s
                ON s.tenant = $1 AND s.day <= today.day AND s.day >= date_trunc('month', today.day)::date
            GROUP BY today.day
            """,
            tenant,
        )
        assert row is not None
        return as_struct(row, Spend)

    async def give_up(self, req: RunRequest, tenant: str, failed: RunFailed, *, over_an_end: bool) -> RunEnd | None:
        """A dead-lettered request: record its run `failed`, unless it ended already (then its recorded end)
        or `over_an_end` (its recorded end cannot be announced). None if another tenant owns the id."""
        row = await self.pool.fetchrow(
            """
            INSERT INTO runs (id, tenant, agent, status, conversation_id, parent_run_id, error, result, finished_at,
                              task_id)
            VALUES ($1, $2, $3, 'failed', $4, $5, $6, $7, now(), $9)
            ON CONFLICT (id) DO UPDATE SET
                status = 'failed', error = EXCLUDED.error, result = EXCLUDED.result, finished_at = now()
            WHERE runs.tenant = EXCLUDED.tenant AND (runs.status = 'running' OR $8)
            RETURNING result
            """,
            req.run_id, tenant, req.agent, req.conversation_id, req.parent_run_id, failed.error.message,
            encode(failed), over_an_end, req.task_id,
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

    async def page(self, tenant: str, query: ListRuns, *, limit: int) -> list[RunRecord]:
        """The tenant's runs matching the query's filters, newest first: the `limit` after `query.after`
        (keyset on (created_at, id), index runs_listed; a filter by task, conversation or parent has its own)."""
        args: list[object] = [tenant, limit]
        where = ["tenant = $1"]
        filters = {
            "status": query.status.value if query.status is not None else None,
            "agent": query.agent,
            "task_id": query.task_id,
            "conversation_id": query.conversation_id,
            "parent_run_id": query.parent_run_id,
        }
        for column, value in filters.items():  # the column names are these fixed ones, never a caller's text
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        if query.after is not None:
            args += [query.after.at, query.after.id]
            where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
        sql = f"SELECT * FROM runs WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT $2"
        return as_structs(await self.pool.fetch(sql, *args), RunRecord)

    async def get(self, run_id: str, tenant: str) -> RunRecord | None:
        row = await self.pool.fetchrow("SELECT * FROM runs WHERE id = $1 AND tenant = $2", run_id, tenant)
        return as_struct(row, RunRecord) if row is not None else None

    async def counts(self, tenant: str, since: datetime | None) -> tuple[dict[str, int], int]:
        """The tenant's runs by status, and how many were created at or after `since` (GET /v1/stats)."""
        rows = await self.pool.fetch(
            """
            SELECT status, count(*) AS runs,
                   count(*) FILTER (WHERE $2::timestamptz IS NULL OR created_at >= $2) AS recent
            FROM runs WHERE tenant = $1 GROUP BY status
            """,
            tenant, since,
        )  # fmt: skip
        return {r["status"]: int(r["runs"]) for r in rows}, sum(int(r["recent"]) for r in rows)


# --- usage rollups (RunStore.usage) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageSums:
    """A rollup's row: one group's sums of its runs' own usage (`key` None: the total of all of them)."""

    key: str | None
    runs: int
    requests: int
    input_tokens: int
    output_tokens: int
    tool_calls: int
    priced_cost_usd: float  # what the priced part cost
    any_unpriced: bool  # some run's cost is not known: the group's is not either
    unpriced_models: list[str]


# the group of a run, by grouping: fixed SQL (never a caller's text)
USAGE_KEY: dict[UsageGrouping | None, str] = {
    None: "''",
    UsageGrouping.AGENT: "agent",
    UsageGrouping.MODEL: "model",
    UsageGrouping.DAY: "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}
# a run's own usage as stored (jsonb, defaults left out): its priced cost, and the models it could not price;
# one with a cost unknown and no models named (recorded before they were) names its run's model
USAGE_SUMS = """
, spent AS (
    SELECT {key} AS grp,
        COALESCE((usage->>'requests')::bigint, 0) AS requests,
        COALESCE((usage->>'input_tokens')::bigint, 0) AS input_tokens,
        COALESCE((usage->>'output_tokens')::bigint, 0) AS output_tokens,
        COALESCE((usage->>'tool_calls')::bigint, 0) AS tool_calls,
        COALESCE((usage->>'priced_cost_usd')::float8, (usage->>'cost_usd')::float8, 0) AS priced,
        CASE
            WHEN usage->>'cost_usd' IS NOT NULL THEN '[]'::jsonb
            WHEN jsonb_array_length(COALESCE(usage->'unpriced_models', '[]')) > 0 THEN usage->'unpriced_models'
            WHEN COALESCE((usage->>'requests')::bigint, 0) > 0
                THEN jsonb_build_array(COALESCE(NULLIF(model, ''), agent))
            ELSE '[]'::jsonb
        END AS unpriced
    FROM picked
), sums AS (
    SELECT GROUPING(grp) = 1 AS is_total, grp, count(*) AS runs,
        COALESCE(sum(requests), 0)::bigint AS requests,
        COALESCE(sum(input_tokens), 0)::bigint AS input_tokens,
        COALESCE(sum(output_tokens), 0)::bigint AS output_tokens,
        COALESCE(sum(tool_calls), 0)::bigint AS tool_calls,
        COALESCE(sum(priced), 0) AS priced_cost_usd,
        COALESCE(bool_or(unpriced <> '[]'::jsonb), false) AS any_unpriced
    FROM spent GROUP BY GROUPING SETS ((grp), ())
), unpriced_names AS (
    SELECT GROUPING(grp) = 1 AS is_total, grp, array_agg(DISTINCT m.name ORDER BY m.name) AS models
    FROM spent CROSS JOIN LATERAL jsonb_array_elements_text(spent.unpriced) AS m(name)
    GROUP BY GROUPING SETS ((grp), ())
)
SELECT CASE WHEN s.is_total THEN NULL ELSE s.grp END AS key, s.runs, s.requests, s.input_tokens, s.output_tokens,
    s.tool_calls, s.priced_cost_usd, s.any_unpriced, COALESCE(n.models, '{{}}') AS unpriced_models
FROM sums s LEFT JOIN unpriced_names n ON n.is_total = s.is_total AND n.grp IS NOT DISTINCT FROM s.grp
ORDER BY s.is_total DESC, s.grp
"""
CREATED_IN = (
    "created_at >= COALESCE($2::timestamptz, '-infinity'::timestamptz)"
    " AND created_at < COALESCE($3::timestamptz, 'infinity'::timestamptz)"
)


class UsageStore:
    """Sums over executor.runs (the executor's pool, shared with RunStore)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def sums(
        self,
        tenant: str,
        *,
        since: datetime | None,
        until: datetime | None,
        group_by: UsageGrouping | None,
        task_id: str | None = None,
        conversation_id: str | None = None,
        run_id: str | None = None,
    ) -> list[UsageSums]:
        """The total (first, key None) and each group of the tenant's runs created in [since, until): all of
        them, or those of the task / conversation / run (or research job) named, with every run under them."""
        args: list[object] = [tenant, since, until]
        roots: list[str] = []
        if task_id is not None:
            args.append(task_id)
            roots.append(f"task_id = ${len(args)}")
        if conversation_id is not None:
            args.append(conversation_id)
            roots.append(f"conversation_id = ${len(args)}")
        if run_id is not None:
            args.append(run_id)
            n = len(args)
            roots.append(f"(id = ${n} OR (parent_run_id = ${n} AND NOT EXISTS (SELECT FROM runs WHERE id = ${n})))")
        if roots:
            picked = f"""
                WITH RECURSIVE scoped(id) AS (
                    SELECT id FROM runs WHERE tenant = $1 AND {" AND ".join(roots)}
                    UNION
                    SELECT r.id FROM runs r JOIN scoped s ON r.parent_run_id = s.id WHERE r.tenant = $1
                ), picked AS (
                    SELECT runs.* FROM runs JOIN scoped USING (id) WHERE runs.tenant = $1 AND {CREATED_IN}
                )"""
        else:
            picked = f"WITH picked AS (SELECT * FROM runs WHERE tenant = $1 AND {CREATED_IN})"
        rows = await self.pool.fetch(picked + USAGE_SUMS.format(key=USAGE_KEY[group_by]), *args)
        return as_structs(rows, UsageSums)

    async def sums_under(self, tenant: str, run_ids: list[str]) -> dict[str, UsageSums]:
        """For each run named, the sums of its usage and every run's under it (a page of a run list, in one query)."""
        picked = """
            WITH RECURSIVE scoped(root, id) AS (
                SELECT id, id FROM runs WHERE tenant = $1 AND id = ANY($2::text[])
                UNION
                SELECT s.root, r.id FROM runs r JOIN scoped s ON r.parent_run_id = s.id WHERE r.tenant = $1
            ), picked AS (
                SELECT runs.*, scoped.root FROM runs JOIN scoped USING (id) WHERE runs.tenant = $1
            )"""
        rows = await self.pool.fetch(picked + USAGE_SUMS.format(key="root"), tenant, run_ids)
        return {s.key: s for s in as_structs(rows, UsageSums) if s.key is not None}
