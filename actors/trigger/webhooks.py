"""Signed webhooks (Standard Webhooks) that fire their task.

`ingest` checks, in one transaction holding the trigger's row: the task has an enabled webhook
trigger (else not_found), one `v1` signature is valid (unauthorized), the timestamp is within
± tolerance (unauthorized), the body is a JSON object (invalid), the `webhook-id` was not
accepted before for this task (conflict); it records the receipt, publishes FireTask (firing id
from task + webhook id, `Nats-Msg-Id` = firing id) and only then commits. A failed publish rolls
the receipt back, so the sender's retry goes through; a commit lost after a publish means the
retry publishes again under the same firing id, which JetStream (duplicate window) and the
scheduler (unique firing id) both drop. A webhook over its trigger's limit is refused with
`unavailable`, so its sender retries (an event over the limit is dropped instead).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import structlog

from actors.trigger import store
from actors.trigger.config import TriggerActorConfig
from actors.trigger.firings import Admission, Firings
from actors.trigger.patterns import matches, webhook_firing_id
from actors.trigger.signatures import verify
from actors.trigger.store import TriggerRow
from bus.errors import BusError
from bus.headers import Trace
from schemas._base import Message
from schemas.errors import ErrorCode
from schemas.tasks import FiredBy, IngestWebhook, WebhookAccepted

__all__ = ["Webhooks"]

MAX_WEBHOOK_ID = 256
_UNIX_TIME = re.compile(r"^[0-9]{1,12}$")
log = structlog.get_logger("trigger")


class Webhooks:
    def __init__(
        self,
        pool: asyncpg.Pool,
        firings: Firings,
        config: TriggerActorConfig,
        received: Callable[[str, str, dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        self.pool = pool
        self.firings = firings
        self.config = config
        self.received = received  # (task id, tenant, event) of each webhook let in: the runs waiting on it

    async def ingest(self, hook: IngestWebhook, trace: Trace) -> Message:
        # The webhook URL names only the task (task ids are unique across tenants) and carries no
        # API key: the trigger's row says whose task it is, and its secret is the authentication.
        admitted: Admission | None = None
        firing_id = webhook_firing_id(hook.task_id, hook.webhook_id)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await store.get(conn, hook.task_id, lock=True)
            if row is None or not row.enabled or not row.is_webhook or row.secret is None:
                raise BusError(ErrorCode.NOT_FOUND, f"no webhook for task {hook.task_id}")
            event, sent = self._checked(self.config.secrets.open(row.secret), hook)
            if not await store.record_receipt(conn, hook.task_id, hook.webhook_id):
                raise BusError(ErrorCode.CONFLICT, f"webhook-id {hook.webhook_id} was already received")
            if matches(event, row.config.filter):  # else: received (not sent again), starts nothing
                admitted = await self.firings.admit(
                    conn, row, firing_id=firing_id, fired_by=FiredBy.WEBHOOK, event=event,
                    trace=trace.child(tenant=row.tenant), ordinal=sent,
                )  # fmt: skip
                if admitted is Admission.LIMITED:
                    raise _over_limit(row)
        if admitted is Admission.DEFERRED:
            self.firings.wake()
        if self.received is not None:
            await self.received(hook.task_id, row.tenant, event)
        return WebhookAccepted(task_id=hook.task_id, firing_id=firing_id)

    def _checked(self, secret: str, hook: IngestWebhook) -> tuple[dict[str, Any], int]:
        """The webhook's body as a JSON object and its send time, once its signature, timestamp and id pass."""
        body = hook.body.encode()
        if not verify(secret, hook.webhook_id, hook.webhook_timestamp, body, hook.webhook_signature):
            raise BusError(ErrorCode.UNAUTHORIZED, "no valid webhook-signature for this task's secret")
        sent = self._check_timestamp(hook.webhook_timestamp)
        if len(hook.webhook_id) > MAX_WEBHOOK_ID:
            raise BusError(ErrorCode.INVALID, f"webhook-id is longer than {MAX_WEBHOOK_ID} characters")
        try:
            event = msgspec.json.decode(body)
        except msgspec.DecodeError:
            event = None
        if not isinstance(event, dict):
            raise BusError(ErrorCode.INVALID, "the webhook body must be a JSON object")
        return event, sent

    def _check_timestamp(self, text: str) -> int:
        if not _UNIX_TIME.match(text):
            raise BusError(ErrorCode.UNAUTHORIZED, "webhook-timestamp is not a Unix time in seconds")
        sent = int(text)
        skew = time.time() - sent
        tolerance = self.config.tolerance_s
        if skew > tolerance:
            raise BusError(
                ErrorCode.UNAUTHORIZED,
                f"webhook-timestamp is {int(skew)} s old; at most {int(tolerance)} s are allowed (replay protection)",
            )
        if skew < -tolerance:
            raise BusError(
                ErrorCode.UNAUTHORIZED,
                f"webhook-timestamp is {int(-skew)} s in the future; at most {int(tolerance)} s are allowed",
            )
        return sent


def _over_limit(row: TriggerRow) -> BusError:
    log.info("webhook refused: trigger over its limit", task_id=row.task_id)
    return BusError(
        ErrorCode.UNAVAILABLE,
        f"task {row.task_id} is over its limit of {row.config.max_runs_per_minute} runs per minute;"
        " send it again later",
    )
