"""Research jobs and sub-runs in PostgreSQL (schema `research`, migrations/002_jobs.sql)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from actors._postgres import as_struct, as_structs
from bus.quotas import quota_exceeded
from bus.secrets import SecretBox, SecretError
from schemas.pages import Keyset
from schemas.research import (
    Citation,
    ResearchJob,
    ResearchStatus,
    Source,
    StartResearch,
    StopReason,
    SubQuestion,
    Subrun,
    SubrunKind,
    Totals,
)
from schemas.runs import RunStatus, Usage

__all__ = ["JobRow", "JobStore", "totals_of"]

FINISHED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)  # a sub-run is also `pending` before it starts


@dataclass(frozen=True, slots=True)
class JobRow:
    """One jobs row: the command that started it and where it stands."""

    id: str
    tenant: str
    spec: StartResearch
    notification_secret: str  # sealed (bus/secrets.py)
    status: ResearchStatus
    stopped_by: StopReason | None
    error: str | None
    cancel_reason: str | None
    report: str | None
    citations: list[Citation]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def view(self, subruns: list[Subrun]) -> ResearchJob:
        spec = self.spec
        return ResearchJob(
            id=self.id,
            tenant=self.tenant,
            question=spec.question,
            agent=spec.agent,
            sources=spec.sources,
            max_subtasks=spec.max_subtasks,
            max_depth=spec.max_depth,
            budget=spec.budget,
            deadline_seconds=spec.deadline_seconds,
            notification_config=spec.notification_config,
            status=self.status,
            stopped_by=self.stopped_by,
            error=self.error,
            totals=totals_of(subruns),
            subruns=subruns,
            report=self.report,
            citations=self.citations,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )


def totals_of(subruns: list[Subrun]) -> Totals:
    """The job's running totals: every sub-run that started counts, its usage once it finished."""
    cost: float | None = 0.0
    for s in subruns:
        if s.status in FINISHED and cost is not None:
            cost = None if s.usage.cost_usd is None and s.usage.requests else cost + (s.usage.cost_usd or 0.0)
    return Totals(
        subruns=sum(1 for s in subruns if s.started_at is not None),
        requests=sum(s.usage.requests for s in subruns),
        input_tokens=sum(s.usage.input_tokens for s in subruns),
        output_tokens=sum(s.usage.output_tokens for s in subruns),
        cost_usd=cost,
    )


class JobStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(
        self, tenant: str, spec: StartResearch, secret: str, *, max_unfinished: int = 0
    ) -> tuple[JobRow, bool] | None:
        """The job row (inserted if new) and whether this call created it; None if the id is another tenant's.
        BusError(quota_exceeded) when a new job would make more than `max_unfinished` (0: any number) unfinished
        jobs of the tenant: counted under a per-tenant lock, so replicas cannot race past it."""
        async with self.pool.acquire() as conn, conn.transaction():
            if max_unfinished and not await conn.fetchval("SELECT 1 FROM jobs WHERE id = $1", spec.job_id):
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('research.jobs:' || $1, 0))", tenant)
                sql = "SELECT count(*) FROM jobs WHERE tenant = $1 AND finished_at IS NULL"
                if (count := await conn.fetchval(sql, tenant)) >= max_unfinished:
                    raise quota_exceeded("research_jobs", max_unfinished, f"{count} research jobs are unfinished")
            row = await conn.fetchrow(
                """
                INSERT INTO jobs (id, tenant, spec, notification_secret) VALUES ($1, $2, $3, $4)
                ON CONFLICT (id) DO NOTHING RETURNING *
                """,
                spec.job_id, tenant, spec, secret,
            )  # fmt: skip
        created = row is not None
        if row is None:
            row = await self.pool.fetchrow("SELECT * FROM jobs WHERE id = $1", spec.job_id)
        if row is None or row["tenant"] != tenant:
            return None
        return as_struct(row, JobRow), created

    async def reseal(self, box: SecretBox) -> int:
        """Seal every notification secret not sealed under the current key yet; how many were."""
        count = 0
        for record in await self.pool.fetch("SELECT id, notification_secret FROM jobs"):
            try:
                sealed = box.reseal(record["notification_secret"])
            except SecretError:  # under a key no longer configured: left alone
                continue
            if sealed is not None:
                status = await self.pool.execute(
                    "UPDATE jobs SET notification_secret = $2 WHERE id = $1 AND notification_secret = $3",
                    record["id"], sealed, record["notification_secret"],
                )  # fmt: skip
                count += status == "UPDATE 1"
        return count

    async def get(self, job_id: str, tenant: str) -> JobRow | None:
        row = await self.pool.fetchrow("SELECT * FROM jobs WHERE id = $1 AND tenant = $2", job_id, tenant)
        return as_struct(row, JobRow) if row is not None else None

    async def page(
        self, tenant: str, *, limit: int, after: Keyset | None, status: ResearchStatus | None
    ) -> list[JobRow]:
        """The tenant's jobs, newest first: `limit` after `after` (keyset on (created_at, id), index jobs_listed)."""
        args: list[object] = [tenant, limit]
        where = ["tenant = $1"]
        if status is not None:
            args.append(status.value)
            where.append(f"status = ${len(args)}")
        if after is not None:
            args += [after.at, after.id]
            where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
        sql = f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT $2"
        return as_structs(await self.pool.fetch(sql, *args), JobRow)

    async def subruns_of(self, job_ids: list[str]) -> dict[str, list[Subrun]]:
        """The sub-runs of each job named, in order (one query for a page of jobs)."""
        rows = await self.pool.fetch(
            "SELECT * FROM subruns WHERE job_id = ANY($1::text[]) ORDER BY job_id, seq", job_ids
        )
        found: dict[str, list[Subrun]] = {job_id: [] for job_id in job_ids}
        for row in rows:
            found[row["job_id"]].append(as_struct(row, Subrun))
        return found

    async def subruns(self, job_id: str) -> list[Subrun]:
        rows = await self.pool.fetch("SELECT * FROM subruns WHERE job_id = $1 ORDER BY seq", job_id)
        return as_structs(rows, Subrun)

    async def begin(self, job_id: str) -> JobRow:
        """The job as it stands, its clock started at its first delivery (a resumed job keeps its deadline)."""
        row = await self.pool.fetchrow(
            "UPDATE jobs SET started_at = coalesce(started_at, now()) WHERE id = $1 RETURNING *", job_id
        )
        if row is None:
            raise LookupError(f"no research job {job_id}")
        return as_struct(row, JobRow)

    async def set_status(self, job_id: str, status: ResearchStatus) -> None:
        await self.pool.execute(
            "UPDATE jobs SET status = $2 WHERE id = $1 AND finished_at IS NULL", job_id, status.value
        )

    async def request_cancel(self, job_id: str, tenant: str, reason: str) -> JobRow | None:
        row = await self.pool.fetchrow(
            """
            UPDATE jobs SET cancel_reason = CASE WHEN finished_at IS NULL THEN coalesce(cancel_reason, $3) END
            WHERE id = $1 AND tenant = $2 RETURNING *
            """,
            job_id, tenant, reason,
        )  # fmt: skip
        return as_struct(row, JobRow) if row is not None else None

    async def finish(
        self,
        job_id: str,
        status: ResearchStatus,
        *,
        report: str | None,
        citations: list[Citation],
        stopped_by: StopReason | None = None,
        error: str | None = None,
    ) -> JobRow:
        """Record the end once; a second call (a redelivery racing a restart) returns the first end."""
        row = await self.pool.fetchrow(
            """
            UPDATE jobs SET status = $2, report = $3, citations = $4, stopped_by = $5, error = $6, finished_at = now()
            WHERE id = $1 AND finished_at IS NULL RETURNING *
            """,
            job_id, status.value, report, citations, stopped_by.value if stopped_by else None, error,
        )  # fmt: skip
        if row is None:
            row = await self.pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
            if row is None:
                raise LookupError(f"no research job {job_id}")
        return as_struct(row, JobRow)

    # --- sub-runs ----------------------------------------------------------------------------

    async def add_questions(self, job_id: str, depth: int, questions: list[SubQuestion]) -> None:
        """Sub-question rows `<job>-q<depth>-<n>`, pending; re-adding the same plan changes nothing."""
        await self.pool.executemany(
            """
            INSERT INTO subruns (run_id, job_id, kind, depth, question, why) VALUES ($1, $2, 'question', $3, $4, $5)
            ON CONFLICT (run_id) DO NOTHING
            """,
            [(f"{job_id}-q{depth}-{n}", job_id, depth, q.question, q.why) for n, q in enumerate(questions, 1)],
        )

    async def start_subrun(self, job_id: str, run_id: str, kind: SubrunKind, depth: int, question: str | None) -> None:
        await self.pool.execute(
            """
            INSERT INTO subruns (run_id, job_id, kind, depth, question, status, started_at)
            VALUES ($1, $2, $3, $4, $5, 'running', now())
            ON CONFLICT (run_id) DO UPDATE SET status = 'running', started_at = coalesce(subruns.started_at, now())
            WHERE subruns.status = 'pending'
            """,
            run_id, job_id, kind.value, depth, question,
        )  # fmt: skip

    async def finish_subrun(
        self,
        run_id: str,
        status: RunStatus,
        *,
        output: str | None = None,
        error: str | None = None,
        sources: list[Source] | None = None,
        usage: Usage | None = None,
    ) -> None:
        await self.pool.execute(
            """
            UPDATE subruns SET status = $2, output = $3, error = $4, sources = $5, usage = $6, finished_at = now()
            WHERE run_id = $1 AND status IN ('pending', 'running')
            """,
            run_id, status.value, output, error, sources or [], usage or Usage(),
        )  # fmt: skip

    async def cancel_unfinished(self, job_id: str) -> list[str]:
        """Mark every sub-run still pending or running cancelled; the ids of those that were running."""
        rows = await self.pool.fetch(
            """
            UPDATE subruns s SET status = 'cancelled', finished_at = now()
            FROM (SELECT run_id, status FROM subruns WHERE job_id = $1 AND status IN ('pending', 'running')
                  FOR UPDATE) old
            WHERE s.run_id = old.run_id RETURNING s.run_id, old.status
            """,
            job_id,
        )
        return [r["run_id"] for r in rows if r["status"] == "running"]
