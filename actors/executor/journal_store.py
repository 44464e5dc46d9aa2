"""The executor's run journal and side-effect ledger (executor.journal, migration 007)."""

from __future__ import annotations

from typing import Any

import asyncpg

__all__ = ["JournalStore"]


class JournalStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def load(self, tenant: str, run_id: str, segment: int) -> dict[str, Any]:
        """What the run's `segment` recorded: payload by key (None for a started mark)."""
        rows = await self.pool.fetch(
            "SELECT key, payload FROM journal WHERE run_id = $1 AND segment = $2 AND tenant = $3",
            run_id, segment, tenant,
        )  # fmt: skip
        return {row["key"]: row["payload"] for row in rows}

    async def record(self, tenant: str, run_id: str, segment: int, key: str, payload: Any) -> None:
        """Keep one finished unit's payload (or, with None, a started mark). A row already there stays:
        the first to finish a unit is the one replayed."""
        await self.pool.execute(
            """
            INSERT INTO journal (run_id, segment, key, tenant, payload)
            VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING
            """,
            run_id, segment, key, tenant, payload,
        )  # fmt: skip
