"""/v1/notifications: the tenant's in-app notifications, listed (oldest first) or followed live (SSE).

The notifier publishes each `in_app` delivery as an `InAppNotification` on
ab.notifier.evt.<tenant>.<delivery_id>.in_app (stream AB_NOTIFIER_EVT, kept AGENTBUS_EVENT_MAX_AGE);
these routes read that stream, on the subjects of the key's tenant only. A notification's id is its
stream sequence: the SSE `id:`, what `Last-Event-ID` resumes after, and the list's `after` cursor.
Without one, both start at `since` (default: the last DEFAULT_WINDOW).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Controller, Request, get
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from bus import subjects
from bus.client import TRANSIENT
from bus.codec import decode
from bus.errors import BusError
from bus.streams import NOTIFIER_EVT
from gateway.caller import Caller
from gateway.sse import last_event_id, sse_response
from gateway.state import Gateway
from schemas.errors import ErrorCode
from schemas.notifier import InAppNotification

__all__ = ["DEFAULT_WINDOW", "Notification", "NotificationController", "NotificationPage"]

T = TypeVar("T")
DEFAULT_WINDOW = timedelta(hours=24)
FETCH_TIMEOUT_S = 3.0


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    id: int  # the stream sequence: pass it as `after` (or Last-Event-ID) to read what came later
    published_at: datetime
    delivery_id: str
    task_run_id: str  # the task run, or the research job, whose result this is
    task_id: str | None
    title: str
    body: str
    payload: dict[str, object]


class NotificationPage(msgspec.Struct, frozen=True, kw_only=True):
    notifications: list[Notification]
    next_after: int | None  # more are stored after this page: pass it as `after`


async def _consumer(gw: Gateway, tenant: str, *, after: int | None, since: datetime | None) -> ConsumerInfo:
    """An ephemeral consumer of the tenant's in-app notifications after `after` (or from `since`): its
    `num_pending` is how many are stored, its `delivered.stream_seq` the sequence it starts after."""
    config = ConsumerConfig(
        filter_subject=subjects.notifier_in_app(tenant),
        ack_policy=AckPolicy.NONE,
        inactive_threshold=10.0,  # deleted at the end of the request; this only backs that up
    )
    if after is not None:
        config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, after + 1
    else:
        start = since or datetime.now(UTC) - DEFAULT_WINDOW
        config.deliver_policy = DeliverPolicy.BY_START_TIME
        config.opt_start_time = start if start.tzinfo is not None else start.replace(tzinfo=UTC)
    return await _unavailable_on_failover(gw.bus.js.add_consumer(NOTIFIER_EVT.name, config))


async def _unavailable_on_failover(call: Awaitable[T]) -> T:
    try:
        return await call
    except TRANSIENT as e:
        raise BusError(ErrorCode.UNAVAILABLE, "JetStream did not answer: try again later") from e


async def _dropped(gw: Gateway, info: ConsumerInfo) -> None:
    with contextlib.suppress(Exception):  # it expires anyway once unused
        await gw.bus.js.delete_consumer(NOTIFIER_EVT.name, info.name)


async def _page(gw: Gateway, info: ConsumerInfo, limit: int) -> NotificationPage:
    wanted = min(limit, info.num_pending or 0)
    if not wanted:
        return NotificationPage(notifications=[], next_after=None)
    sub = await gw.bus.js.pull_subscribe_bind(info.name, stream=NOTIFIER_EVT.name)
    try:
        msgs = await _unavailable_on_failover(sub.fetch(wanted, timeout=FETCH_TIMEOUT_S))
    finally:
        await sub.unsubscribe()
    page = []
    for msg in msgs:
        try:
            n = decode(msg.data, InAppNotification)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # not one the notifier wrote: Bus.replay skips it too
        page.append(
            Notification(
                id=msg.metadata.sequence.stream,
                published_at=msg.metadata.timestamp,
                delivery_id=n.delivery_id,
                task_run_id=n.task_run_id,
                task_id=n.task_id,
                title=n.title,
                body=n.body,
                payload=n.payload,
            )
        )
    more = bool(msgs) and msgs[-1].metadata.num_pending > 0
    return NotificationPage(notifications=page, next_after=msgs[-1].metadata.sequence.stream if more else None)


class NotificationController(Controller):
    path = "/v1/notifications"
    tags = ["notifications"]

    @get("/", summary="The tenant's in-app notifications, oldest first (from `after`, or `since`: default 24 h ago)")
    async def list_notifications(
        self,
        caller: Caller,
        since: FromQuery[datetime | None] = None,
        after: Annotated[int | None, QueryParameter(ge=0, le=2**63 - 1)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    ) -> NotificationPage:
        gw = caller.gateway
        info = await _consumer(gw, caller.tenant, after=after, since=since)
        try:
            return await _page(gw, info, limit)
        finally:
            await _dropped(gw, info)

    @get(
        "/events",
        media_type="text/event-stream",
        summary="The tenant's in-app notifications as server-sent events (from `since`, default 24 h ago), "
        "then live; Last-Event-ID resumes after it",
    )
    async def events(
        self, request: Request[Any, Any, Any], caller: Caller, since: FromQuery[datetime | None] = None
    ) -> Stream:
        gw, tenant = caller.gateway, caller.tenant
        after = last_event_id(request)
        if after is None:
            info = await _consumer(gw, tenant, after=None, since=since)
            await _dropped(gw, info)
            after = info.delivered.stream_seq if info.delivered is not None else 0
        events = gw.bus.replay(NOTIFIER_EVT.name, subjects.notifier_in_app(tenant), InAppNotification, after_seq=after)
        return sse_response(events, slot=gw.streams.take(tenant))
