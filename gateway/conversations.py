"""/v1/conversations: create, list, read, post a message (answered whole or streamed), context, continue."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from litestar import Controller, Response, get, post, put
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import Stream

from bus import subjects
from bus.client import Envelope
from bus.headers import Trace
from gateway.answers import ConversationPage, MessagePage
from gateway.bodies import ContextBody, NewConversation, NewMessage, TurnReply, TurnWaiting
from gateway.caller import Caller
from gateway.cursors import After, Limit, cursor, keyset
from gateway.errors import HTTP_STATUS, ApiError, error_json, retry_after
from gateway.sse import sse_response
from gateway.state import Gateway, Stored, ident, stored_response
from gateway.streams import StreamSlot
from gateway.views import full_json
from schemas.approvals import RunWaiting
from schemas.conversation import (
    ContinueConversation,
    Conversation,
    ConversationList,
    ConversationView,
    CreateConversation,
    GetConversation,
    ListConversations,
    ListMessages,
    MessageList,
    Pattern,
    PostMessage,
    SetContext,
    TurnCompleted,
)
from schemas.errors import ErrorCode
from schemas.runs import RunFailed

__all__ = ["ConversationController", "post_message", "start_turn"]

CONVERSATION = subjects.ActorName.CONVERSATION
# a failed turn's text for these codes is an exception's (the model's, a tool's): it stays in the run's record
SCRUBBED = {
    ErrorCode.INTERNAL: "the turn failed: internal error",
    ErrorCode.UNAVAILABLE: "the turn failed: its model or a tool is unavailable; the run's record says why",
}


async def start_turn(
    gw: Gateway,
    tenant: str,
    conversation_id: str,
    body: NewMessage,
    trace: Trace,
    *,
    run_id: str,
    message_id: str,
    stream: bool,
) -> None:
    """Publish the turn; `stream`: someone watches its tokens (else the run publishes none)."""
    post_cmd = PostMessage(
        conversation_id=conversation_id,
        message_id=message_id,
        run_id=run_id,
        content=body.message,
        metadata=body.metadata,
        stream=stream,
    )
    await gw.bus.publish(
        subjects.conversation_command(tenant, conversation_id), post_cmd, trace=trace, msg_id=message_id
    )


async def post_message(caller: Caller, conversation_id: str, body: NewMessage, digest: str | None) -> Response[Any]:
    gw, tenant = caller.gateway, caller.tenant
    run_id, message_id = gw.make_id(digest, "run"), gw.make_id(digest, "message")
    trace = caller.trace.child(run_id=run_id)
    if body.stream:
        slot = gw.streams.take(tenant)  # 429 quota_exceeded before the turn is started
        try:
            await start_turn(
                gw, tenant, conversation_id, body, trace, run_id=run_id, message_id=message_id, stream=body.stream
            )
            await gw.remember(digest, Stored(status=200, stream_run_id=run_id))
            return await _stream_run(gw, tenant, run_id, slot)
        except BaseException:
            slot.release()
            raise
    with gw.turns.expect(run_id) as turn:
        await start_turn(
            gw, tenant, conversation_id, body, trace, run_id=run_id, message_id=message_id, stream=body.stream
        )
        try:
            event = await asyncio.wait_for(turn, gw.config.reply_timeout_s)
        except TimeoutError:
            raise ApiError(
                ErrorCode.TIMEOUT,
                "no reply in time; the run goes on: follow it at /v1/runs/{run_id}/events",
                {"run_id": run_id},
            ) from None
    if isinstance(event, TurnCompleted):
        reply = TurnReply(run_id=run_id, message=event.message, model=event.model, offline=event.offline)
        stored = Stored(status=200, body=full_json(reply))
    elif isinstance(event, RunWaiting):  # parked before it answered: say so now, not a 504 later
        waiting = TurnWaiting(run_id=run_id, approvals=event.approvals, waits=event.waits)
        stored = Stored(status=202, body=full_json(waiting), headers={"Location": f"/v1/runs/{run_id}"})
    else:
        code = event.error.code
        details = {"run_id": run_id} if code in SCRUBBED else {**event.error.details, "run_id": run_id}
        error_body = error_json(code, SCRUBBED.get(code, event.error.message), details)
        headers = {"Retry-After": retry_after(code, details)} if HTTP_STATUS[code] == 503 else {}
        stored = Stored(status=HTTP_STATUS[code], body=error_body, headers=headers)
    await gw.remember(digest, stored)
    return stored_response(stored)


async def _stream_run(gw: Gateway, tenant: str, run_id: str, slot: StreamSlot | None = None) -> Response[Any] | Stream:
    """SSE of the run, unless its first event says it never started (unknown conversation, rejected)."""
    events = aiter(gw.run_output(tenant, run_id))
    try:  # accepted within the reply timeout, or the conversation actor is not answering
        first: Envelope[Any] = await asyncio.wait_for(anext(events), gw.config.reply_timeout_s)
    except TimeoutError:
        raise ApiError(
            ErrorCode.TIMEOUT,
            "the turn was not accepted in time; follow it at /v1/runs/{run_id}/events",
            {"run_id": run_id},
        ) from None
    if isinstance(first.body, RunFailed) and first.body.error.code in (ErrorCode.NOT_FOUND, ErrorCode.CONFLICT):
        await events.aclose()  # type: ignore[attr-defined]
        error = first.body.error
        raise ApiError(error.code, error.message, {**error.details, "run_id": run_id})
    return sse_response(events, [first], slot=slot or gw.streams.take(tenant))


class ConversationController(Controller):
    path = "/v1/conversations"
    tags = ["conversations"]

    @post("/", status_code=201, summary="Create a conversation")
    async def create(self, caller: Caller, data: JSONBody[NewConversation]) -> Response[Conversation]:
        gw = caller.gateway
        digest = caller.idempotency_digest()
        if (stored := await gw.recall(digest)) is not None:
            return stored_response(stored, replayed=True)
        await caller.check_agent(agent=data.agent)
        cmd = CreateConversation(
            conversation_id=gw.make_id(digest, "conversation"),
            pattern=Pattern(data.pattern),
            agent=data.agent,
            context=data.context,
            policy=data.policy,
            metadata=data.metadata,
        )
        view = await caller.ask(CONVERSATION, "create", cmd, ConversationView)
        stored = Stored(status=201, body=full_json(view.conversation))
        await gw.remember(digest, stored)
        return stored_response(stored)

    @get("/", summary="List the conversations, latest activity first (page with `after`)")
    async def list_conversations(
        self, caller: Caller, pattern: FromQuery[Pattern | None] = None, limit: Limit = 50, after: After = None
    ) -> ConversationPage:
        query = ListConversations(limit=limit, after=keyset(after), pattern=pattern)
        listed = await caller.ask(CONVERSATION, "list", query, ConversationList)
        return ConversationPage(conversations=listed.conversations, next_after=cursor(listed.next_after))

    @get("/{conversation_id:str}", summary="Read a conversation")
    async def read(self, caller: Caller, conversation_id: FromPath[str]) -> Conversation:
        query = GetConversation(conversation_id=ident(conversation_id))
        return (await caller.ask(CONVERSATION, "get", query, ConversationView)).conversation

    @get("/{conversation_id:str}/messages", summary="List a conversation's messages, oldest first")
    async def messages(
        self,
        caller: Caller,
        conversation_id: FromPath[str],
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        before: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> MessagePage:
        query = ListMessages(conversation_id=ident(conversation_id), limit=limit, before=before)
        listed = await caller.ask(CONVERSATION, "messages", query, MessageList)
        return MessagePage(messages=listed.messages)

    @post(
        "/{conversation_id:str}/messages",
        status_code=200,
        summary="Send a message; the reply whole, or streamed (SSE)",
        responses={
            200: ResponseSpec(TurnReply, description="the reply (with `stream`: the run's server-sent events)"),
            202: ResponseSpec(
                TurnWaiting,
                description="without `stream`: the run parked before it answered; it waits for these approvals "
                "or events, and the reply is on its events and stored in the conversation once it completes",
            ),
        },
    )
    async def post_message(
        self, caller: Caller, conversation_id: FromPath[str], data: JSONBody[NewMessage]
    ) -> Response[TurnReply | TurnWaiting] | Stream:
        gw = caller.gateway
        digest = caller.idempotency_digest()
        if (stored := await gw.recall(digest)) is not None:
            if stored.stream_run_id:
                return await _stream_run(gw, caller.tenant, stored.stream_run_id)
            return stored_response(stored, replayed=True)
        return await post_message(caller, ident(conversation_id), data, digest)

    @put("/{conversation_id:str}/context", summary="Replace a sidekick's application state")
    async def context(
        self, caller: Caller, conversation_id: FromPath[str], data: JSONBody[ContextBody]
    ) -> Conversation:
        cmd = SetContext(conversation_id=ident(conversation_id), context=data.context)
        return (await caller.ask(CONVERSATION, "context", cmd, ConversationView)).conversation

    @post(
        "/{conversation_id:str}/continue", status_code=201, summary="Start a new conversation from this one's history"
    )
    async def continue_(self, caller: Caller, conversation_id: FromPath[str]) -> Response[Conversation]:
        gw = caller.gateway
        digest = caller.idempotency_digest()
        if (stored := await gw.recall(digest)) is not None:
            return stored_response(stored, replayed=True)
        cmd = ContinueConversation(
            conversation_id=ident(conversation_id), new_conversation_id=gw.make_id(digest, "conversation")
        )
        view = await caller.ask(CONVERSATION, "continue", cmd, ConversationView)
        stored = Stored(status=201, body=full_json(view.conversation))
        await gw.remember(digest, stored)
        return stored_response(stored)
