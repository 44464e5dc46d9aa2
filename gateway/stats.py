"""GET /v1/stats: the caller tenant's counts and rates, each asked of the actor that owns the rows.

conversations: ab.conversation.svc.count; tasks: ab.scheduler.svc.count; runs by status and in the last
24 hours: ab.executor.svc.run_counts; tokens and cost, in all and in the last 24 hours:
ab.executor.svc.usage (what GET /v1/usage sums). The rates are the last 24 hours' counts over 24.
Runs are every run the executor recorded for the tenant: turns, task runs, pipeline steps, research
sub-runs.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from litestar import get

from bus import subjects
from gateway.caller import Caller
from schemas.stats import ConversationCount, CountConversations, CountRuns, CountTasks, RunCount, TaskCount
from schemas.status import Rates, RunCounts, TaskCounts, TenantStats, TokenCounts
from schemas.usage import GetUsage, UsageReport

__all__ = ["read_stats"]

A = subjects.ActorName
DAY = timedelta(hours=24)


@get("/v1/stats", tags=["usage"], summary="The tenant's conversations, tasks, runs, tokens and cost, and 24-hour rates")
async def read_stats(caller: Caller) -> TenantStats:
    day_ago = datetime.now(UTC) - DAY
    conversations, tasks, runs, usage, recent = await asyncio.gather(
        caller.ask(A.CONVERSATION, "count", CountConversations(), ConversationCount),
        caller.ask(A.SCHEDULER, "count", CountTasks(), TaskCount),
        caller.ask(A.EXECUTOR, "run_counts", CountRuns(since=day_ago), RunCount),
        caller.ask(A.EXECUTOR, "usage", GetUsage(), UsageReport),
        caller.ask(A.EXECUTOR, "usage", GetUsage(since=day_ago), UsageReport),
    )
    spent, spent_today = usage.rollup.total.usage, recent.rollup.total.usage
    hours = DAY.total_seconds() / 3600
    return TenantStats(
        conversations=conversations.total,
        tasks=TaskCounts(total=tasks.total, enabled=tasks.enabled),
        runs=RunCounts(total=sum(runs.by_status.values()), by_status=runs.by_status, last_24h=runs.since),
        tokens=TokenCounts(
            input=spent.input_tokens, output=spent.output_tokens, total=spent.input_tokens + spent.output_tokens
        ),
        cost_usd=spent.priced_cost_usd,
        rates=Rates(
            runs_per_hour_24h=round(runs.since / hours, 3),
            tokens_per_hour_24h=round((spent_today.input_tokens + spent_today.output_tokens) / hours, 3),
        ),
    )
