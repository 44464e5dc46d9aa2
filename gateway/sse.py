"""Run output as Server-Sent Events: `id:` the stream sequence (resume point), `event:` the type tag."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.response import Stream

from bus.client import Envelope
from bus.codec import encode
from gateway.errors import ApiError
from gateway.streams import StreamSlot
from schemas.errors import ErrorCode

__all__ = ["event_json", "last_event_id", "sse_frame", "sse_response"]

KEEPALIVE_S = 15.0


def event_json(envelope: Envelope[Any]) -> tuple[str, bytes]:
    body = envelope.body
    return type(body).__struct_config__.tag, encode(body)


def sse_frame(envelope: Envelope[Any]) -> bytes:
    tag, data = event_json(envelope)
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (envelope.seq, tag.encode(), data)


Frame = Callable[[Envelope[Any]], bytes]


async def _frames(
    first: list[Envelope[Any]], rest: AsyncIterator[Envelope[Any]], slot: StreamSlot | None, frame: Frame
) -> AsyncIterator[bytes]:
    """Frames of `first` then `rest`, with a comment line every 15 s of silence so proxies keep the stream."""
    try:
        async for chunk in _relayed(first, rest, frame):
            yield chunk
    finally:
        if slot is not None:
            slot.release()


async def _relayed(
    first: list[Envelope[Any]], rest: AsyncIterator[Envelope[Any]], frame: Frame
) -> AsyncIterator[bytes]:
    for head in first:
        yield frame(head)
    queue: asyncio.Queue[Envelope[Any] | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for envelope in rest:
                await queue.put(envelope)
        finally:
            await queue.put(None)

    task = asyncio.create_task(pump())
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if item is None:
                break
            yield frame(item)
        task.result()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def sse_response(
    rest: AsyncIterator[Envelope[Any]],
    first: list[Envelope[Any]] | None = None,
    *,
    slot: StreamSlot | None = None,
    frame: Frame = sse_frame,
) -> Stream:
    """The stream's response; `slot` (the tenant's `streams` quota) is released when it ends, or is dropped unsent.
    `frame` writes one envelope as an SSE message (default: `id:` its sequence, `event:` its body's type tag)."""
    frames = _frames(first or [], rest, slot, frame)
    if slot is not None:
        slot.release_with(frames)
    return Stream(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def last_event_id(connection: ASGIConnection[Any, Any, Any, Any]) -> int | None:
    """The `Last-Event-ID` a reconnecting client sends (an EventSource does it by itself), or None;
    422 `invalid` for one no stream of ours sent (event ids are stream sequences)."""
    last = connection.headers.get("last-event-id", "").strip()
    if not last:
        return None
    if not last.isdigit() or len(last) > 19:
        raise ApiError(ErrorCode.INVALID, "Last-Event-ID must be an event id this stream sent")
    return int(last)
