"""The conversation actor: applies a conversation's commands in order and keeps its history.

See docs/protocol.md, steps 2 and 4. Order across replicas: a command is applied only when it is
the first message of its conversation still in the work-queue stream; a later one waits
(`Retry`) until the earlier ones are acked. Within the database, the conversation's row lock
serializes a command with the end of a run. Everything is published after the transaction
commits, with message ids, so a redelivered command or event publishes nothing twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import structlog
from nats.js.errors import NotFoundError

from actors._postgres import DATABASE_DOWN, Conn, open_pool
from actors._postgres import health as postgres_health
from actors.conversation import history, store
from actors.conversation.config import ConversationConfig
from bus import subjects
from bus.actor import Actor, Consumer, Delivery, Endpoint
from bus.config import BusConfig
from bus.errors import BusError, Retry
from bus.headers import Trace, new_id
from bus.streams import CONVERSATION_CMD, EXECUTOR_EVT, ConsumerSpec
from schemas._base import Message
from schemas.conversation import (
    ContinueConversation,
    Conversation,
    ConversationCommand,
    ConversationList,
    ConversationView,
    CreateConversation,
    GetConversation,
    GetHistory,
    ListConversations,
    ListMessages,
    MessageList,
    Policy,
    PostMessage,
    Role,
    SetContext,
    StoredMessage,
    TurnCompleted,
    TurnFailed,
    TurnStatus,
)
from schemas.errors import ErrorCode, ErrorReply
from schemas.pages import Keyset
from schemas.runs import CancelRun, RunAccepted, RunCompleted, RunEnd, RunFailed, RunFinished, RunRequest, RunView
from schemas.stats import ConversationCount, CountConversations

__all__ = ["ConversationActor"]

MIGRATIONS = Path(__file__).parent / "migrations"
ORDER_RETRY_S = 0.02
LIST_MAX = 200  # conversations in one page of the list


@dataclass
class TurnDecision:
    """What a command decided, to publish once the transaction has committed."""

    accepted: RunAccepted | None = None
    failed: ErrorReply | None = None
    start: RunRequest | None = None
    cancel: str | None = None  # the run to interrupt
    turn_event: TurnCompleted | TurnFailed | None = None
    end: RunEnd | None = None  # the run's end, for its output stream: published once the turn is stored


def rejection(active_run_id: str | None) -> ErrorReply:
    details = {"active_run_id": active_run_id} if active_run_id else {}
    return ErrorReply(
        code=ErrorCode.CONFLICT,
        message="a turn is running in this conversation and its policy is reject",
        details=details,
    )


class ConversationActor(Actor):
    name = subjects.ActorName.CONVERSATION
    unavailable_errors = DATABASE_DOWN
    description = "conversations, history and turn order"

    def __init__(self, bus_config: BusConfig, config: ConversationConfig) -> None:
        super().__init__(bus_config)
        self.config = config
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("conversation actor is not started")
        return self._pool

    def routes(self) -> Sequence[Consumer[Any] | Endpoint[Any]]:
        return (
            Consumer(
                ConsumerSpec(CONVERSATION_CMD, "conversation-cmd", subjects.conversation_commands()),
                ConversationCommand,
                self._on_command,
                sync_ack=True,  # the next command of the conversation must not find this one still queued
            ),
            Consumer(
                ConsumerSpec(EXECUTOR_EVT, "conversation-runs", subjects.executor_finished_all()),
                RunFinished,
                self._on_run_finished,
            ),
            Endpoint("create", CreateConversation, self._create),
            Endpoint("get", GetConversation, self._get),
            Endpoint("list", ListConversations, self._list),
            Endpoint("messages", ListMessages, self._messages),
            Endpoint("context", SetContext, self._context),
            Endpoint("continue", ContinueConversation, self._continue),
            Endpoint("history", GetHistory, self._history),
            Endpoint("count", CountConversations, self._count),
        )

    async def on_start(self) -> None:
        self._pool = await open_pool(self.config.database_url, schema="conversation", migrations=MIGRATIONS)

    async def on_stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def health_checks(self) -> dict[str, str]:
        return await postgres_health(self._pool)

    # --- commands ----------------------------------------------------------------------------

    async def _on_command(self, command: PostMessage | SetContext, delivery: Delivery) -> None:
        await self._wait_for_turn(delivery)
        match command:
            case PostMessage():
                await self._post(command, delivery)
            case SetContext():
                async with self.pool.acquire() as conn:
                    await store.set_context(conn, command.conversation_id, delivery.tenant, command.context)

    async def _wait_for_turn(self, delivery: Delivery) -> None:
        """Retry unless this is the earliest unacked command of its conversation.

        A direct get may be answered by a replica that lags: one that does not even hold this
        message (nothing, or a later one) cannot tell, so the stream leader is asked then.
        """
        first = await self._first_pending(delivery.subject, direct=True)
        if first is None or first > delivery.stream_seq:
            first = await self._first_pending(delivery.subject, direct=False)
        if first is not None and first < delivery.stream_seq:
            raise Retry(f"waiting for command {first} of this conversation", delay=ORDER_RETRY_S)

    async def _first_pending(self, subject: str, *, direct: bool) -> int | None:
        """Stream sequence of the first message still in the work queue on `subject`."""
        try:
            msg = await self.bus.js.get_msg(CONVERSATION_CMD.name, seq=1, subject=subject, next=True, direct=direct)
        except NotFoundError:
            return None
        return msg.seq

    async def _post(self, cmd: PostMessage, delivery: Delivery) -> None:
        tenant = delivery.tenant
        structlog.contextvars.bind_contextvars(run_id=cmd.run_id, conversation_id=cmd.conversation_id)
        async with self.pool.acquire() as conn, conn.transaction():
            outcome = await self._decide(conn, cmd, tenant, delivery.stream_seq)
        trace = delivery.trace.child(run_id=cmd.run_id)
        await self._publish(outcome, tenant, cmd.conversation_id, cmd.run_id, trace)

    async def _decide(self, conn: Conn, cmd: PostMessage, tenant: str, seq: int) -> TurnDecision:
        conversation = await store.lock(conn, cmd.conversation_id, tenant)
        if conversation is None:
            error = ErrorReply(code=ErrorCode.NOT_FOUND, message=f"no conversation {cmd.conversation_id}")
            return TurnDecision(failed=error)
        turn = await store.get_turn(conn, cmd.run_id)
        if turn is not None:
            return await self._again(conn, conversation, turn)
        busy = conversation.active_run_id is not None or conversation.queued_runs > 0
        if busy and conversation.policy is Policy.REJECT:
            await store.insert_rejected(conn, conversation.id, run_id=cmd.run_id, seq=seq, prompt=cmd.content)
            return TurnDecision(failed=rejection(conversation.active_run_id))
        await store.insert_turn(
            conn,
            conversation.id,
            run_id=cmd.run_id,
            seq=seq,
            prompt=cmd.content,
            data=cmd.data,
            message_id=cmd.message_id,
            metadata=cmd.metadata,
            stream=cmd.stream,
        )
        position = conversation.queued_runs + (1 if conversation.active_run_id else 0)
        # a turn nobody streams has no listener for its place in the queue
        outcome = TurnDecision(accepted=RunAccepted(run_id=cmd.run_id, position=position) if cmd.stream else None)
        outcome.start = await store.next_request(conn, conversation, inline_limit=self.config.history_inline_bytes)
        if conversation.policy is Policy.INTERRUPT and conversation.active_run_id is not None:
            outcome.cancel = conversation.active_run_id
        return outcome

    async def _again(self, conn: Conn, conversation: Conversation, turn: store.Turn) -> TurnDecision:
        """A redelivered command: say again what was said (the bus drops the duplicates)."""
        if turn.status is TurnStatus.REJECTED:
            return TurnDecision(failed=rejection(None))
        if turn.status is TurnStatus.RUNNING:
            accepted = RunAccepted(run_id=turn.run_id, position=0) if turn.stream else None
            return TurnDecision(accepted=accepted, start=await self._run_request(conn, conversation, turn))
        if turn.status is TurnStatus.QUEUED:
            ahead = await store.queued_ahead(conn, turn)
            outcome = TurnDecision(accepted=RunAccepted(run_id=turn.run_id, position=ahead) if turn.stream else None)
            if conversation.policy is Policy.INTERRUPT:  # the first attempt may have stopped before asking
                outcome.cancel = conversation.active_run_id
            return outcome
        return TurnDecision()

    async def _run_request(self, conn: Conn, conversation: Conversation, turn: store.Turn) -> RunRequest:
        return await store.run_request(conn, conversation, turn, inline_limit=self.config.history_inline_bytes)

    async def _publish(
        self, outcome: TurnDecision, tenant: str, conversation_id: str, run_id: str, trace: Trace
    ) -> None:
        """Everything the outcome says, concurrently: each message is deduped by its id on a redelivery."""
        output = subjects.run_output(tenant, run_id)
        sends: list[Awaitable[Any]] = []
        if outcome.failed is not None:
            failure = RunFailed(run_id=run_id, error=outcome.failed)
            sends.append(self.bus.publish(output, failure, trace=trace, msg_id=f"{run_id}:end"))
            failed = TurnFailed(conversation_id=conversation_id, run_id=run_id, error=outcome.failed)
            sends.append(self._turn_event(tenant, failed, trace))
        if outcome.accepted is not None:
            sends.append(self.bus.publish(output, outcome.accepted, trace=trace, msg_id=f"{run_id}:accepted"))
        if outcome.turn_event is not None:
            sends.append(self._turn_event(tenant, outcome.turn_event, trace))
        if outcome.end is not None:  # the turn is committed: a client reading at the stream's end sees it
            sends.append(self.bus.publish(output, outcome.end, trace=trace, msg_id=f"{run_id}:end"))
        if outcome.start is not None:
            sends.append(self._request_run(tenant, outcome.start, trace))
        if outcome.cancel is not None:
            sends.append(self._interrupt(outcome.cancel, trace))
        await asyncio.gather(*sends)

    async def _turn_event(self, tenant: str, event: TurnCompleted | TurnFailed, trace: Trace) -> None:
        subject = subjects.conversation_event(tenant, event.conversation_id, "turn")
        await self.bus.publish(subject, event, trace=trace, msg_id=f"{event.run_id}:turn")

    async def _request_run(self, tenant: str, request: RunRequest, trace: Trace) -> None:
        trace = trace.child(run_id=request.run_id)
        request = msgspec.structs.replace(request, end_by_requester=True)  # the turn's end follows its commit
        subject = subjects.executor_command(tenant, request.run_id)
        await self.bus.publish(subject, request, trace=trace, msg_id=request.run_id)

    async def _interrupt(self, run_id: str, trace: Trace) -> None:
        cancel = CancelRun(run_id=run_id, reason="interrupted by a new message")
        try:
            await self.bus.request(
                subjects.service(subjects.ActorName.EXECUTOR, "cancel"), cancel, RunView, trace=trace
            )
        except BusError as e:  # the run ends on its own then; the queued turn follows it
            self._log.warning("could not interrupt the running turn", run_id=run_id, error=str(e))

    async def on_dead_letter(self, body: object | None, delivery: Delivery, reason: str) -> None:
        """A turn given up on ends `failed` with the reason, so its waiters are released and the
        conversation's next turn starts: as if its run had failed (a turn never recorded only has
        its failure announced)."""
        error = ErrorReply(code=ErrorCode.INTERNAL, message=f"gave up: {reason}")
        match body:
            case PostMessage():
                run_id, conversation_id = body.run_id, body.conversation_id
            case RunFinished() if body.conversation_id is not None:
                run_id, conversation_id = body.run_id, body.conversation_id
            case _:
                return
        async with self.pool.acquire() as conn:
            turn = await store.get_turn(conn, run_id)
        if turn is None:  # refused before it was recorded
            trace = delivery.trace.child(run_id=run_id)
            await self._publish(TurnDecision(failed=error), delivery.tenant, conversation_id, run_id, trace)
        elif turn.status in (TurnStatus.QUEUED, TurnStatus.RUNNING):
            result = RunFailed(run_id=run_id, error=error)
            await self._on_run_finished(
                RunFinished(run_id=run_id, conversation_id=conversation_id, result=result), delivery
            )

    # --- run results -------------------------------------------------------------------------

    async def _on_run_finished(self, finished: RunFinished, delivery: Delivery) -> None:
        """Store the turn's end, announce it, and start the conversation's next turn."""
        if finished.conversation_id is None:
            return  # not a conversation's run (a research sub-run, say)
        tenant = delivery.tenant
        structlog.contextvars.bind_contextvars(run_id=finished.run_id, conversation_id=finished.conversation_id)
        async with self.pool.acquire() as conn, conn.transaction():
            conversation = await store.lock(conn, finished.conversation_id, tenant)
            turn = await store.get_turn(conn, finished.run_id)
            if conversation is None or turn is None or turn.conversation_id != conversation.id:
                return
            if turn.status is TurnStatus.REJECTED:  # never sent to an executor
                return
            outcome = await self._finish(conn, conversation, turn, finished)
        await self._publish(outcome, tenant, conversation.id, turn.run_id, delivery.trace.child(run_id=turn.run_id))

    async def _finish(
        self, conn: Conn, conversation: Conversation, turn: store.Turn, finished: RunFinished
    ) -> TurnDecision:
        result = finished.result
        if turn.status in (TurnStatus.QUEUED, TurnStatus.RUNNING):
            if isinstance(result, RunCompleted):
                reply = StoredMessage(
                    id=new_id(),
                    conversation_id=conversation.id,
                    role=Role.ASSISTANT,
                    content=result.output,
                    run_id=turn.run_id,
                    created_at=datetime.now(UTC),
                    metadata={"model": result.model, "offline": str(result.offline).lower()},
                )
                await store.finish_turn(
                    conn, turn, TurnStatus.COMPLETED, new_messages=bytes(result.new_messages), reply=reply
                )
            else:
                status = TurnStatus.FAILED if isinstance(result, RunFailed) else TurnStatus.CANCELLED
                await store.finish_turn(conn, turn, status, new_messages=None, reply=None)
        outcome = TurnDecision(turn_event=await self._turn_event_for(conn, turn, finished), end=result)
        # the next queued turn; on a redelivery, the running one again (its request is deduped by the bus)
        outcome.start = await store.next_request(conn, conversation, inline_limit=self.config.history_inline_bytes)
        if outcome.start is None and conversation.active_run_id not in (None, turn.run_id):
            running = await store.get_turn(conn, conversation.active_run_id)
            if running is not None:
                outcome.start = await self._run_request(conn, conversation, running)
        return outcome

    async def _turn_event_for(self, conn: Conn, turn: store.Turn, finished: RunFinished) -> TurnCompleted | TurnFailed:
        result = finished.result
        if isinstance(result, RunCompleted):
            reply = await store.reply_of(conn, turn.run_id)
            if reply is not None:
                return TurnCompleted(
                    conversation_id=turn.conversation_id,
                    run_id=turn.run_id,
                    message=reply,
                    model=result.model,
                    offline=result.offline,
                )
        error = (
            result.error
            if isinstance(result, RunFailed)
            else ErrorReply(code=ErrorCode.CONFLICT, message=getattr(result, "reason", "") or "cancelled")
        )
        return TurnFailed(conversation_id=turn.conversation_id, run_id=turn.run_id, error=error)

    # --- queries -----------------------------------------------------------------------------

    async def _create(self, cmd: CreateConversation, trace: Trace) -> Message:
        valid_ids(trace.tenant, cmd.conversation_id)
        async with self.pool.acquire() as conn:
            conversation = await store.create(conn, trace.tenant, cmd, cmd.agent or self.config.default_agent)
        if conversation is None:
            raise BusError(ErrorCode.CONFLICT, f"conversation id {cmd.conversation_id} is taken")
        return ConversationView(conversation=conversation)

    async def _get(self, query: GetConversation, trace: Trace) -> Message:
        async with self.pool.acquire() as conn:
            return ConversationView(conversation=await self._found(conn, query.conversation_id, trace.tenant))

    async def _list(self, query: ListConversations, trace: Trace) -> Message:
        limit = max(1, min(query.limit, LIST_MAX))
        async with self.pool.acquire() as conn:
            # one more than asked: whether a next page exists, without a count
            found = await store.list_conversations(
                conn, trace.tenant, limit=limit + 1, after=query.after, pattern=query.pattern
            )
        page = found[:limit]
        more = len(found) > limit
        last = page[-1] if page else None
        next_after = Keyset(at=last.updated_at, id=last.conversation_id) if more and last else None
        return ConversationList(conversations=page, next_after=next_after)

    async def _count(self, _: CountConversations, trace: Trace) -> Message:
        async with self.pool.acquire() as conn:
            return ConversationCount(total=await store.count(conn, trace.tenant))

    async def _messages(self, query: ListMessages, trace: Trace) -> Message:
        async with self.pool.acquire() as conn:
            await self._found(conn, query.conversation_id, trace.tenant)
            limit = max(1, min(query.limit, 1000))
            messages = await store.list_messages(conn, query.conversation_id, limit=limit, before=query.before)
        return MessageList(messages=messages)

    async def _context(self, cmd: SetContext, trace: Trace) -> Message:
        async with self.pool.acquire() as conn:
            if not await store.set_context(conn, cmd.conversation_id, trace.tenant, cmd.context):
                raise BusError(ErrorCode.NOT_FOUND, f"no conversation {cmd.conversation_id}")
            return ConversationView(conversation=await self._found(conn, cmd.conversation_id, trace.tenant))

    async def _continue(self, cmd: ContinueConversation, trace: Trace) -> Message:
        valid_ids(trace.tenant, cmd.new_conversation_id)
        async with self.pool.acquire() as conn, conn.transaction():
            parent = await self._found(conn, cmd.conversation_id, trace.tenant)
            existing = await store.get(conn, cmd.new_conversation_id, trace.tenant)
            if existing is not None:  # a retried continue
                return ConversationView(conversation=existing)
            child = await store.create(conn, trace.tenant, store.continued(cmd, parent), parent.agent, parent=parent)
            if child is None:
                raise BusError(ErrorCode.CONFLICT, f"conversation id {cmd.new_conversation_id} is taken")
            await store.copy_messages(conn, parent.id, child.id)
        return ConversationView(conversation=child)

    async def _history(self, query: GetHistory, trace: Trace) -> Message:
        """A page of the history a RunRequest names by reference; not found for another tenant's."""
        async with self.pool.acquire() as conn:
            await self._found(conn, query.ref.conversation_id, trace.tenant)
            return await history.page(
                conn,
                query.ref.conversation_id,
                through_seq=query.ref.through_seq,
                after=query.after,
                budget=self.config.history_page_bytes,
            )

    async def _found(self, conn: Conn, conversation_id: str, tenant: str) -> Conversation:
        conversation = await store.get(conn, conversation_id, tenant)
        if conversation is None:
            raise BusError(ErrorCode.NOT_FOUND, f"no conversation {conversation_id}")
        return conversation


def valid_ids(*values: str) -> None:
    """A tenant and a conversation id each become one subject token."""
    try:
        for value in values:
            subjects.token(value)
    except subjects.InvalidToken as e:
        raise BusError(ErrorCode.INVALID, str(e)) from None
