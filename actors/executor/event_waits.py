"""`wait_for_event`: a tool that parks the run until an event of its tenant arrives (or a task's webhook).

The call is deferred (pydantic-ai CallDeferred) with what to wait for as its metadata; the run parks
(actors/executor/parking.py) and the trigger actor follows the wait (actors/trigger/waits.py). The event
comes back as the call's result, quoted as data (parking.event_result); a timeout, as a timeout result.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic_ai import RunContext
from pydantic_ai.exceptions import CallDeferred, ModelRetry

from actors.executor.deps import RunDeps
from bus import subjects
from schemas.approvals import WatchEvent

__all__ = ["MAX_WAIT_S", "wait_for_event", "watch_of"]

MAX_WAIT_S = 7 * 24 * 3600.0


def wait_for_event(
    ctx: RunContext[RunDeps],
    subject: str | None = None,
    webhook_task_id: str | None = None,
    filter: dict[str, str] | None = None,
    timeout_s: float = 3600.0,
) -> str:
    """Wait until an event arrives, then go on with it as data. Give `subject`, a NATS pattern over this
    application's events (ab.<area>.evt.<tenant>.…), or `webhook_task_id`, a task whose webhook to wait
    for; `filter` maps dotted paths in the event's JSON to the text their values must equal. After
    `timeout_s` seconds without a match the result says the wait timed out. The run pauses meanwhile."""
    if (subject is None) == (webhook_task_id is None):
        raise ModelRetry("give exactly one of `subject` or `webhook_task_id`")
    if subject is not None:
        if (error := subjects.pattern_error(subject)) is not None:
            raise ModelRetry(f"`subject` is not a NATS subject pattern: {error}")
        if subjects.pattern_tenant(subject) != ctx.deps.tenant:
            raise ModelRetry(f"`subject` must start with ab.<area>.evt.{ctx.deps.tenant}. (this application's events)")
    if not 0 < timeout_s <= MAX_WAIT_S:
        raise ModelRetry(f"`timeout_s` must be more than 0 and at most {MAX_WAIT_S:.0f}")
    expires = datetime.now(UTC) + timedelta(seconds=timeout_s)
    metadata: dict[str, Any] = {
        "subject": subject,
        "webhook_task_id": webhook_task_id,
        "filter": {str(k): str(v) for k, v in (filter or {}).items()},
        "expires_at": expires.isoformat(),
    }
    raise CallDeferred(metadata=metadata)


def watch_of(run_id: str, park: int, tool_call_id: str, metadata: dict[str, Any]) -> WatchEvent:
    """What the trigger actor is asked to watch for one deferred `wait_for_event` call."""
    return WatchEvent(
        run_id=run_id,
        park=park,
        tool_call_id=tool_call_id,
        subject=metadata.get("subject"),
        webhook_task_id=metadata.get("webhook_task_id"),
        filter=metadata.get("filter") or {},
        expires_at=datetime.fromisoformat(metadata["expires_at"]),
    )
