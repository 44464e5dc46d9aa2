"""/v1/conversations: create, read, post a message (answered whole or streamed), context, continue."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post, put
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream

from bus import subjects
from bus.client import Envelope
from bus.headers import Trace
from gateway.auth import Tenant
from gateway.bodies import ContextBody, NewConversation, NewMessage, TurnReply
from gateway.errors import HTTP_STATUS, ApiError
from gateway.sse import sse_response
from gateway.state import Gateway, Stored, gateway_of, ident
from gateway.views import full_json
from schemas.conversation import (
    ContinueConversation,
    ConversationView,
    CreateConversation,
    GetConversation,
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


def _json(status: int, body: bytes) -> Response[bytes]:
    return Response(body, status_code=status, media_type="application/json")


def _replayed(stored: Stored) -> Response[bytes]:
    response = _json(stored.status, stored.body)
    response.headers["Idempotent-Replayed"] = "true"
    return response


async def _query(gw: Gateway, verb: str, message: Any, reply: type[Any], trace: Trace) -> Any:
    return await gw.ask(CONVERSATION, verb, message, reply, trace)


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


async def post_message(
    gw: Gateway, tenant: str, conversation_id: str, body: NewMessage, trace: Trace, digest: str | None
) -> Response[Any]:
    run_id, message_id = gw.make_id(digest, "run"), gw.make_id(digest, "message")
    trace = trace.child(run_id=run_id)
    if body.stream:
        await start_turn(
            gw, tenant, conversation_id, body, trace, run_id=run_id, message_id=message_id, stream=body.stream
        )
        await gw.remember(digest, Stored(status=200, stream_run_id=run_id))
        return await _stream_run(gw, tenant, run_id)
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
    else:
        code = event.error.code
        details = {"run_id": run_id} if code in SCRUBBED else {**event.error.details, "run_id": run_id}
        error = {"code": code, "message": SCRUBBED.get(code, event.error.message), "details": details}
        stored = Stored(status=HTTP_STATUS[event.error.code], body=msgspec.json.encode({"error": error}))
    await gw.remember(digest, stored)
    return _json(stored.status, stored.body)


async def _stream_run(gw: Gateway, tenant: str, run_id: str) -> Response[Any] | Stream:
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
    return sse_response(events, [first])


class ConversationController(Controller):
    path = "/v1/conversations"
    tags = ["conversations"]

    @post("/", status_code=201, summary="Create a conversation")
    async def create(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, data: JSONBody[NewConversation]
    ) -> Response[Any]:
        gw = gateway_of(state)
        digest = gw.idempotency_digest(request, tenant)
        if (stored := await gw.recall(digest)) is not None:
            return _replayed(stored)
        trace = gw.trace(tenant, request)
        await gw.agents.check(trace, agent=data.agent)
        cmd = CreateConversation(
            conversation_id=gw.make_id(digest, "conversation"),
            pattern=Pattern(data.pattern),
            agent=data.agent,
            context=data.context,
            policy=data.policy,
            metadata=data.metadata,
        )
        view: ConversationView = await _query(gw, "create", cmd, ConversationView, trace)
        stored = Stored(status=201, body=full_json(view.conversation))
        await gw.remember(digest, stored)
        return _json(201, stored.body)

    @get("/{conversation_id:str}", summary="Read a conversation")
    async def read(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, conversation_id: FromPath[str]
    ) -> Response[Any]:
        gw = gateway_of(state)
        query = GetConversation(conversation_id=ident(conversation_id))
        view: ConversationView = await _query(gw, "get", query, ConversationView, gw.trace(tenant, request))
        return _json(200, full_json(view.conversation))

    @get("/{conversation_id:str}/messages", summary="List a conversation's messages, oldest first")
    async def messages(
        self,
        request: Request[Any, Any, Any],
        state: State,
        tenant: Tenant,
        conversation_id: FromPath[str],
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        before: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> Response[Any]:
        gw = gateway_of(state)
        query = ListMessages(conversation_id=ident(conversation_id), limit=limit, before=before)
        listed: MessageList = await _query(gw, "messages", query, MessageList, gw.trace(tenant, request))
        return _json(200, full_json({"messages": listed.messages}))

    @post(
        "/{conversation_id:str}/messages", status_code=200, summary="Send a message; the reply whole, or streamed (SSE)"
    )
    async def post_message(
        self,
        request: Request[Any, Any, Any],
        state: State,
        tenant: Tenant,
        conversation_id: FromPath[str],
        data: JSONBody[NewMessage],
    ) -> Response[Any] | Stream:
        gw = gateway_of(state)
        digest = gw.idempotency_digest(request, tenant)
        if (stored := await gw.recall(digest)) is not None:
            return await _stream_run(gw, tenant, stored.stream_run_id) if stored.stream_run_id else _replayed(stored)
        return await post_message(gw, tenant, ident(conversation_id), data, gw.trace(tenant, request), digest)

    @put("/{conversation_id:str}/context", summary="Replace a sidekick's application state")
    async def context(
        self,
        request: Request[Any, Any, Any],
        state: State,
        tenant: Tenant,
        conversation_id: FromPath[str],
        data: JSONBody[ContextBody],
    ) -> Response[Any]:
        gw = gateway_of(state)
        cmd = SetContext(conversation_id=ident(conversation_id), context=data.context)
        view: ConversationView = await _query(gw, "context", cmd, ConversationView, gw.trace(tenant, request))
        return _json(200, full_json(view.conversation))

    @post(
        "/{conversation_id:str}/continue", status_code=201, summary="Start a new conversation from this one's history"
    )
    async def continue_(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, conversation_id: FromPath[str]
    ) -> Response[Any]:
        gw = gateway_of(state)
        digest = gw.idempotency_digest(request, tenant)
        if (stored := await gw.recall(digest)) is not None:
            return _replayed(stored)
        cmd = ContinueConversation(
            conversation_id=ident(conversation_id), new_conversation_id=gw.make_id(digest, "conversation")
        )
        view: ConversationView = await _query(gw, "continue", cmd, ConversationView, gw.trace(tenant, request))
        stored = Stored(status=201, body=full_json(view.conversation))
        await gw.remember(digest, stored)
        return _json(201, stored.body)
