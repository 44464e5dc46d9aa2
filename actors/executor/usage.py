"""ab.executor.svc.usage: usage and cost summed over a tenant's runs (all, or a task's, a conversation's,
a run's with the runs under it), in a time window, by agent, model or day (schemas/usage.py), with the
tenant's budgets and what is left of them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from actors.executor.admission import Admission
from actors.executor.store import UsageStore, UsageSums
from bus.actor import Endpoint
from bus.errors import BusError
from bus.headers import Trace
from schemas._base import Message
from schemas.errors import ErrorCode
from schemas.runs import Usage
from schemas.usage import GetUsage, UsageGroup, UsageReport, UsageRollup, UsageTotal

__all__ = ["rollup", "total_usage", "total_usages", "usage_endpoint"]


def _usage(sums: UsageSums) -> Usage:
    return Usage(
        requests=sums.requests,
        input_tokens=sums.input_tokens,
        output_tokens=sums.output_tokens,
        tool_calls=sums.tool_calls,
        cost_usd=None if sums.any_unpriced else sums.priced_cost_usd,
        priced_cost_usd=sums.priced_cost_usd,
        unpriced_models=tuple(sums.unpriced_models),
    )


async def rollup(store: UsageStore, tenant: str, query: GetUsage, admission: Admission | None = None) -> UsageRollup:
    """The query's total and groups, and the tenant's budgets now; `until` defaults to now, and is answered so."""
    until = query.until or datetime.now(UTC)
    if query.since is not None and query.since > until:
        raise BusError(ErrorCode.INVALID, "`from` is after `to`", {"from": str(query.since), "to": str(until)})
    rows = await store.sums(
        tenant,
        since=query.since,
        until=until,
        group_by=query.group_by,
        task_id=query.task_id,
        conversation_id=query.conversation_id,
        run_id=query.run_id,
    )
    total = next((r for r in rows if r.key is None), None)
    groups = [UsageGroup(key=r.key, runs=r.runs, usage=_usage(r)) for r in rows if r.key is not None]
    return UsageRollup(
        since=query.since,
        until=until,
        group_by=query.group_by,
        task_id=query.task_id,
        conversation_id=query.conversation_id,
        run_id=query.run_id,
        total=UsageTotal(runs=total.runs, usage=_usage(total)) if total is not None else UsageTotal(),
        groups=groups if query.group_by is not None else [],
        budgets=await admission.status(tenant) if admission is not None else None,
    )


async def total_usage(store: UsageStore, tenant: str, run_id: str) -> Usage:
    """The usage of the run and every run under it."""
    rows = await store.sums(tenant, since=None, until=None, group_by=None, run_id=run_id)
    return next((_usage(r) for r in rows if r.key is None), Usage())


async def total_usages(store: UsageStore, tenant: str, run_ids: list[str]) -> dict[str, Usage]:
    """For each run named, the usage of the run and every run under it."""
    return {run_id: _usage(sums) for run_id, sums in (await store.sums_under(tenant, run_ids)).items()}


def usage_endpoint(store: Callable[[], UsageStore], admission: Callable[[], Admission]) -> Endpoint[GetUsage]:
    """The endpoint; `store` and `admission` are read on every request (they are opened at start)."""

    async def answer(query: GetUsage, trace: Trace) -> Message:
        return UsageReport(rollup=await rollup(store(), trace.tenant, query, admission()))

    return Endpoint("usage", GetUsage, answer)
