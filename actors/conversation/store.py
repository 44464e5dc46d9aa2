"""The conversation actor's tables. Every function runs on a connection the caller holds in a transaction.

A conversation's row is locked (`FOR UPDATE`) by whatever changes its turns, so two replicas
handling the same conversation serialize on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from actors._postgres import Conn, as_struct, as_structs
from actors.conversation import history as history_parts
from bus.headers import new_id
from schemas.conversation import (
    ContinueConversation,
    Conversation,
    ConversationSummary,
    CreateConversation,
    Pattern,
    StoredMessage,
    TurnStatus,
)
from schemas.pages import Keyset
from schemas.runs import HistoryRef, RunRequest

__all__ = [
    "Turn",
    "continued",
    "copy_messages",
    "create",
    "finish_turn",
    "get",
    "get_turn",
    "history",
    "insert_rejected",
    "insert_turn",
    "list_conversations",
    "list_messages",
    "lock",
    "next_request",
    "queued_ahead",
    "reply_of",
    "run_request",
    "set_context",
    "touch",
]

CONVERSATION = """
    SELECT c.*,
        (SELECT run_id FROM turns t WHERE t.conversation_id = c.id AND t.status = 'running' LIMIT 1) AS active_run_id,
        (SELECT count(*) FROM turns t WHERE t.conversation_id = c.id AND t.status = 'queued') AS queued_runs
    FROM conversations c WHERE c.id = $1 AND c.tenant = $2
