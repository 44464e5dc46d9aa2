"""What a research job may ask for, and what it may spend: checked before it starts and before each sub-run."""

from __future__ import annotations

from actors.research.store import JobRow, totals_of
from bus.errors import BusError
from schemas.errors import ErrorCode
from schemas.research import StartResearch, StopReason, Subrun

__all__ = ["JobFailed", "LimitReached", "check_budget", "check_limits"]


class LimitReached(Exception):
    """A budget is spent: `in_run` when a running sub-run hit it (stop now), else before one started
    (the sub-runs already running may finish: they started within the budget)."""

    def __init__(self, limit: StopReason, *, in_run: bool = False) -> None:
        super().__init__(limit.value)
        self.limit = limit
        self.in_run = in_run


class JobFailed(Exception):
    """The job cannot go on (its report could not be written)."""


def check_limits(cmd: StartResearch) -> None:
    """What the gateway checks too, for commands published straight to the bus."""
    problems = []
    if not cmd.question.strip():
        problems.append("question must not be empty")
    if not 1 <= cmd.max_subtasks <= 50:
        problems.append("max_subtasks must be 1-50")
    if not 1 <= cmd.max_depth <= 5:
        problems.append("max_depth must be 1-5")
    if not 0 < cmd.deadline_seconds <= 86_400:
        problems.append("deadline_seconds must be in (0, 86400]")
    if unknown := set(cmd.sources) - {"documents", "web"}:
        problems.append(f"unknown sources {sorted(unknown)}: use documents and/or web")
    b = cmd.budget
    if any(v is not None and v <= 0 for v in (b.max_subruns, b.max_tokens, b.max_cost_usd)):
        problems.append("budget limits must be positive")
    if problems:
        raise BusError(ErrorCode.INVALID, "; ".join(problems))


def check_budget(row: JobRow, subruns: list[Subrun]) -> None:
    """Before a sub-run starts: LimitReached if the job has used any of its budget up."""
    budget = row.spec.budget
    totals = totals_of(subruns)
    if budget.max_subruns is not None and totals.subruns >= budget.max_subruns:
        raise LimitReached(StopReason.MAX_SUBRUNS)
    if budget.max_tokens is not None and totals.input_tokens + totals.output_tokens >= budget.max_tokens:
        raise LimitReached(StopReason.MAX_TOKENS)
    if budget.max_cost_usd is not None and (totals.cost_usd is None or totals.cost_usd >= budget.max_cost_usd):
        raise LimitReached(StopReason.MAX_COST)  # spent, or no longer measurable: it cannot be kept
