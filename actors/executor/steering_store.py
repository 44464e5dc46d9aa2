"""The executor's stored steering messages (executor.steering): what was said to a run, in order, and
whether the agent was given it yet."""

from __future__ import annotations

import asyncpg
import msgspec

from actors._postgres import as_struct, as_structs

__all__ = ["SteeringMessage", "SteeringStore"]


class SteeringMessage(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    seq: int
    message_id: str
    content: str
    delivered: bool


_COLUMNS = "run_id, seq, message_id, content, delivered_at IS NOT NULL AS delivered"


class SteeringStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def add(self, run_id: str, message_id: str, content: str) -> tuple[SteeringMessage, bool]:
        """Store the message as the run's next one; one with the same id stays as it was. The message, and
        whether it is new. (A lock per run in the transaction: two at once get 1 and 2, never both 1.)"""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('steering:' || $1, 0))", run_id)
            known = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM steering WHERE run_id = $1 AND message_id = $2", run_id, message_id
            )
            if known is not None:
                return as_struct(known, SteeringMessage), False
            row = await conn.fetchrow(
                f"""
                INSERT INTO steering (run_id, seq, message_id, content)
                VALUES ($1, (SELECT coalesce(max(seq), 0) + 1 FROM steering WHERE run_id = $1), $2, $3)
                RETURNING {_COLUMNS}
                """,
                run_id, message_id, content,
            )  # fmt: skip
            assert row is not None
            return as_struct(row, SteeringMessage), True

    async def pending(self, run_id: str) -> list[SteeringMessage]:
        """The run's messages the agent was not given yet, in order."""
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM steering WHERE run_id = $1 AND delivered_at IS NULL ORDER BY seq", run_id
        )
        return as_structs(rows, SteeringMessage)

    async def delivered(self, run_id: str, message_ids: list[str]) -> list[SteeringMessage]:
        """Mark the messages given to the agent; those marked now (not before), in order."""
        rows = await self.pool.fetch(
            f"""
            UPDATE steering SET delivered_at = now()
            WHERE run_id = $1 AND message_id = ANY($2::text[]) AND delivered_at IS NULL
            RETURNING {_COLUMNS}
            """,
            run_id, message_ids,
        )  # fmt: skip
        return sorted(as_structs(rows, SteeringMessage), key=lambda m: m.seq)
