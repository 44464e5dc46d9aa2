"""The executor's stored summaries of conversations' older messages (executor.summaries)."""

from __future__ import annotations

import asyncpg
import msgspec

from actors._postgres import as_struct

__all__ = ["StoredSummary", "SummaryStore"]


class StoredSummary(msgspec.Struct, frozen=True):
    covers: int  # the first `covers` messages of the conversation's history
    summary: str


class SummaryStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def latest(self, tenant: str, conversation_id: str, *, at_most: int) -> StoredSummary | None:
        """The summary covering the most of the conversation's first `at_most` messages, if any."""
        row = await self.pool.fetchrow(
            """
            SELECT covers, summary FROM summaries
            WHERE tenant = $1 AND conversation_id = $2 AND covers <= $3
            ORDER BY covers DESC LIMIT 1
            """,
            tenant, conversation_id, at_most,
        )  # fmt: skip
        return as_struct(row, StoredSummary) if row is not None else None

    async def put(self, tenant: str, conversation_id: str, summary: StoredSummary, *, agent: str, model: str) -> None:
        """Keep a summary; one already stored for the same extent (a redelivered run's) stays."""
        await self.pool.execute(
            """
            INSERT INTO summaries (tenant, conversation_id, covers, summary, agent, model)
            VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING
            """,
            tenant, conversation_id, summary.covers, summary.summary, agent, model,
        )  # fmt: skip
