"""GET /v1/events (SSE) and /v1/events/ws (WebSocket): the tenant's task, task-run, run, research and delivery
events and its in-app notifications, in one order, with one cursor.

The actors publish their events to their own streams (AB_EXECUTOR_EVT, AB_SCHEDULER_EVT, AB_RESEARCH_EVT,
AB_NOTIFIER_EVT). Stream AB_EVENTS (bus/streams.py `EVENTS`) *sources* those four: nats-server copies each
message into it as it is stored, keeping its subject and headers, so one stream sequence orders every event
and is the feed's cursor (`id:`, `Last-Event-ID`, `?after=`). Work queues are not sourced, nor the
conversation's turn events (a turn's answer is its run's `executor.finished`). A reader is an ordered
ephemeral consumer on AB_EVENTS filtered to the caller tenant's subjects (ab.<actor>.evt.<tenant>.>), or,
with `?types=`, to one subject filter per type (`executor.finished`, `research.*`).

Without a cursor the feed starts after the stream's last message at the time of the request (events sourced
a moment later still arrive). Silence is broken by an SSE comment every 15 s (gateway/sse.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import structlog
from litestar import Request, WebSocket, get, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.params import QueryParameter
from litestar.response import Stream
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from bus import subjects
from bus.client import TRANSIENT, Envelope
from bus.errors import BusError
from bus.headers import Header, Trace
from bus.keys import Scope
from bus.streams import EVENTS
from gateway.auth import principal_of
from gateway.caller import Caller
from gateway.errors import ApiError, close_code, error_json
from gateway.sse import last_event_id, sse_response
from gateway.state import Gateway, gateway_of
from schemas.errors import ErrorCode
from schemas.events import Event

__all__ = ["EVENT_ACTORS", "event_feed", "event_socket", "read_events"]

log = structlog.get_logger("gateway")
# the actors whose event streams AB_EVENTS sources (what `?types=` may name before the dot)
EVENT_ACTORS = frozenset(
    {
        subjects.ActorName.EXECUTOR.value,
        subjects.ActorName.SCHEDULER.value,
        subjects.ActorName.RESEARCH.value,
        subjects.ActorName.NOTIFIER.value,
    }
)
MAX_TYPES = 32
CURSOR = Annotated[int | None, QueryParameter(ge=0, le=2**63 - 1, description="resume after this event id")]
TYPES = Annotated[
    str | None,
    QueryParameter(
        max_length=2000,
        description="only these types, comma-separated: `<actor>.<kind>`, `*` for any actor or kind "
        "(`executor.finished,research.*`)",
    ),
]


def _invalid(key: str, message: str) -> ApiError:
    return ApiError(ErrorCode.INVALID, f"{key}: {message}", {"errors": [{"key": key, "message": message}]})


def type_filters(tenant: str, types: str | None) -> list[str]:
    """The subject filters of the tenant's feed: every event, or those of the types asked for."""
    if types is None or not types.strip():
        return [subjects.tenant_events(tenant)]
    filters: list[str] = []
    for wanted in (t.strip() for t in types.split(",")):
        area, dot, kind = wanted.partition(".")
        if not dot or (area != "*" and area not in EVENT_ACTORS):
            raise _invalid("types", f"{wanted[:80]!r} is not <actor>.<kind> with actor one of {sorted(EVENT_ACTORS)}")
        try:
            pattern = subjects.tenant_event_kinds(tenant, area, kind)
        except subjects.InvalidToken:
            raise _invalid("types", f"{wanted[:80]!r}: the kind is a word or `*`") from None
        if pattern not in filters:
            filters.append(pattern)
    if len(filters) > MAX_TYPES:
        raise _invalid("types", f"at most {MAX_TYPES} types")
    return filters


def _cursor(connection: Request[Any, Any, Any] | WebSocket[Any, Any, Any], after: int | None) -> int | None:
    """Last-Event-ID (what a browser's EventSource sends when it reconnects) over `?after=`."""
    last = last_event_id(connection)
    return after if last is None else last


async def _tail(gw: Gateway) -> int:
    """The feed's last id now: where a feed without a cursor starts after."""
    try:
        info = await gw.bus.js.stream_info(EVENTS.name)
    except TRANSIENT as e:
        raise BusError(ErrorCode.UNAVAILABLE, "JetStream did not answer: try again later") from e
    return info.state.last_seq