"""


async def get(conn: Conn, conversation_id: str, tenant: str) -> Conversation | None:
    row = await conn.fetchrow(CONVERSATION, conversation_id, tenant)
    return as_struct(row, Conversation) if row is not None else None


async def list_conversations(
    conn: Conn, tenant: str, *, limit: int, after: Keyset | None, pattern: Pattern | None
) -> list[ConversationSummary]:
    """The tenant's conversations by latest activity, newest first: the `limit` after `after` (keyset on
    (updated_at, id), index conversations_listed), each with how many messages it shows."""
    args: list[object] = [tenant, limit]
    where = ["c.tenant = $1"]
    if pattern is not None:
        args.append(pattern.value)
        where.append(f"c.pattern = ${len(args)}")
    if after is not None:
        args += [after.at, after.id]
        where.append(f"(c.updated_at, c.id) < (${len(args) - 1}, ${len(args)})")
    rows = await conn.fetch(
        f"""
        SELECT c.id AS conversation_id, c.pattern, c.agent, c.metadata->>'title' AS title, c.created_at, c.updated_at,
            (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS messages
        FROM conversations c WHERE {" AND ".join(where)}
        ORDER BY c.updated_at DESC, c.id DESC LIMIT $2
        """,
        *args,
    )
    return as_structs(rows, ConversationSummary)


async def touch(conn: Conn, conversation_id: str) -> None:
    """Something happened in the conversation (a turn started or ended): it moves to the top of the list."""
    await conn.execute("UPDATE conversations SET updated_at = now() WHERE id = $1", conversation_id)


async def lock(conn: Conn, conversation_id: str, tenant: str) -> Conversation | None:
    """The conversation, its row locked until the transaction ends; None if it is not this tenant's."""
    row = await conn.fetchrow(CONVERSATION + " FOR UPDATE OF c", conversation_id, tenant)
    return as_struct(row, Conversation) if row is not None else None


async def create(
    conn: Conn, tenant: str, cmd: CreateConversation, agent: str, *, parent: Conversation | None = None
) -> Conversation | None:
    """Create (or find: creating is idempotent on the id); None when another tenant owns the id."""
    await conn.execute(
        """
        INSERT INTO conversations (id, tenant, pattern, agent, policy, context, metadata, parent_id, base_history)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING
        """,
        cmd.conversation_id, tenant, cmd.pattern.value, agent, cmd.policy.value, cmd.context, cmd.metadata,
        parent.id if parent else None, await history(conn, parent) if parent else "[]",
    )  # fmt: skip
    return await get(conn, cmd.conversation_id, tenant)


async def copy_messages(conn: Conn, parent_id: str, child_id: str) -> None:
    """A continued conversation shows its parent's messages first (as copies with their own ids)."""
    rows = await conn.fetch("SELECT * FROM messages WHERE conversation_id = $1 ORDER BY ordinal", parent_id)
    await conn.executemany(
        """
        INSERT INTO messages (id, conversation_id, ordinal, role, content, metadata, created_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        """,
        [
            (
                new_id(),
                child_id,
                r["ordinal"],
                r["role"],
                r["content"],
                {**r["metadata"], "copied_from": r["id"]},
                r["created_at"],
            )
            for r in rows
        ],
    )


def continued(cmd: ContinueConversation, parent: Conversation) -> CreateConversation:
    return CreateConversation(
        conversation_id=cmd.new_conversation_id,
        pattern=parent.pattern,
        agent=parent.agent,
        context=parent.context,
        policy=parent.policy,
        metadata=parent.metadata,
    )


async def set_context(conn: Conn, conversation_id: str, tenant: str, context: dict[str, Any]) -> bool:
    status = await conn.execute(
        "UPDATE conversations SET context = $3, updated_at = now() WHERE id = $1 AND tenant = $2",
        conversation_id, tenant, context,
    )  # fmt: skip
    return status != "UPDATE 0"


async def history(conn: Conn, conversation: Conversation) -> str:
    """pydantic-ai JSON of every completed turn, in order, after what the conversation started from."""
    return (await history_parts.whole(conn, conversation.id)).decode()


@dataclass(frozen=True, slots=True)
class Turn:
    run_id: str
    conversation_id: str
    seq: int
    status: TurnStatus
    prompt: str
    data: dict[str, object] | None
    stream: bool = True


async def get_turn(conn: Conn, run_id: str) -> Turn | None:
    row = await conn.fetchrow("SELECT * FROM turns WHERE run_id = $1", run_id)
    return as_struct(row, Turn) if row is not None else None


async def insert_turn(
    conn: Conn,
    conversation_id: str,
    *,
    run_id: str,
    seq: int,
    prompt: str,
    data: dict[str, object] | None,
    message_id: str,
    metadata: dict[str, str],
    stream: bool = True,
) -> None:
    """A queued turn and the user's message."""
    await conn.execute(
        """
        INSERT INTO turns (run_id, conversation_id, seq, status, prompt, data, stream)
        VALUES ($1, $2, $3, 'queued', $4, $5, $6)
        """,
        run_id, conversation_id, seq, prompt, data, stream,
    )  # fmt: skip
    await conn.execute(
        """
        INSERT INTO messages (id, conversation_id, ordinal, role, content, run_id, metadata)
        VALUES ($1, $2, $3, 'user', $4, $5, $6) ON CONFLICT DO NOTHING
        """,
        message_id, conversation_id, 2 * seq, prompt, run_id, metadata,
    )  # fmt: skip
    await touch(conn, conversation_id)


async def insert_rejected(conn: Conn, conversation_id: str, *, run_id: str, seq: int, prompt: str) -> None:
    """A turn refused by the `reject` policy: no message, no history; a redelivery finds it and refuses again."""
    await conn.execute(
        """
        INSERT INTO turns (run_id, conversation_id, seq, status, prompt, finished_at)
        VALUES ($1, $2, $3, 'rejected', $4, now())
        """,
        run_id, conversation_id, seq, prompt,
    )  # fmt: skip


async def queued_ahead(conn: Conn, turn: Turn) -> int:
    """How many turns run before this one (the running one included)."""
    count = await conn.fetchval(
        "SELECT count(*) FROM turns WHERE conversation_id = $1 AND status IN ('queued', 'running') AND seq < $2",
        turn.conversation_id, turn.seq,
    )  # fmt: skip
    return int(count)


async def next_request(conn: Conn, conversation: Conversation, *, inline_limit: int) -> RunRequest | None:
    """Start the earliest queued turn if none is running: mark it running and build its RunRequest."""
    running = await conn.fetchval(
        "SELECT 1 FROM turns WHERE conversation_id = $1 AND status = 'running'", conversation.id
    )
    if running:
        return None
    row = await conn.fetchrow(
        """
        UPDATE turns SET status = 'running' WHERE run_id = (
            SELECT run_id FROM turns WHERE conversation_id = $1 AND status = 'queued' ORDER BY seq LIMIT 1
        ) RETURNING *
        """,
        conversation.id,
    )
    turn = as_struct(row, Turn) if row is not None else None
    return await run_request(conn, conversation, turn, inline_limit=inline_limit) if turn is not None else None


async def run_request(conn: Conn, conversation: Conversation, turn: Turn, *, inline_limit: int) -> RunRequest:
    """The turn's RunRequest: its history (every completed turn before it) inline while it is at most
    `inline_limit` bytes, else by a reference the executor reads in pages."""
    extent = await history_parts.extent(conn, conversation.id, before_seq=turn.seq, inline_limit=inline_limit)
    inline, ref = msgspec.Raw(b"[]"), None
    if extent.inline is not None:
        inline = msgspec.Raw(extent.inline)
    else:
        ref = HistoryRef(conversation_id=conversation.id, through_seq=extent.through_seq, size=extent.size)
    return RunRequest(
        run_id=turn.run_id,
        agent=conversation.agent,
        prompt=turn.prompt,
        history=inline,
        history_ref=ref,
        conversation_id=conversation.id,
        context=conversation.context if conversation.pattern is Pattern.SIDEKICK else None,
        data=turn.data,
        stream=turn.stream,
        # a task's conversation is the scheduler's, named for its task: the run is counted as the task's
        task_id=conversation.metadata.get("task_id") if conversation.pattern is Pattern.TASK else None,
        wait_for_model=conversation.pattern is Pattern.TASK,  # a task waits out a provider outage; a chat turn does not
    )


async def finish_turn(
    conn: Conn, turn: Turn, status: TurnStatus, *, new_messages: bytes | None, reply: StoredMessage | None
) -> None:
    await conn.execute(
        "UPDATE turns SET status = $2, new_messages = $3, finished_at = now() WHERE run_id = $1",
        turn.run_id, status.value, new_messages.decode() if new_messages is not None else None,
    )  # fmt: skip
    await touch(conn, turn.conversation_id)
    if reply is not None:
        await conn.execute(
            """
            INSERT INTO messages (id, conversation_id, ordinal, role, content, run_id, metadata, created_at)
            VALUES ($1, $2, $3, 'assistant', $4, $5, $6, $7) ON CONFLICT DO NOTHING
            """,
            reply.id, turn.conversation_id, 2 * turn.seq + 1, reply.content, turn.run_id, reply.metadata,
            reply.created_at,
        )  # fmt: skip


async def reply_of(conn: Conn, run_id: str) -> StoredMessage | None:
    row = await conn.fetchrow("SELECT * FROM messages WHERE run_id = $1 AND role = 'assistant'", run_id)
    return as_struct(row, StoredMessage) if row is not None else None


MESSAGES_PAGE_BYTES = 256 * 1024  # of content a page of messages carries: its reply stays under 1 MB


async def list_messages(conn: Conn, conversation_id: str, *, limit: int, before: str | None) -> list[StoredMessage]:
    """The latest `limit` messages (before the message `before`, when given), oldest first; fewer when
    they hold more than MESSAGES_PAGE_BYTES of content (the latest always), the rest on the next page."""
    rows = await conn.fetch(
        """
        SELECT * FROM (
            SELECT *, sum(octet_length(content)) OVER (ORDER BY ordinal DESC) - octet_length(content) AS newer
            FROM messages WHERE conversation_id = $1
              AND ($2::text IS NULL OR ordinal < (SELECT ordinal FROM messages WHERE id = $2))
            ORDER BY ordinal DESC LIMIT $3
        ) page WHERE newer = 0 OR newer + octet_length(content) <= $4
        ORDER BY ordinal DESC
        """,
        conversation_id, before, limit, MESSAGES_PAGE_BYTES,
    )  # fmt: skip
    return as_structs(reversed(rows), StoredMessage)


async def count(conn: Conn, tenant: str) -> int:
    """How many conversations the tenant has (GET /v1/stats)."""
    total: int = await conn.fetchval("SELECT count(*) FROM conversations WHERE tenant = $1", tenant)
    return total
