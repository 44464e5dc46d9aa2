"""GET /v1/usage: the tenant's token usage and cost, summed by the executor (ab.executor.svc.usage)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from litestar import get
from litestar.params import FromQuery, QueryParameter

from bus import subjects
from gateway.caller import Caller
from gateway.errors import ApiError
from schemas.errors import ErrorCode
from schemas.usage import GetUsage, UsageGrouping, UsageReport, UsageRollup

__all__ = ["read_usage"]

ID = r"^[A-Za-z0-9_-]{1,128}$"  # a subject token: what a run, conversation or task id is
INSTANT = (
    "a date (`2026-11-01`: midnight UTC) or an ISO 8601 date-time (`2026-11-01T09:30:00+01:00`; UTC without an offset)"
)


def _invalid(key: str, message: str) -> ApiError:
    """A bad query value, said the way a value the schema refuses is (gateway/errors.py `_validation`)."""
    return ApiError(ErrorCode.INVALID, f"{key}: {message}", {"errors": [{"key": key, "message": message}]})


def _instant(key: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _invalid(key, f"expected {INSTANT}") from None


@get(
    "/v1/usage",
    tags=["usage"],
    summary="Token usage and cost of the tenant's runs in [from, to): in total, by agent, model or day, "
    "for a task, a conversation or a run (with the runs under it)",
)
async def read_usage(
    caller: Caller,
    since: Annotated[str | None, QueryParameter(name="from", max_length=64, description=INSTANT)] = None,
    until: Annotated[
        str | None, QueryParameter(name="to", max_length=64, description=f"{INSTANT}; default: now")
    ] = None,
    group_by: FromQuery[UsageGrouping | None] = None,
    task_id: Annotated[str | None, QueryParameter(pattern=ID, description="only this task's runs")] = None,
    conversation_id: Annotated[
        str | None, QueryParameter(pattern=ID, description="only this conversation's runs")
    ] = None,
    run_id: Annotated[
        str | None, QueryParameter(pattern=ID, description="only this run (or research job) and the runs under it")
    ] = None,
) -> UsageRollup:
    start, end = _instant("from", since), _instant("to", until) or datetime.now(UTC)
    if start is not None and start > end:
        raise _invalid("from", "is after `to`")
    query = GetUsage(
        since=start, until=end, group_by=group_by, task_id=task_id, conversation_id=conversation_id, run_id=run_id
    )
    report = await caller.ask(subjects.ActorName.EXECUTOR, "usage", query, UsageReport)
    return report.rollup
