"""The audit log on JetStream (stream AB_AUDIT, `ab.audit.<tenant>.<action>`): written by the gateway and the
`agentbus` command, read a page at a time per tenant.

A stream rather than a table: the gateway already holds a NATS connection and no database, a tenant's
events are one subject filter away, and the stream's sequence is a stable cursor for paging.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import msgspec
from nats.js.api import ConsumerConfig, DeliverPolicy

from bus import subjects
from bus.client import Bus
from bus.codec import decode_union
from bus.headers import Trace
from bus.streams import AUDIT
from schemas.audit import AuditEvent

__all__ = ["MAX_PAGE", "Page", "read", "record"]

MAX_PAGE = 500


class Page(msgspec.Struct, frozen=True, kw_only=True):
    events: list[tuple[int, AuditEvent]]  # (stream sequence, event), oldest first
    more: bool  # events after the last one exist


async def record(bus: Bus, event: AuditEvent, *, trace: Trace | None = None) -> None:
    await bus.publish(
        subjects.audit(event.tenant, event.action.value), event, trace=trace or Trace(tenant=event.tenant)
    )


async def read(bus: Bus, tenant: str, *, after_seq: int = 0, since: float | None = None, limit: int = 100) -> Page:
    """`tenant`'s events after stream sequence `after_seq` (and at or after `since`), at most `limit`."""
    limit = max(1, min(limit, MAX_PAGE))
    if after_seq:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1)
    elif since is not None:
        start = datetime.fromtimestamp(since, UTC)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start)
    else:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    config.inactive_threshold = 30.0
    config.mem_storage = True
    sub = await bus.js.pull_subscribe(subjects.audit_of(tenant), stream=AUDIT.name, config=config)
    try:
        pending = (await sub.consumer_info()).num_pending
        if not pending:
            return Page(events=[], more=False)
        want = min(limit, pending)
        events: list[tuple[int, AuditEvent]] = []
        received = 0
        while received < want:
            batch = await sub.fetch(want - received, timeout=bus.config.request_timeout_s)
            received += len(batch)
            for msg in batch:
                with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                    event = decode_union(msg.data, AuditEvent)
                    if since is None or event.at >= since:  # the server starts near `since`, not at it
                        events.append((msg.metadata.sequence.stream, event))
        return Page(events=events, more=pending > want)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
