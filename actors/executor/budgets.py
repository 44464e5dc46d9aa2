"""Tenant budgets: tokens and dollars per UTC day and month, over every run of the tenant (chat turns, tasks,
triggered runs, pipeline steps, hand-offs, research sub-runs), not per run.

Before a run starts, the tenant's spend is read from the per-day rollup the store keeps (`RunStore.spend`,
one primary-key range read; skipped when the tenant has no budget). A budget already spent refuses the run
(`budget_exceeded`, details["budget"] naming it). Otherwise what is left of the tightest token budget and
of the tightest dollar budget becomes the run's pydantic-ai `UsageLimits` (`total_tokens_limit`,
`cost_limit`), which stop the run after the model response that takes it past them; that stop is reported
as `budget_exceeded` too. Runs in flight do not see each other's spend until they finish, so concurrent
runs of one tenant may overshoot a budget by what they spend at once: the overshoot is bounded by the
tenant's runs in flight, each of them within the whole budget left when it started.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from actors.executor.store import Spend
from schemas.errors import ErrorCode, ErrorReply
from schemas.tenants import Budgets
from schemas.usage import BudgetStatus, PeriodSpend

__all__ = ["Allowance", "allowance", "budget_status", "exceeded", "has_budget", "over_budget"]


@dataclass(frozen=True, slots=True)
class Allowance:
    """What a run may still spend: the tightest token and dollar budget left (None: no budget), and which
    budget each is, so a run stopped at one names it."""

    tokens: int | None = None
    tokens_budget: str | None = None
    usd: float | None = None
    usd_budget: str | None = None
    today: date | None = None  # the UTC day the spend was read on

    def stopped(self, limit: str, *, max_tokens: int | None, max_cost_usd: float | None) -> ErrorReply | None:
        """`budget_exceeded` if the run stopped at pydantic-ai's `limit` (`max_tokens`, `max_cost_usd`: see
        limits.limit_hit) because of a budget, not the request's own limit; None otherwise."""
        if limit == "max_tokens" and self.tokens_budget is not None and self.tokens is not None:
            name, left, own = self.tokens_budget, float(self.tokens), float(max_tokens or 0) or None
        elif limit == "max_cost_usd" and self.usd_budget is not None and self.usd is not None:
            name, left, own = self.usd_budget, self.usd, max_cost_usd
        else:
            return None
        if own is not None and own <= left:
            return None
        message = f"the run was stopped: it spent what was left of the tenant's {name} budget ({left:g})"
        return exceeded(name, message, self.today or datetime.now(UTC).date())


def has_budget(budgets: Budgets) -> bool:
    b = budgets
    return any(v for v in (b.tokens_per_day, b.tokens_per_month, b.usd_per_day, b.usd_per_month))


def _lines(budgets: Budgets, spend: Spend) -> list[tuple[str, float, float]]:
    """Each budget set (above 0): its name, its limit, what its period spent."""
    lines = [
        ("tokens_per_day", budgets.tokens_per_day or 0, spend.day_tokens),
        ("tokens_per_month", budgets.tokens_per_month or 0, spend.month_tokens),
        ("usd_per_day", budgets.usd_per_day or 0.0, spend.day_usd),
        ("usd_per_month", budgets.usd_per_month or 0.0, spend.month_usd),
    ]
    return [(name, float(limit), float(spent)) for name, limit, spent in lines if limit > 0]


def _resets(name: str, today: date) -> datetime:
    return _period(name.endswith("_day"), today)[1]


def _period(daily: bool, today: date) -> tuple[datetime, datetime]:
    """The UTC period holding `today`: its start and the next one's."""
    if daily:
        start = datetime.combine(today, time(), tzinfo=UTC)
        return start, datetime.fromordinal(today.toordinal() + 1).replace(tzinfo=UTC)
    first = today.replace(day=1)
    following = (first + timedelta(days=31)).replace(day=1)
    return datetime.combine(first, time(), tzinfo=UTC), datetime.combine(following, time(), tzinfo=UTC)


def over_budget(budgets: Budgets, spend: Spend) -> ErrorReply | None:
    """`budget_exceeded` naming the first budget whose period has spent it all; None while every one has some left."""
    for name, limit, spent in _lines(budgets, spend):
        if spent >= limit:
            unit = "tokens" if name.startswith("tokens") else "USD"
            message = f"the tenant's {name} budget ({limit:g} {unit}) is spent: {spent:g} {unit}"
            return exceeded(name, message, spend.today)
    return None


def exceeded(name: str, message: str, today: date) -> ErrorReply:
    """`budget_exceeded` naming the budget and when its period ends."""
    details = {"budget": name, "resets_at": _resets(name, today).isoformat()}
    return ErrorReply(code=ErrorCode.BUDGET_EXCEEDED, message=message, details=details)


def allowance(budgets: Budgets, spend: Spend) -> Allowance:
    """What is left of the tightest token budget and of the tightest dollar budget (call after `over_budget`)."""
    tokens: tuple[float, str] | None = None
    usd: tuple[float, str] | None = None
    for name, limit, spent in _lines(budgets, spend):
        left = (limit - spent, name)
        if name.startswith("tokens"):
            tokens = left if tokens is None or left < tokens else tokens
        else:
            usd = left if usd is None or left < usd else usd
    return Allowance(
        tokens=int(tokens[0]) if tokens else None,
        tokens_budget=tokens[1] if tokens else None,
        usd=usd[0] if usd else None,
        usd_budget=usd[1] if usd else None,
        today=spend.today,
    )


def budget_status(budgets: Budgets, spend: Spend) -> BudgetStatus:
    """The budgets and what is left of them, for GET /v1/usage."""

    def period(daily: bool, tokens: int, usd: float, tokens_budget: int, usd_budget: float) -> PeriodSpend:
        since, resets_at = _period(daily, spend.today)
        return PeriodSpend(
            since=since,
            resets_at=resets_at,
            tokens=tokens,
            tokens_budget=tokens_budget,
            tokens_left=max(tokens_budget - tokens, 0) if tokens_budget else None,
            usd=usd,
            usd_budget=usd_budget,
            usd_left=max(usd_budget - usd, 0.0) if usd_budget else None,
        )

    return BudgetStatus(
        day=period(True, spend.day_tokens, spend.day_usd, budgets.tokens_per_day or 0, budgets.usd_per_day or 0.0),
        month=period(
            False, spend.month_tokens, spend.month_usd, budgets.tokens_per_month or 0, budgets.usd_per_month or 0.0
        ),
    )
