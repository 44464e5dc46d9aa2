"""A WebSocket per conversation for chat both ways: send `{"message": ...}`, receive the run's events.

Each event arrives as `{"id": <stream seq>, "event": <type>, "data": {...}}`; several turns may be
in flight (the conversation's policy decides what happens to them). The app's guard (gateway/auth.py)
lets the socket in: with `Authorization: Bearer <key>` (a `write` key), or, since browsers cannot set
headers on a WebSocket, with `?token=` from POST /v1/ws-tokens (single use, 60 s). A revoked key's
socket is closed with code 4401 (gateway/revocation.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.params import FromPath

from bus import subjects
from bus.errors import BusError
from gateway.auth import principal_of
from gateway.bodies import NewMessage
from gateway.conversations import start_turn
from gateway.errors import ApiError, close_code, error_json
from gateway.screening import screen_body
from gateway.sse import event_json
from gateway.state import Gateway, gateway_of
from schemas.conversation import ConversationView, GetConversation
from schemas.errors import ErrorCode

__all__ = ["chat_socket"]


def _error(code: ErrorCode, message: str) -> bytes:
    return error_json(code, message)


async def _relay(gw: Gateway, socket: WebSocket[Any, Any, Any], lock: asyncio.Lock, tenant: str, run_id: str) -> None:
    async for envelope in gw.run_output(tenant, run_id):
        tag, data = event_json(envelope)
        frame = b'{"id":%d,"event":"%s","data":%s}' % (envelope.seq, tag.encode(), data)
        async with lock:
            await socket.send_data(frame.decode(), mode="text")


@websocket("/v1/conversations/{conversation_id:str}/ws")
async def chat_socket(socket: WebSocket[Any, Any, Any], conversation_id: FromPath[str]) -> None:
    gw = gateway_of(socket.app.state)
    tenant = principal_of(socket).tenant
    await socket.accept()
    try:
        conversation_id = subjects.token(conversation_id)
        await gw.bus.request(
            subjects.service(subjects.ActorName.CONVERSATION, "get"),
            GetConversation(conversation_id=conversation_id),
            ConversationView,
            trace=gw.trace(tenant),
        )
        slot = gw.streams.take(tenant)  # the tenant's `streams` quota: 4429 when it holds every one
    except (ApiError, BusError) as e:
        await socket.send_data(_error(e.code, e.message).decode(), mode="text")
        await socket.close(code=close_code(e.code), reason=str(e.code))
        return
    except subjects.InvalidToken:
        await socket.close(code=close_code(ErrorCode.NOT_FOUND), reason="not_found")
        return
    lock = asyncio.Lock()
    relays: set[asyncio.Task[None]] = set()
    try:
        while True:
            raw = await socket.receive_data(mode="text")
            try:
                screen_body(raw.encode())
                body = msgspec.json.decode(raw, type=NewMessage)
            except ApiError as e:
                async with lock:
                    await socket.send_data(_error(e.code, e.message).decode(), mode="text")
                continue
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                async with lock:
                    await socket.send_data(
                        _error(ErrorCode.INVALID, f'send {{"message": "..."}}: {e}').decode(), mode="text"
                    )
                continue
            trace = gw.trace(tenant)
            run_id = gw.make_id(None, "run")
            await start_turn(
                gw,
                tenant,
                conversation_id,
                body,
                trace.child(run_id=run_id),
                run_id=run_id,
                message_id=gw.make_id(None, "message"),
                stream=True,
            )
            task = asyncio.create_task(_relay(gw, socket, lock, tenant, run_id))
            relays.add(task)
            task.add_done_callback(relays.discard)
    except WebSocketDisconnect:
        pass
    finally:
        slot.release()
        for task in relays:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*relays, return_exceptions=True)
