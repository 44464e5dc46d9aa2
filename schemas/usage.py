"""Usage and cost rolled up: ab.executor.svc.usage, the executor's sums over a tenant's runs.

Every run's record holds what its own model requests spent (`RunRecord.usage`); a rollup sums those
records, so a run is counted once whatever it sits under. A rollup scoped to a task, a conversation or
a run takes the runs it started and every run under them (pipeline steps, subagent hand-offs, research
sub-runs) by `parent_run_id`.
"""

from __future__ import annotations

import enum
from datetime import datetime

import msgspec

from schemas._base import Message, Record
from schemas.errors import ErrorReply
from schemas.runs import Usage

__all__ = [
    "BudgetStatus",
    "GetUsage",
    "PeriodSpend",
    "UsageGroup",
    "UsageGrouping",
    "UsageReply",
    "UsageReport",
    "UsageRollup",
    "UsageTotal",
]


class UsageGrouping(enum.StrEnum):
    AGENT = "agent"
    MODEL = "model"  # the run record's `model`
    DAY = "day"  # the UTC day the run was created, as YYYY-MM-DD


class GetUsage(Message, frozen=True, kw_only=True, tag="get_usage"):
    """The tenant's runs created in [since, until) (unbounded where None), optionally only those of a task,
    a conversation or a run (each with the runs under it; several narrow together), summed and grouped."""

    since: datetime | None = None
    until: datetime | None = None
    group_by: UsageGrouping | None = None
    task_id: str | None = None
    conversation_id: str | None = None
    run_id: str | None = None  # a run, or a research job: what it parents


class UsageTotal(Record, frozen=True, kw_only=True):
    """Runs and what they spent: `usage.cost_usd` is None when any of them could not be priced, and
    `usage.unpriced_models` then names the models."""

    runs: int = 0
    usage: Usage = Usage()


class UsageGroup(UsageTotal, frozen=True, kw_only=True):
    key: str  # the agent, the model, or the day (YYYY-MM-DD)


class PeriodSpend(Record, frozen=True, kw_only=True):
    """The tenant's spend in one UTC period (a day or a month) against its budgets for it: a budget of 0 is
    none, and then what is left is None. Dollars are the priced part of the spend."""

    since: datetime  # the period's start (midnight UTC)
    resets_at: datetime  # the next period's start
    tokens: int = 0  # input + output tokens of the runs that finished in the period
    tokens_budget: int = 0
    tokens_left: int | None = None
    usd: float = 0.0
    usd_budget: float = 0.0
    usd_left: float | None = None


class BudgetStatus(Record, frozen=True, kw_only=True):
    """The tenant's budgets (tenant settings over the platform defaults) and what is left of them."""

    day: PeriodSpend
    month: PeriodSpend


class UsageRollup(Record, frozen=True, kw_only=True):
    """The total of the runs a GetUsage picked, and (with `group_by`) the groups it splits into, by key."""

    since: datetime | None = msgspec.field(default=None, name="from")
    until: datetime | None = msgspec.field(default=None, name="to")
    group_by: UsageGrouping | None = None
    task_id: str | None = None
    conversation_id: str | None = None
    run_id: str | None = None
    total: UsageTotal = UsageTotal()
    groups: list[UsageGroup] = []
    budgets: BudgetStatus | None = None  # the tenant's budgets now, whatever window the query names


class UsageReport(Message, frozen=True, kw_only=True, tag="usage_report"):
    rollup: UsageRollup


UsageReply = UsageReport | ErrorReply
