"""Parked runs, their approvals and event waits (executor.parks, executor.approvals, executor.event_waits).

Every change of a deferred call (a decision, an expiry, an event) says whether it completed its park:
the caller then sends ResumeRun. Deciding is a conditional UPDATE (`status = 'pending'`), so a call is
decided once whichever replica, request or expiry comes first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from actors._postgres import Conn, as_struct, as_structs
from bus.codec import decode_union, encode
from schemas.approvals import Approval, ApprovalStatus
from schemas.runs import RunEnd, RunRequest, Usage

__all__ = ["Decided", "Park", "ParkStore", "Resumable"]

EXPIRED_REASON = "the approval expired"


@dataclass(frozen=True, slots=True)
class Park:
    """What a run parks with: everything it needs to go on, and the calls it waits for."""

    request: RunRequest
    origin: str | None
    messages: bytes  # pydantic-ai JSON, every message so far
    base: int  # how many of `messages` are the history it started from
    usage: Usage  # spent so far (every earlier stretch of the run)
    approvals: list[Approval]  # pending, without `park` (the store numbers the park)
    waits: dict[str, dict[str, Any]]  # tool call id waiting for an event -> what it waits for


@dataclass(frozen=True, slots=True)
class Resumable:
    """A parked run whose calls are all decided, marked running again."""

    request: RunRequest
    origin: str | None
    park: int
    messages: bytes
    base: int
    usage: Usage
    approvals: list[Approval]  # decided
    results: dict[str, str]  # event waits: tool call id -> the tool's return
    attempt: int
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class Decided:
    approval: Approval
    complete: bool  # the decision was the park's last: resume it


class ParkStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def park(self, run_id: str, tenant: str, park: Park) -> int:
        """Record the park (its number: 1 + the run's last) and mark the run waiting, in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            number: int = await conn.fetchval(
                """
                INSERT INTO parks (run_id, tenant, park, request, origin, messages, base, usage)
                VALUES ($1, $2, 1, $3, $4, $5, $6, $7)
                ON CONFLICT (run_id) DO UPDATE SET
                    park = parks.park + 1, request = EXCLUDED.request, origin = EXCLUDED.origin,
                    messages = EXCLUDED.messages, base = EXCLUDED.base, usage = EXCLUDED.usage, created_at = now()
                RETURNING park
                """,
                run_id, tenant, encode(park.request), park.origin, park.messages, park.base,
                msgspec.to_builtins(park.usage),
            )  # fmt: skip
            await conn.executemany(
                """
                INSERT INTO approvals (id, tenant, run_id, park, tool_call_id, tool_name, args, args_sha256, agent,
                                       conversation_id, task_id, parent_run_id, expires_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                """,
                [
                    (a.id, tenant, run_id, number, a.tool_call_id, a.tool_name, a.args, a.args_sha256, a.agent,
                     a.conversation_id, a.task_id, a.parent_run_id, a.expires_at)
                    for a in park.approvals
                ],
            )  # fmt: skip
            await conn.executemany(
                "INSERT INTO event_waits (run_id, park, tool_call_id, watch) VALUES ($1, $2, $3, $4)",
                [(run_id, number, call, watch) for call, watch in park.waits.items()],
            )
            await conn.execute(
                "UPDATE runs SET status = 'waiting', usage = $2 WHERE id = $1",
                run_id,
                msgspec.to_builtins(park.usage),
            )
            return number

    async def resume(self, run_id: str, tenant: str, park: int) -> Resumable | RunEnd | None:
        """Mark the run running again to go on from park `park`, if every call of it is decided: what it needs.
        Its recorded end if it ended; None if it is not parked there (resumed already, or not all decided)."""
        async with self.pool.acquire() as conn, conn.transaction():
            run = await conn.fetchrow(
                """
                SELECT status, result, attempt, cancel_requested OR EXISTS (
                    SELECT FROM runs parent WHERE parent.id = runs.parent_run_id AND parent.cancel_requested
                ) AS cancel_requested
                FROM runs WHERE id = $1 AND tenant = $2 FOR UPDATE
                """,
                run_id, tenant,
            )  # fmt: skip
            if run is None:
                return None
            if run["result"] is not None:
                end: RunEnd = decode_union(run["result"], RunEnd)
                return end
            row = await conn.fetchrow("SELECT * FROM parks WHERE run_id = $1 AND park = $2", run_id, park)
            decided = run["cancel_requested"] or await _complete(conn, run_id, park)  # a cancel ends it
            if row is None or (run["status"] == "waiting" and not decided):
                return None
            attempt = run["attempt"] + 1 if run["status"] == "running" else run["attempt"]  # redone after a crash
            await conn.execute("UPDATE runs SET status = 'running', attempt = $2 WHERE id = $1", run_id, attempt)
            approvals = await conn.fetch("SELECT * FROM approvals WHERE run_id = $1 AND park = $2", run_id, park)
            waits = await conn.fetch(
                "SELECT tool_call_id, result FROM event_waits WHERE run_id = $1 AND park = $2", run_id, park
            )
        return Resumable(
            request=decode_union(row["request"], RunRequest),
            origin=row["origin"],
            park=park,
            messages=row["messages"],
            base=row["base"],
            usage=as_struct(row, _UsageRow).usage,
            approvals=as_structs(approvals, Approval),
            results={w["tool_call_id"]: w["result"] or "" for w in waits},
            attempt=attempt,
            cancel_requested=run["cancel_requested"],
        )

    async def request_of(self, run_id: str, tenant: str) -> RunRequest | None:
        """The request of the tenant's run that parked (and has not finished since)."""
        raw = await self.pool.fetchval("SELECT request FROM parks WHERE run_id = $1 AND tenant = $2", run_id, tenant)
        return decode_union(raw, RunRequest) if raw is not None else None

    async def unresolved_waits(self, run_id: str) -> list[tuple[int, str, dict[str, Any]]]:
        """The run's event waits of its current park not answered yet: (park, tool call id, what it waits for)."""
        rows = await self.pool.fetch(
            """
            SELECT w.park, w.tool_call_id, w.watch FROM event_waits w JOIN parks p ON p.run_id = w.run_id
            WHERE w.run_id = $1 AND w.park = p.park AND NOT w.resolved
            """,
            run_id,
        )
        return [(r["park"], r["tool_call_id"], r["watch"]) for r in rows]

    async def forget(self, run_id: str) -> None:
        """The run ended: what it needed to go on is no longer needed (its approvals stay, the record; one still
        pending, of a run cancelled while it waited, is withdrawn)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM parks WHERE run_id = $1", run_id)
            await conn.execute(
                """
                UPDATE approvals SET status = 'withdrawn', decided_at = now(), decided_by = 'run',
                    reason = 'the run ended'
                WHERE run_id = $1 AND status = 'pending'
                """,
                run_id,
            )

    async def park_of(self, run_id: str, tenant: str) -> int | None:
        """The number of the run's park if it is waiting (a cancel of a waiting run resumes it to end it)."""
        number: int | None = await self.pool.fetchval(
            """
            SELECT p.park FROM parks p JOIN runs r ON r.id = p.run_id
            WHERE p.run_id = $1 AND p.tenant = $2 AND r.status = 'waiting'
            """,
            run_id,
            tenant,
        )
        return number

    # --- approvals -------------------------------------------------------------------------------

    async def decide(
        self,
        approval_id: str,
        tenant: str,
        status: ApprovalStatus,
        *,
        by: str,
        reason: str | None,
        edited_args: str | None,
    ) -> Decided | Approval | None:
        """Decide a pending approval: the decided one, and whether its park is complete. An approval decided
        already comes back as it is (the caller answers conflict); None if the tenant has none by that id."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """
                UPDATE approvals SET status = $3, decided_at = now(), decided_by = $4, reason = $5, edited_args = $6
                WHERE id = $1 AND tenant = $2 AND status = 'pending'
                RETURNING *
                """,
                approval_id, tenant, status.value, by, reason, edited_args,
            )  # fmt: skip
            if row is None:
                found = await conn.fetchrow(
                    "SELECT * FROM approvals WHERE id = $1 AND tenant = $2", approval_id, tenant
                )
                return as_struct(found, Approval) if found is not None else None
            return Decided(as_struct(row, Approval), await _complete(conn, row["run_id"], row["park"]))

    async def expire(self) -> list[tuple[Approval, bool]]:
        """Deny every pending approval past its expiry: each, and whether it completed its park."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                UPDATE approvals SET status = 'expired', decided_at = now(), decided_by = 'expiry', reason = $1
                WHERE id IN (
                    SELECT id FROM approvals WHERE status = 'pending' AND expires_at <= now()
                    ORDER BY expires_at LIMIT 500 FOR UPDATE SKIP LOCKED
                )
                RETURNING *
                """,
                EXPIRED_REASON,
            )
            out = []
            for row in rows:
                out.append((as_struct(row, Approval), await _complete(conn, row["run_id"], row["park"])))
            return out

    async def get(self, approval_id: str, tenant: str) -> Approval | None:
        row = await self.pool.fetchrow("SELECT * FROM approvals WHERE id = $1 AND tenant = $2", approval_id, tenant)
        return as_struct(row, Approval) if row is not None else None

    async def page(
        self, tenant: str, *, status: ApprovalStatus | None, run_id: str | None, limit: int
    ) -> list[Approval]:
        """The tenant's approvals, newest first, of one status (None: any) and run (None: any)."""
        rows = await self.pool.fetch(
            """
            SELECT * FROM approvals
            WHERE tenant = $1 AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR run_id = $3)
            ORDER BY created_at DESC, id DESC LIMIT $4
            """,
            tenant, status.value if status else None, run_id, limit,
        )  # fmt: skip
        return as_structs(rows, Approval)

    async def pending_count(self) -> int:
        """How many approvals wait (the executor's gauge)."""
        count: int = await self.pool.fetchval("SELECT count(*) FROM approvals WHERE status = 'pending'")
        return count

    # --- event waits -----------------------------------------------------------------------------

    async def resolve_wait(self, run_id: str, tenant: str, park: int, tool_call_id: str, result: str) -> bool | None:
        """Give an event wait its result: whether that completed the park; None if it was resolved already
        (or there is no such wait of the tenant's)."""
        async with self.pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval(
                """
                UPDATE event_waits w SET resolved = true, result = $5
                FROM runs r
                WHERE w.run_id = $1 AND w.park = $3 AND w.tool_call_id = $4 AND NOT w.resolved
                  AND r.id = w.run_id AND r.tenant = $2
                RETURNING true
                """,
                run_id, tenant, park, tool_call_id, result,
            )  # fmt: skip
            if not done:
                return None
            return await _complete(conn, run_id, park)


class _UsageRow(msgspec.Struct):
    usage: Usage


async def _complete(conn: Conn, run_id: str, park: int) -> bool:
    """No call of the park waits any more."""
    waiting: bool = await conn.fetchval(
        """
        SELECT EXISTS (SELECT FROM approvals WHERE run_id = $1 AND park = $2 AND status = 'pending')
            OR EXISTS (SELECT FROM event_waits WHERE run_id = $1 AND park = $2 AND NOT resolved)
        """,
        run_id,
        park,
    )
    return not waiting
