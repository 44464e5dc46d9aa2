"""Open streams of a key close when the key is revoked or expires: every SSE response and WebSocket, by
default, so a stream route added tomorrow needs nothing of its own.

`CloseOnRevoke` (a Litestar middleware) sees a response start as a stream (`text/event-stream`) or a
WebSocket accepted, and registers with the key watch (gateway/auth.py). When the key goes, the request's
task is cancelled; the stream ends with an `error` event (`unauthorized`), the WebSocket with close
code 4401. A plain request that is already running is left to finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import PRINCIPAL, Principal
from gateway.errors import close_code, error_json
from schemas.errors import ErrorCode

__all__ = ["REVOKED_MESSAGE", "CloseOnRevoke"]

REVOKED_MESSAGE = "the API key was revoked or has expired"


def _is_stream(message: Message) -> bool:
    headers: Any = message.get("headers") or ()
    return any(name == b"content-type" and value.startswith(b"text/event-stream") for name, value in headers)


class CloseOnRevoke(ASGIMiddleware):
    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = {"revoked": False, "open": False, "finished": False}
        forget: Callable[[], None] | None = None

        def close() -> None:
            if state["open"] and not state["finished"] and not state["revoked"]:
                state["revoked"] = True
                task.cancel()

        def follow() -> Callable[[], None] | None:
            principal: Principal | None = scope["state"].get(PRINCIPAL)
            if principal is None or not principal.digest:
                return None
            state["open"] = True
            return scope["app"].state.gateway.keys.on_revoke(principal.digest, close)  # type: ignore[no-any-return]

        async def watching_send(message: Message) -> None:
            nonlocal forget
            kind = message["type"]
            if (kind == "http.response.start" and _is_stream(message)) or kind == "websocket.accept":
                forget = follow()
            elif (kind == "http.response.body" and not message.get("more_body")) or kind == "websocket.close":
                state["finished"] = True
            await send(message)

        try:
            await next_app(scope, receive, watching_send)
            if state["revoked"]:  # revoked as it finished: take the cancel here, not in the server's code
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    task.uncancel()
        except asyncio.CancelledError:
            if not state["revoked"] or task.cancelling() > 1:
                raise
            task.uncancel()
            if not state["finished"]:
                await _end(scope, send)
        finally:
            if forget is not None:
                forget()


async def _end(scope: Scope, send: Send) -> None:
    if scope["type"] == ScopeType.WEBSOCKET:
        text = error_json(ErrorCode.UNAUTHORIZED, REVOKED_MESSAGE).decode()
        await send({"type": "websocket.send", "text": text, "bytes": None})
        await send({"type": "websocket.close", "code": close_code(ErrorCode.UNAUTHORIZED), "reason": "unauthorized"})
        return
    frame = b"event: error\ndata: %s\n\n" % error_json(ErrorCode.UNAUTHORIZED, REVOKED_MESSAGE)
    await send({"type": "http.response.body", "body": frame, "more_body": False})
