"""Whether a run may start, and what it may spend: the tenant's agents and budgets, checked by the executor
when the run starts (see tenant_agents.py and budgets.py), from the tenant settings the executor follows."""

from __future__ import annotations

from collections.abc import Collection

from actors.executor.budgets import Allowance, allowance, budget_status, has_budget, over_budget
from actors.executor.store import RunStore
from actors.executor.tenant_agents import agent_refused
from bus.subjects import RunOrigin
from bus.tenants import TenantSettingsCache
from schemas.errors import ErrorReply
from schemas.runs import RunRequest
from schemas.usage import BudgetStatus

__all__ = ["Admission"]


class Admission:
    """The tenant's settings (followed by a KV watch) and its spend (read from the store when it has a budget)."""

    def __init__(self, tenants: TenantSettingsCache, store: RunStore, internal: Collection[str]) -> None:
        self.tenants = tenants
        self.store = store
        self.internal = internal

    async def admit(self, req: RunRequest, tenant: str, origin: RunOrigin | None) -> Allowance | ErrorReply:
        """What the run may spend, or why it may not start (`forbidden`, `budget_exceeded`)."""
        settings = self.tenants.get(tenant)
        refused = agent_refused(req.agent, allowed=settings.agents, origin=origin, internal=self.internal)
        if refused is not None:
            return refused
        if not has_budget(settings.budgets):
            return Allowance()
        spend = await self.store.spend(tenant)
        return over_budget(settings.budgets, spend) or allowance(settings.budgets, spend)

    async def status(self, tenant: str) -> BudgetStatus:
        return budget_status(self.tenants.get(tenant).budgets, await self.store.spend(tenant))