def _event(msg: Msg, tenant: str) -> Event | None:
    parsed = subjects.parse_event(msg.subject)
    if parsed is None or parsed.tenant != tenant:  # the filter keeps others out; this keeps it so
        return None
    try:
        data = msgspec.json.decode(msg.data)
    except msgspec.DecodeError:
        log.warning("undecodable event skipped", subject=msg.subject)
        return None
    sent = (msg.headers or {}).get(Header.SENT_AT.value, "")
    published = datetime.fromtimestamp(int(sent) / 1e9, UTC) if sent.isdigit() else msg.metadata.timestamp
    return Event(
        id=msg.metadata.sequence.stream,
        type=f"{parsed.area}.{parsed.kind}",
        subject=msg.subject,
        entity_id=parsed.entity_id,
        published_at=published,
        data=data,
    )


async def event_feed(gw: Gateway, tenant: str, filters: list[str], *, after: int) -> AsyncGenerator[Envelope[Event]]:
    """The tenant's events after `after` matching `filters`, then the live tail (an ordered consumer:
    gap-free and in order, recreated by nats-py if it stalls)."""
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after else DeliverPolicy.ALL,
        opt_start_seq=after + 1 if after else None,
        inactive_threshold=30.0,
        filter_subjects=filters if len(filters) > 1 else None,
    )
    sub = await gw.bus.js.subscribe(
        filters[0], stream=EVENTS.name, ordered_consumer=True, config=config, idle_heartbeat=5.0
    )
    try:
        while True:
            msg = await sub.next_msg(timeout=None)
            event = _event(msg, tenant)
            if event is not None:
                yield Envelope(seq=event.id, subject=msg.subject, trace=Trace.from_headers(msg.headers), body=event)
    finally:
        with contextlib.suppress(Exception):  # a closing connection; the ephemeral consumer expires anyway
            await sub.unsubscribe()


def _sse_frame(envelope: Envelope[Event]) -> bytes:
    event = envelope.body
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.id, event.type.encode(), msgspec.json.encode(event))


@get(
    "/v1/events",
    media_type="text/event-stream",
    tags=["events"],
    summary="The tenant's task, run, research and delivery events and in-app notifications as server-sent events, "
    "in one order; Last-Event-ID or `after` resumes after an event, else it starts now",
)
async def read_events(
    request: Request[Any, Any, Any], caller: Caller, after: CURSOR = None, types: TYPES = None
) -> Stream:
    gw, tenant = caller.gateway, caller.tenant
    filters = type_filters(tenant, types)
    start = _cursor(request, after)
    if start is None:
        start = await _tail(gw)
    slot = gw.streams.take(tenant)
    return sse_response(event_feed(gw, tenant, filters, after=start), slot=slot, frame=_sse_frame)


async def _until_closed(socket: WebSocket[Any, Any, Any]) -> None:
    """Read (and ignore) what the client sends, until it goes."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await socket.receive_data(mode="text")


@websocket("/v1/events/ws", opt={"scope": Scope.READ.value})
async def event_socket(socket: WebSocket[Any, Any, Any], after: CURSOR = None, types: TYPES = None) -> None:
    """The same events as GET /v1/events, one JSON text frame each; `Last-Event-ID` or `?after=` resumes.
    Bearer header, or `?token=` from POST /v1/ws-tokens."""
    gw = gateway_of(socket.app.state)
    tenant = principal_of(socket).tenant
    await socket.accept()
    try:
        filters = type_filters(tenant, types)
        start = _cursor(socket, after)
        if start is None:
            start = await _tail(gw)
        slot = gw.streams.take(tenant)
    except (ApiError, BusError) as e:
        await socket.send_data(error_json(e.code, e.message, e.details).decode(), mode="text")
        await socket.close(code=close_code(e.code), reason=str(e.code))
        return
    closed = asyncio.create_task(_until_closed(socket))
    feed = event_feed(gw, tenant, filters, after=start)
    try:
        while not closed.done():
            nxt = asyncio.ensure_future(anext(feed))
            await asyncio.wait({nxt, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await nxt
                break
            await socket.send_data(msgspec.json.encode(nxt.result().body).decode(), mode="text")
    finally:
        slot.release()
        closed.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await closed
        await feed.aclose()
