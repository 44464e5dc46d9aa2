"""A continuous pull on a durable consumer: each message is handed over the moment it arrives.

nats-py has only `fetch(batch)`, which after an empty fetch sends a long pull for the whole batch
and then holds the first message that arrives until the batch fills or the pull expires (seconds:
the stalls of issue 9). This keeps pull requests outstanding for as many messages as the caller
has room for and yields them one by one, like nats.go's `Consume`: the server's status messages
tell it how much of a request is left (408 expired, 409 lost), idle heartbeats tell it the
requests are still alive, and a missed heartbeat (a reconnect, a leader change) re-pulls.
"""

from __future__ import annotations

import contextlib

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError

from bus import subjects

__all__ = ["Pull"]

_STATUS = "Status"
_PENDING = "Nats-Pending-Messages"
_HEARTBEAT = "100"
_NS = 1_000_000_000


class _PullRequest(msgspec.Struct, omit_defaults=True):
    batch: int
    expires: int
    idle_heartbeat: int


class Pull:
    """Outstanding pull requests for at most `room()` messages on one durable consumer."""

    def __init__(
        self, nc: NatsClient, *, stream: str, durable: str, expires_s: float = 30.0, heartbeat_s: float = 2.0
    ) -> None:
        self._nc = nc
        self._next = subjects.consumer_next(stream, durable)
        self._expires_ns = int(expires_s * _NS)
        self._heartbeat_s = heartbeat_s
        self._sub: Subscription | None = None
        self._inbox = ""
        self._credit = 0  # messages asked for that have not arrived, expired or been lost

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def next(self, room: int) -> Msg | None:
        """The next message, once there is `room` for at least one; None when the pull went quiet
        (call again: it re-pulls). `room` is how many more messages the caller can take now."""
        sub = self._sub
        if sub is None:  # stopped
            return None
        await self._top_up(room)
        try:
            msg = await sub.next_msg(timeout=self._heartbeat_s * 2.5)
        except (TimeoutError, NatsTimeoutError):
            self._credit = 0  # no message and no heartbeat: the server has forgotten our requests
            return None
        status = (msg.headers or {}).get(_STATUS)
        if status is None:
            self._credit = max(self._credit - 1, 0)
            return msg
        if status == _HEARTBEAT:
            return None
        # 408 (a request expired) and 409 (max waiting, leadership change, consumer deleted, ...)
        # end a request; the headers say how many of its messages it still owed.
        pending = (msg.headers or {}).get(_PENDING)
        self._credit = max(self._credit - int(pending), 0) if pending is not None else 0
        return None

    async def _top_up(self, room: int) -> None:
        want = room - self._credit
        # Ask again when half the room has come free (or nothing is asked for): few, large requests.
        if want <= 0 or (self._credit > 0 and want < max(room // 2, 1)):
            return
        request = _PullRequest(batch=want, expires=self._expires_ns, idle_heartbeat=int(self._heartbeat_s * _NS))
        await self._nc.publish(self._next, msgspec.json.encode(request), reply=self._inbox)
        self._credit += want
