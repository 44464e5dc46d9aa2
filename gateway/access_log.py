"""One log line per HTTP request, and its correlation id on every response (`X-Correlation-Id`).

The id is decided once, when the request arrives: the caller's `X-Correlation-Id` when it is 1 to 128
visible ASCII characters, else a new one. It is kept in the request's scope state, where
`Gateway.trace` reads it, so the bus messages a request sends carry the id its response names.

`RequestStamp` (a Litestar middleware, so it runs once a route matched) notes the id and the start
time; the `before_send` hook `finish_response` adds the header and writes the line when the response
starts, so `ms` is the time to the response's headers (for a stream: until it opened). A request no
route takes (an unknown path or method) gets both too, with `route` and `ms` null. No line carries a
body, a query string or an API key. The same hook counts the request in `agentbus_http_requests_total`
and times it in `agentbus_http_request_duration_seconds` (bus/metrics.py), labelled by route template.
A WebSocket gets the header on its accept and a line (`websocket`) when it ends, counted and timed the
same way with method `WEBSOCKET` and its close code as the status; it has no span of its own.
"""

from __future__ import annotations

import re
import time
from typing import Any

import structlog
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from bus import metrics, tracing
from bus.headers import new_id

__all__ = ["RequestStamp", "correlation_id", "finish_response", "note_tenant"]

log = structlog.get_logger("gateway")

HEADER = b"x-correlation-id"
_GIVEN = re.compile(rb"[!-~]{1,128}")  # visible ASCII: safe in a NATS header and a response header
_CORRELATION = "agentbus.correlation_id"  # keys of the scope state
_STARTED = "agentbus.started"
_TENANT = "agentbus.tenant"
_PROPAGATED = (b"traceparent", b"tracestate")  # what a caller may send to continue its own trace
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # any other is `other`


def _decide(headers: Any) -> str:
    for name, value in headers:
        if name == HEADER:
            return value.decode("ascii") if _GIVEN.fullmatch(value) else new_id()
    return new_id()


class RequestStamp(ASGIMiddleware):
    """Notes, in the scope state, the request's correlation id and when it arrived."""

    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        state = scope["state"]
        state[_STARTED] = time.perf_counter()
        state[_CORRELATION] = _decide(scope["headers"])
        if scope["type"] == ScopeType.WEBSOCKET:
            await _socket(scope, receive, send, next_app)
            return
        if not tracing.enabled():
            await next_app(scope, receive, send)
            return
        carrier = {name.decode(): value.decode("latin-1") for name, value in scope["headers"] if name in _PROPAGATED}
        method, route = scope.get("method", ""), scope.get("path_template") or ""
        attributes = {"http.request.method": method, "http.route": route}
        with tracing.served(f"{method} {route}", carrier, attributes):
            await next_app(scope, receive, send)


async def finish_response(message: Message, scope: Scope) -> None:
    """Litestar `before_send`: on an HTTP response's start, the correlation header and the log line."""
    if message["type"] != "http.response.start":
        return
    state = scope["state"]
    correlation = state.get(_CORRELATION)
    if correlation is None:  # no route took the request: RequestStamp never ran
        correlation = state[_CORRELATION] = _decide(scope["headers"])
    started = state.get(_STARTED)
    headers = message.get("headers")
    if not isinstance(headers, list):
        headers = message["headers"] = list(headers or ())
    headers.append((HEADER, correlation.encode()))
    method, route, status = scope.get("method"), scope.get("path_template"), message["status"]
    seconds = None if started is None else time.perf_counter() - started
    # the route's template (never the raw path): a bounded label; a request no route took is `unmatched`
    labels = (method if method in _METHODS else "other", route or "unmatched", str(status))
    metrics.HTTP_REQUESTS.labels(*labels).inc()
    if seconds is not None:
        metrics.HTTP_SECONDS.labels(*labels).observe(seconds)
    if tracing.enabled():
        tracing.responded(status, tenant=state.get(_TENANT))
    log.info(
        "request",
        method=method,
        route=route,
        status=status,
        ms=None if seconds is None else round(seconds * 1000, 2),
        tenant=state.get(_TENANT),
        correlation_id=correlation,
    )


async def _socket(scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
    """A WebSocket: the correlation header on its accept, and one log line and count when it ends, with its
    close code as the status (1006: gone without a close) and `ms` the time to its accept (or to its refusal);
    `open_s` is how long it was open."""
    state = scope["state"]
    accepted: float | None = None
    code: int | None = None

    async def sending(message: Message) -> None:
        nonlocal accepted, code
        if message["type"] == "websocket.accept":
            accepted = time.perf_counter()
            message["headers"] = [*message.get("headers", ()), (HEADER, state[_CORRELATION].encode())]
        elif message["type"] == "websocket.close" and code is None:
            code = int(message.get("code", 1000))
        await send(message)

    async def receiving() -> ReceiveMessage:
        nonlocal code
        message = await receive()
        if message["type"] == "websocket.disconnect" and code is None:
            code = int(message.get("code", 1005))
        return message

    try:
        await next_app(scope, receiving, sending)
    finally:
        ended = time.perf_counter()
        route = scope.get("path_template") or "unmatched"
        status = str(code if code is not None else 1006)
        seconds = (accepted or ended) - state[_STARTED]
        metrics.HTTP_REQUESTS.labels("WEBSOCKET", route, status).inc()
        metrics.HTTP_SECONDS.labels("WEBSOCKET", route, status).observe(seconds)
        log.info(
            "websocket",
            route=route,
            status=int(status),
            ms=round(seconds * 1000, 2),
            open_s=None if accepted is None else round(ended - accepted, 3),
            tenant=state.get(_TENANT),
            correlation_id=state[_CORRELATION],
        )


def correlation_id(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The request's correlation id (decided by RequestStamp; here, for a request it did not see)."""
    state = connection.scope["state"]
    correlation: str | None = state.get(_CORRELATION)
    if correlation is None:
        correlation = state[_CORRELATION] = _decide(connection.scope["headers"])
    return correlation


def note_tenant(connection: ASGIConnection[Any, Any, Any, Any], tenant: str) -> None:
    """Name the tenant in the request's log line."""
    connection.scope["state"][_TENANT] = tenant
